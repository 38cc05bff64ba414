"""What every entry point shares: logging set-up, the config/workdir flags, and one-line errors."""
import logging
import os
import sys
from pathlib import Path

from libs.errors import UserError


def is_main_process() -> bool:
    """Rank 0 (or a single process); readable before accelerate is initialised."""
    return os.environ.get('RANK', '0') == '0'


def setup_logging(log_file: str = None) -> None:
    """Console logging on the main process only (others log warnings and errors); optionally a log file."""
    level = logging.INFO if is_main_process() else logging.WARNING
    handlers = [logging.StreamHandler(sys.stdout)]
    if log_file and is_main_process():
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=level, format='%(asctime)s %(levelname)s %(message)s', datefmt='%H:%M:%S',
                        handlers=handlers, force=True)


def own_progress_lock() -> None:
    """In a forked child: progress bars with a lock of this process alone. tqdm's default lock holds a
    multiprocessing semaphore that a forked child shares with its parent, so a child killed while holding it leaves
    the parent's next progress bar waiting forever, and a child forked while the parent's tqdm monitor thread held
    it waits forever at its own first bar."""
    if 'tqdm' not in sys.modules:
        return  # the child makes its own lock when it first needs one
    import threading
    from tqdm import tqdm
    classes = [tqdm]
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        if cls is tqdm or '_lock' in vars(cls):
            cls._lock = threading.RLock()


def close_process_group() -> bool:
    """Destroy the default process group, if any, while the interpreter is fully alive: a gloo group left to the
    interpreter's finalisation can abort the process ("terminate called without an active exception"). A process
    that never imported torch (scripts/slurm/launch.py) has none, and is not made to import it here. Returns whether
    there was one."""
    if 'torch' not in sys.modules:
        return False
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        return True
    return False


def run(main, *args, **kwargs):
    """Call ``main``; a UserError becomes ``error: <message>`` on stderr and exit status 2. Either way the process
    group is closed before exit."""
    try:
        result = main(*args, **kwargs)
    except UserError as exc:
        if is_main_process():
            print(f'error: {exc}', file=sys.stderr, flush=True)
        if close_process_group():
            # A member of a process group leaves without the interpreter's finalisation, where a C++ destructor of
            # the distributed stack can still abort it after an error ("terminate called without an active
            # exception": status -6 instead of 2, in 1 of 9 runs of the torchrun fault test here and in one
            # full-suite run; in none of 21 runs since).
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        sys.exit(2)
    close_process_group()
    return result


def config_name(argv) -> str:
    """The stem of the --config file, e.g. 'cifar10_uvit_small'."""
    for arg in argv[1:]:
        if arg.startswith('--config='):
            return Path(arg.split('=', 1)[1]).stem
    return 'default'


def hparams(argv) -> str:
    """'key=value-...' from the --config.x=y overrides, as the release names its work directories. Paths are named by
    their stem; the data's path also by a hash of the absolute path, so that runs on two folders (of the same name)
    never share a work directory."""
    import hashlib
    parts = []
    for arg in argv[1:]:
        if arg.startswith('--config.') and '=' in arg:
            key, value = arg[len('--config.'):].split('=', 1)
            if key == 'dataset.path':
                absolute = os.path.abspath(value)
                value = f'{os.path.basename(absolute) or "root"}.{hashlib.sha256(absolute.encode()).hexdigest()[:8]}'
            elif key.endswith('path'):
                value = Path(value).stem
            parts.append(f'{key.split(".")[-1]}={value}')
    return '-'.join(parts) or 'default'


def default_workdir(argv) -> str:
    return os.path.join('workdir', config_name(argv), hparams(argv))


def enable_tf32(device) -> None:
    """TF32 matmuls and convolutions on Ampere and newer GPUs (a no-op elsewhere)."""
    import torch
    if torch.device(device).type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def fail(message: str) -> None:
    """Print ``error: message`` (main process only) and exit with status 2."""
    if is_main_process():
        print(f'error: {message}', file=sys.stderr, flush=True)
    sys.exit(2)


def define_config_flag(help_text: str) -> None:
    """``--config=configs/X.py`` with its ``--config.a.b=value`` overrides, which may add a key: the free-form sections
    (config.dataset, nnet, schedule) hold what each dataset, backbone or schedule takes, so an override may name a
    key the config file leaves out. A key that nothing takes is still refused in one line, by ``resolve`` outside those
    sections and by the dataset, backbone or schedule inside them."""
    from ml_collections import config_flags
    config_flags.DEFINE_config_file('config', None, help_text, lock_config=False, accept_new_attributes=True)


def parse_flags(argv):
    """absl flag parsing with one-line errors for bad overrides and config files that do not load.

    Pass as ``app.run(main, flags_parser=cli.parse_flags)``.
    """
    import re

    from absl import flags
    config_file = next((a.split('=', 1)[1] for a in argv[1:] if a.startswith('--config=')), '')
    try:
        args = flags.FLAGS(argv)
    except flags.Error as exc:
        fail(str(exc).splitlines()[0])
    except OSError:  # ml_collections: the config file did not load, and an override needed it
        fail(f'cannot load config file {config_file}: ' + ('no such file' if not os.path.isfile(config_file) else
                                                            'it raised an error on import (run it with python)'))
    except (AttributeError, KeyError) as exc:  # ml_collections: an override of a key the config does not have
        text = str(exc).replace('\\', '')
        key = re.search(r"'([A-Za-z0-9_]+)'", text)
        key = key.group(1) if key else text
        hint = re.search(r'Did you mean "([^"]+)"', text)
        override = next((a.split('=')[0] for a in argv if a.startswith('--config.') and key in a), None)
        fail(f'unknown config key {key!r}' + (f' in {override}' if override else '')
             + (f'; did you mean {hint.group(1)!r}?' if hint else ''))
    if 'config' in flags.FLAGS and flags.FLAGS['config'].present:
        try:
            flags.FLAGS.config.keys()
        except (OSError, ImportError, SyntaxError, Exception) as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            fail(f'cannot load config file {flags.FLAGS["config"].config_filename}: {lines[-1] if lines else exc}')
    return args
