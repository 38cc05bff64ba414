"""Training checkpoints: one directory per step, written under a temporary name, verified by a manifest, renamed
into place when complete.

Layout of ``<ckpt_root>/<step>.ckpt/`` (file names as in the U-ViT release, so ``nnet_ema.pth`` is what eval loads):
    nnet.pth, nnet_ema.pth, optimizer.pth, lr_scheduler.pth, [grad_scaler.pth], rng_state_<rank>.pth,
    train_state.json  (step, number of processes, per-process parameter checksums, time)
    manifest.json     written last: {"format": 1, "step": N, "files": {name: {"bytes": n, "sha256": hex}}}

Every .pth file holds plain data only (tensors, numbers, strings, lists, tuples, dicts), and is read with
``torch.load(weights_only=True)``: a file that holds anything else, such as a pickled object whose loading would
run code, is refused as damaged, and the run resumes from the newest checkpoint that reads. Checkpoints written
before the RNG states were plain data hold numpy's state as a numpy array; that one array type is read too.

A checkpoint is valid only if it verifies: every file of its manifest is there with its size and checksum (the
checksums are computed while the files are written, so they cost no second read). A checkpoint written before
manifests existed verifies if every file loads. Only directories named ``<int>.ckpt`` are checkpoints, and they
appear only through an atomic rename of a finished ``<step>.ckpt.tmp``. Saving the same step again moves the old
directory aside to ``<step>.ckpt.old``, moves the new one in, then deletes the old one; a crash in between is
finished at the next start-up (``recover``). A damaged checkpoint is never deleted automatically: pruning counts and
deletes only verified ones, and a damaged one that a re-save replaces is kept as ``<step>.ckpt.damaged-<time>``.

Storage: with several nodes, the checkpoint directory is either shared by all of them (one copy, written by global
rank 0) or local to each node (a full copy per node, written by the node's first process, with the RNG states of that
node's processes). ``detect_storage`` tells which with a marker file.

Fault injection (tests only): the environment variable ``UVIT_FAULT`` names one point of a save, optionally only at
one step (``<point>@<step>``):
    after_file:<name>          kill -9 the process that wrote <name> (e.g. nnet.pth, rng_state_1.pth), just after
    enospc:<name>              writing <name> fails with "No space left on device"
    before_rename              kill -9 the writer after the manifest, before the rename
    between_renames            kill -9 the writer of a re-save after the old directory was moved aside
    between_rename_and_prune   kill -9 the writer after the rename, before deleting old checkpoints
"""
import errno
import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
import signal
import time
import uuid
from dataclasses import dataclass

import numpy as np
import torch

from libs.errors import UserError
from libs.fileio import NUMPY_ARRAY_GLOBALS, file_sha256

logger = logging.getLogger(__name__)

_CKPT_RE = re.compile(r'^(\d+)\.ckpt$')
_TMP_RE = re.compile(r'^(\d+)\.ckpt\.tmp$')
_OLD_RE = re.compile(r'^(\d+)\.ckpt\.old$')
TRAIN_STATE = 'train_state.json'
MANIFEST = 'manifest.json'
STORAGE_MARKER = '.storage_marker'
FAULT_ENV = 'UVIT_FAULT'


def fault(point: str, step: int, name: str = '') -> None:
    """Act out the fault that UVIT_FAULT names, if it names this point (see the module docstring)."""
    spec = os.environ.get(FAULT_ENV, '')
    if not spec:
        return
    where, _, at_step = spec.partition('@')
    if (at_step and int(at_step) != step) or where != (f'{point}:{name}' if name else point):
        return
    if point == 'enospc':
        raise OSError(errno.ENOSPC, f'No space left on device ({FAULT_ENV}={spec})')
    os.kill(os.getpid(), signal.SIGKILL)


