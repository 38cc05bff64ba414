"""Forked children for tests that need a process to die, or several processes: a real process (it can be killed with
SIGKILL and joins a gloo group) without the seconds of imports a fresh interpreter costs on a 2-core machine; and
``run_script``, a command line run the same way."""
import logging
import os
import socket
import subprocess
import sys
import traceback
import warnings

import torch

from conftest import reset_accelerate
from libs.cli import own_progress_lock
from libs.errors import UserError
from libs.forked_script import run_forked, wait_for


def fork(action, log_file: str, env: dict = None) -> int:
    """Run ``action()`` in a forked child whose log goes to ``log_file``; returns its pid. The child exits 0 when
    ``action`` returns, 2 on a UserError (logged as ``error: <message>``), 1 on anything else (traceback logged)."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        own_progress_lock()  # a child killed inside a progress bar must not leave the parent's lock held
        os.environ.update(env or {})
        torch.set_num_threads(1)  # the parent's intra-op threads do not survive a fork
        reset_accelerate()
        logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s',
                            handlers=[logging.FileHandler(log_file)], force=True)
        action()
        code = 0
    except UserError as exc:
        logging.getLogger(__name__).error('error: %s', exc)
        code = 2
    except BaseException:
        logging.getLogger(__name__).error('%s', traceback.format_exc())
    finally:
        logging.shutdown()
        os._exit(code)


def fork_ranks(action, world: int, log_dir) -> list:
    """``world`` forked children that form one process group (gloo; accelerate on the CPU), rank r logging to
    ``log_dir/rank<r>.log``. Returns their pids in rank order."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    pids = []
    for rank in range(world):
        env = dict(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                   MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), ACCELERATE_USE_CPU='true')
        pids.append(fork(action, os.path.join(log_dir, f'rank{rank}.log'), env))
    return pids


def wait(pid: int, timeout: float = 120.0) -> int:
    """The child's exit status, or minus the signal that killed it; a child still running after ``timeout`` seconds
    is killed and fails the test."""
    status = wait_for(pid, timeout)
    if status is None:
        raise AssertionError(f'child {pid} still running after {timeout} s')
    return status


def run_script(script: str, args: list, cwd: str = None, env: dict = None,
               timeout: float = 600.0) -> subprocess.CompletedProcess:
    """``python script *args`` as a forked child of the test process (libs/forked_script.py): the script runs as
    ``__main__`` with that argv, from ``cwd``, with ``env`` as its whole environment (default: this one), and its
    stdout, stderr and exit status come back as ``subprocess.run(..., capture_output=True, text=True)`` gives them.
    What differs from a fresh interpreter is only what is already imported (torch: seconds on a 2-core machine);
    absl's flags, accelerate's state, logging and warnings start as a fresh process has them. Keep one real
    subprocess per script besides."""
    def setup():
        reset_accelerate()
        fresh_interpreter_state()

    code, out, err = run_forked([script, *args], cwd, env, timeout, setup=setup)
    if code is None:
        raise AssertionError(f'{script} still running after {timeout} s')
    return subprocess.CompletedProcess([sys.executable, script, *args], code, out, err)


def fresh_interpreter_state() -> None:
    """In a forked child: absl's flags as before any script defined one, the root logger without pytest's handlers,
    the libraries' console handlers (made at import, when pytest held sys.stderr) on this stderr, and warnings shown
    on stderr under Python's default filters (pytest records them instead)."""
    from absl import flags
    from absl import logging as absl_logging
    for module, defined in flags.FLAGS.flags_by_module_dict().items():
        if not module.startswith('absl.'):
            for flag in defined:
                if flag.name in flags.FLAGS:
                    delattr(flags.FLAGS, flag.name)
    flags.FLAGS.unparse_flags()
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    for logger in logging.Logger.manager.loggerDict.values():
        for handler in getattr(logger, 'handlers', []):
            if type(handler) is logging.StreamHandler:  # subclasses may own their stream (torch's close theirs)
                handler.setStream(sys.stderr)
    absl_logging.get_absl_handler().python_handler.setStream(sys.stderr)
    warnings.resetwarnings()
    for category in (ImportWarning, ResourceWarning, PendingDeprecationWarning, DeprecationWarning):
        warnings.simplefilter('ignore', category)
    warnings.filterwarnings('default', category=DeprecationWarning, module='__main__')
    warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
        warnings.formatwarning(message, category, filename, lineno, line))