def rng_state() -> dict:
    """Every random number generator a training process draws from, as plain data: python's state is a tuple of
    numbers, numpy's a dict of numbers with its Mersenne Twister key as an int64 tensor."""
    numpy = np.random.get_state(legacy=False)
    numpy['state']['key'] = torch.from_numpy(numpy['state']['key'].astype(np.int64))
    state = {'python': random.getstate(), 'numpy': numpy, 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore ``rng_state()``'s dict, or the older layout, whose numpy state is ``np.random.get_state()``'s tuple."""
    random.setstate(state['python'])
    numpy = state['numpy']
    if isinstance(numpy, dict):
        numpy = {**numpy, 'state': {**numpy['state'], 'key': numpy['state']['key'].numpy().astype(np.uint32)}}
    np.random.set_state(numpy)
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # these mean "this filesystem cannot sync a directory"
            raise
    finally:
        os.close(fd)


class _HashingFile:
    """A binary file that hashes and counts what is written through it."""

    def __init__(self, file):
        self.file = file
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.bytes += memoryview(data).nbytes
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


class UnsafeCheckpointFile(Exception):
    """A checkpoint file holds something other than plain data; the message (one line) says what."""


def one_line(exc: BaseException) -> str:
    """An exception as one line: a UserError's or UnsafeCheckpointFile's own message, otherwise its type and first
    line."""
    if isinstance(exc, (UserError, UnsafeCheckpointFile)):
        return str(exc)
    lines = str(exc).strip().splitlines()
    return f'{type(exc).__name__}: {lines[0]}' if lines else type(exc).__name__


def attempt(action):
    """Run ``action()``; None if it succeeds, else the exception as one line (for an agreement), its traceback logged
    when it is not a UserError."""
    try:
        action()
    except Exception as exc:
        if not isinstance(exc, UserError):
            logger.error('%s', one_line(exc), exc_info=True)
        return one_line(exc)
    return None


def verify(ckpt: str):
    """None if checkpoint directory ``ckpt`` is valid, else why not (one line). Without a manifest (checkpoints
    written before manifests existed) it is valid if every file loads."""
    manifest_path = os.path.join(ckpt, MANIFEST)
    if not os.path.isdir(ckpt):
        return 'no such directory'
    if not os.path.exists(manifest_path):
        return _verify_by_loading(ckpt)
    try:
        with open(manifest_path) as f:
            files = json.load(f)['files']
        for name, record in files.items():
            path = os.path.join(ckpt, name)
            if not os.path.isfile(path):
                return f'{name} is missing'
            size = os.path.getsize(path)
            if size != record['bytes']:
                return f'{name} has {size} bytes, the manifest says {record["bytes"]}'
            if file_sha256(path) != record['sha256']:
                return f'{name} does not match its checksum'
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f'{MANIFEST}: {one_line(exc)}'
    return None


def _verify_by_loading(ckpt: str):
    if not os.path.isfile(os.path.join(ckpt, TRAIN_STATE)):
        return f'neither {MANIFEST} nor {TRAIN_STATE}'
    for name in [TRAIN_STATE] + sorted(n for n in os.listdir(ckpt) if n.endswith('.pth')):
        try:
            read_train_state(ckpt) if name == TRAIN_STATE else load_object(ckpt, name)
        except Exception as exc:  # whatever a damaged file makes torch.load or json raise
            return f'{name}: {one_line(exc)}'
    return None


class CheckpointManager:
    """Finds, verifies, writes and prunes the checkpoints of one directory (one node's, with node-local storage).

    ``verified`` and ``damaged`` remember what this process found, so that each checkpoint is hashed at most once."""

    def __init__(self, root: str, keep: int = 0):
        self.root = root
        self.keep = keep
        self.verified = set()
        self.damaged = {}        # step -> why it does not verify
        self.records = {}        # name -> {'bytes', 'sha256'} of the files this process wrote into the current tmp
        self.saving_step = None

    # ------------------------------------------------------------------------------------------------ finding
    def steps(self) -> list:
        """Steps of the complete checkpoints (a manifest, or the train_state.json of an older one), ascending.
        Complete is not verified: see ``check``."""
        if not os.path.isdir(self.root):
            return []
        found = []
        for name in os.listdir(self.root):
            match = _CKPT_RE.match(name)
            if match and any(os.path.isfile(os.path.join(self.root, name, f)) for f in (MANIFEST, TRAIN_STATE)):
                found.append(int(match.group(1)))
        return sorted(found)

    def path(self, step: int) -> str:
        return os.path.join(self.root, f'{step}.ckpt')

    def tmp_path(self, step: int) -> str:
        return os.path.join(self.root, f'{step}.ckpt.tmp')

    def latest(self):
        """Path of the newest complete checkpoint not known to be damaged, or None (for messages)."""
        steps = [s for s in self.steps() if s not in self.damaged]
        return self.path(steps[-1]) if steps else None

    def check(self, step: int):
        """``verify`` the checkpoint of ``step``, once per process."""
        if step in self.verified:
            return None
        if step not in self.damaged:
            problem = verify(self.path(step))
            if problem is None:
                self.verified.add(step)
                return None
            self.damaged[step] = problem
        return self.damaged[step]

    # ------------------------------------------------------------------------------------------------ writing
    def begin(self, step: int, creates: bool) -> str:
        """Start saving ``step``; the writer (``creates``) clears a stale temporary directory and makes a fresh
        one. Returns its path."""
        self.saving_step, self.records = step, {}
        tmp = self.tmp_path(step)
        if creates:
            os.makedirs(self.root, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        return tmp

    def write(self, tmp: str, name: str, obj) -> None:
        """torch.save one object into the temporary directory."""
        self._write(tmp, name, lambda f: torch.save(obj, f))

    def write_json(self, tmp: str, name: str, data: dict) -> None:
        self._write(tmp, name, lambda f: f.write(json.dumps(data, indent=2).encode()))

    def _write(self, tmp: str, name: str, dump) -> None:
        """Write one file through ``dump(file)``, fsync it and record its size and checksum; out of disk space
        becomes a UserError that names the checkpoint kept."""
        try:
            fault('enospc', self.saving_step, name)
            with open(os.path.join(tmp, name), 'wb') as f:
                hashing = _HashingFile(f)
                dump(hashing)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                previous = self.latest()
                kept = f'the previous checkpoint {previous} is kept' if previous else 'no earlier checkpoint exists'
                raise UserError(f'out of disk space while writing checkpoint to {tmp}; {kept}') from None
            raise UserError(f'cannot write checkpoint file {os.path.join(tmp, name)}: {exc}') from None
        self.records[name] = {'bytes': hashing.bytes, 'sha256': hashing.sha256.hexdigest()}
        fault('after_file', self.saving_step, name)

    def commit(self, tmp: str, step: int, records: dict = None) -> str:
        """Writer: write the manifest (this process's files and ``records``, those other processes wrote into this
        directory), publish the directory with a rename, then prune. Returns the checkpoint's path."""
        files = {**self.records, **(records or {})}
        try:
            with open(os.path.join(tmp, MANIFEST), 'w') as f:
                json.dump({'format': 1, 'step': step, 'files': dict(sorted(files.items()))}, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            fault('before_rename', step)
            final = self._publish(tmp, step)
        except OSError as exc:
            raise UserError(f'cannot publish checkpoint {self.path(step)}: {exc}') from None
        self.prune()
        return final

    def _publish(self, tmp: str, step: int) -> str:
        final = self.path(step)
        replaced = None
        if os.path.exists(final):  # the same step saved again (e.g. after resuming from an older checkpoint)
            problem = self.check(step)
            if problem is None:
                replaced = final + '.old'
                shutil.rmtree(replaced, ignore_errors=True)
                os.replace(final, replaced)
            else:
                kept = f'{final}.damaged-{time.strftime("%Y%m%d-%H%M%S")}'
                os.replace(final, kept)
                logger.warning('checkpoint %s is damaged (%s): kept as %s', final, problem, kept)
            _fsync_dir(self.root)
            fault('between_renames', step)
        os.replace(tmp, final)
        _fsync_dir(self.root)
        self.verified.add(step)
        self.damaged.pop(step, None)
        fault('between_rename_and_prune', step)
        if replaced:
            shutil.rmtree(replaced)
        return final

    def abort(self, tmp: str) -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    def prune(self) -> None:
        """Keep the newest ``keep`` verified checkpoints; delete older verified ones, never damaged ones."""
        if not self.keep or self.keep <= 0:
            return
        kept = 0
        for step in reversed(self.steps()):
            if self.check(step) is not None:
                continue
            if kept < self.keep:
                kept += 1
            else:
                shutil.rmtree(self.path(step), ignore_errors=True)
                self.verified.discard(step)

    # ---------------------------------------------------------------------------------------------- start-up
    def recover(self) -> None:
        """Writer, at start-up: finish a re-save that a crash interrupted. If the new directory is in place, the
        old one moved aside is deleted; if not, the old one is moved back."""
        if not os.path.isdir(self.root):
            return
        for name in sorted(os.listdir(self.root)):
            match = _OLD_RE.match(name)
            if not match:
                continue
            aside, final = os.path.join(self.root, name), self.path(int(match.group(1)))
            if os.path.exists(final):
                shutil.rmtree(aside)
                logger.info('removed %s, which an interrupted re-save had replaced by %s', aside, final)
            else:
                os.replace(aside, final)
                logger.warning('restored %s from %s (a re-save of that step was interrupted)', final, aside)

    def remove_stale_tmp(self, newest: int) -> None:
        """Writer, at start-up: delete the temporary directories of saves that crashed, up to step ``newest`` (the
        checkpoint resumed from; later ones are cleared when their step is saved again)."""
        if not os.path.isdir(self.root):
            return
        stale = sorted((m.group(0) for m in map(_TMP_RE.match, os.listdir(self.root))
                        if m and int(m.group(1)) <= newest), key=lambda n: int(n.split('.')[0]))
        for name in stale:
            shutil.rmtree(os.path.join(self.root, name))
        if stale:
            logger.info('removed %d temporary director%s of interrupted saves in %s: %s', len(stale),
                        'y' if len(stale) == 1 else 'ies', self.root, ', '.join(stale))


# ---------------------------------------------------------------------------------------------------- reading
def read_train_state(ckpt: str) -> dict:
    with open(os.path.join(ckpt, TRAIN_STATE)) as f:
        return json.load(f)


# numpy's arrays (NUMPY_ARRAY_GLOBALS, and the uint32 type torch must also be allowed to build): what the RNG states of
# checkpoints written before they became plain data hold (the Mersenne Twister key). They build data and call nothing.
_NUMPY_ARRAYS = [*((obj, name) for name, obj in NUMPY_ARRAY_GLOBALS.items()), type(np.dtype(np.uint32))]


def load_object(ckpt: str, name: str):
    """torch.load a file of a checkpoint to the CPU (the caller moves it) with ``weights_only=True``, with a one-line
    error if missing, and ``UnsafeCheckpointFile`` if it holds anything but plain data (tensors, numbers, strings,
    containers, numpy arrays): such a file could run code when loaded, and is never loaded otherwise."""
    path = os.path.join(ckpt, name)
    if not os.path.isfile(path):
        raise UserError(f'checkpoint {ckpt} is incomplete: {name} is missing')
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAYS):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r'GLOBAL (\S+)', str(exc))
        what = f'a pickled {found.group(1)}' if found else 'a pickled object that is not plain data'
        raise UnsafeCheckpointFile(f'refused, it holds {what}, which could run code if loaded') from None


# The files every checkpoint may hold; any other .pth file belongs to the training objective (REPA's projector).
CORE_FILES = ('nnet.pth', 'nnet_ema.pth', 'optimizer.pth', 'lr_scheduler.pth', 'grad_scaler.pth')


def objective_files(ckpt: str) -> list:
    """The .pth files of checkpoint ``ckpt`` that belong to the training objective, sorted."""
    return sorted(name for name in os.listdir(ckpt) if name.endswith('.pth') and name not in CORE_FILES
                  and not name.startswith('rng_state_'))


class DamagedCheckpoint(Exception):
    """A file of a checkpoint does not load; the message names it."""


def read_checkpoint(ckpt: str, rank: int, num_processes: int, extra_files: tuple = ()) -> dict:
    """Everything process ``rank`` needs to resume from ``ckpt``, loaded to the CPU: 'state' (train_state.json), the
    .pth files by name, and 'rng' (None when the checkpoint was written by another number of processes). Of the
    training objective's files ``extra_files``, those present. Every file through ``load_object`` (plain data only)."""
    def load(name, reader):
        try:
            return reader()
        except UserError:
            raise DamagedCheckpoint(f'{name} is missing') from None
        except Exception as exc:  # whatever a damaged file makes torch.load or json raise
            raise DamagedCheckpoint(f'{name}: {one_line(exc)}') from None

    contents = {'state': load(TRAIN_STATE, lambda: read_train_state(ckpt))}
    names = ['nnet.pth', 'nnet_ema.pth', 'optimizer.pth', 'lr_scheduler.pth']
    if os.path.isfile(os.path.join(ckpt, 'grad_scaler.pth')):
        names.append('grad_scaler.pth')
    for name in names:
        contents[name] = load(name, lambda: load_object(ckpt, name))
    for name in extra_files:
        if os.path.isfile(os.path.join(ckpt, name)):
            contents[name] = load(name, lambda: load_object(ckpt, name))
    contents['rng'] = None
    if contents['state'].get('num_processes', 1) == num_processes:
        name = f'rng_state_{rank}.pth'
        contents['rng'] = load(name, lambda: load_object(ckpt, name))
    return contents


def replace_file(ckpt: str, name: str, obj) -> None:
    """torch.save ``obj`` as ``name`` in a published checkpoint and update its manifest, for tools that edit a
    checkpoint on purpose (an edited file would otherwise no longer verify)."""
    manager = CheckpointManager(os.path.dirname(ckpt))
    manager.write(ckpt, name + '.tmp', obj)
    os.replace(os.path.join(ckpt, name + '.tmp'), os.path.join(ckpt, name))
    manifest_path = os.path.join(ckpt, MANIFEST)
    if os.path.isfile(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
        manifest['files'][name] = manager.records[name + '.tmp']
        tmp = manifest_path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(manifest, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, manifest_path)


# -------------------------------------------------------------------------------------------------- agreement
class Agreement:
    """Decisions that all processes of a run take together: whether a checkpoint was written, read or found damaged.

    Each process contributes its own outcome and receives everyone's, so either all go on or all stop with the same
    message. The exchange runs on a gloo group of its own whose timeout is ``timeout_s`` (train.checkpoint_timeout_s),
    so a process that died or hangs gives an error instead of a hang; NCCL collectives would block or abort the
    process without a message. With one process every exchange is local."""

    def __init__(self, timeout_s: float):
        import datetime

        import torch.distributed as dist
        self.timeout_s = timeout_s
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.rank = dist.get_rank() if self.world > 1 else 0
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.group = dist.new_group(backend='gloo', timeout=self.timeout) if self.world > 1 else None

    def exchange(self, value, what: str) -> list:
        """Every process's ``value`` (picklable), in rank order, on every process; all processes must call it.
        ``what`` starts the error line if a process does not arrive within the timeout or has exited."""
        if self.group is None:
            return [value]
        import torch.distributed as dist
        try:
            dist.monitored_barrier(self.group, timeout=self.timeout, wait_all_ranks=True)  # names a missing process
            values = [None] * self.world
            dist.all_gather_object(values, value, group=self.group)
        except RuntimeError as exc:
            logger.error('%s: %s', what, one_line(exc))  # the detail differs between processes; the error line does not
            raise UserError(f'{what}: lost contact with another process (it exited, or did not respond within '
                            f'train.checkpoint_timeout_s={self.timeout_s:g} s)') from None
        return values

    def first_problem(self, problems: list):
        """The first non-empty problem, naming its process when there are several; None if there is none."""
        for rank, problem in enumerate(problems):
            if problem:
                return problem if self.world == 1 else f'{problem} (process {rank})'
        return None

    def outcome(self, problem, what: str) -> None:
        """Raise the same UserError on every process if any process has a ``problem`` (a one-line string)."""
        first = self.first_problem(self.exchange(problem, what))
        if first:
            raise UserError(first)


# ---------------------------------------------------------------------------------------------------- storage
@dataclass(frozen=True)
class Storage:
    """Where this process's checkpoints go. ``shared``: one directory for all nodes; ``writer``: this process
    writes the run-wide files (global rank 0 if shared, else each node's first process); ``ranks``: the processes
    whose RNG states go into this process's directory."""
    shared: bool
    writer: bool
    ranks: tuple


def detect_storage(root: str, agreement, local_rank: int) -> Storage:
    """Whether ``root`` is one directory shared by all nodes or a local one on each: global rank 0 writes a marker
    file with a fresh token, and the first process of each node looks for it. A mix (some nodes share it, some do
    not) is a UserError."""
    rank, world = agreement.rank, agreement.world
    leaders = agreement.exchange(rank - local_rank, 'checking the checkpoint storage')  # each node's first process
    if len(set(leaders)) == 1:
        return Storage(shared=True, writer=rank == 0, ranks=tuple(range(world)))
    marker = os.path.join(root, STORAGE_MARKER)
    token, problem = None, None
    if rank == 0:
        token = uuid.uuid4().hex
        try:
            os.makedirs(root, exist_ok=True)
            with open(marker, 'w') as f:
                f.write(token)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            problem = f'cannot write {marker}: {exc}'
    token, problem = agreement.exchange((token, problem), 'checking the checkpoint storage')[0]
    if problem:
        raise UserError(problem)
    sees = None
    if local_rank == 0:
        try:
            with open(marker) as f:
                sees = f.read() == token
        except OSError:
            sees = False
    seen = agreement.exchange(sees, 'checking the checkpoint storage')
    if rank == 0:
        os.remove(marker)
    nodes = sorted(set(leaders))
    sharing = [leader for leader in nodes if seen[leader]]
    if len(sharing) == len(nodes):
        return Storage(shared=True, writer=rank == 0, ranks=tuple(range(world)))
    if sharing != [0]:
        raise UserError(f'the checkpoint directory {root} is shared by some nodes (first processes {sharing}) but not '
                        f'by others (of {nodes}): use storage shared by all nodes or local to each')
    mine = leaders[rank]
    return Storage(shared=False, writer=local_rank == 0, ranks=tuple(r for r in range(world) if leaders[r] == mine))


def now() -> str:
    return time.strftime('%Y-%m-%d %H:%M:%S')
