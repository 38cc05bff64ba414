"""Training checkpoints: one directory per step, written under a temporary name and renamed when complete.

Layout of ``<ckpt_root>/<step>.ckpt/`` (file names as in the U-ViT release, so ``nnet_ema.pth`` is what eval loads):
    nnet.pth, nnet_ema.pth, optimizer.pth, lr_scheduler.pth, [grad_scaler.pth], rng_state_<rank>.pth,
    train_state.json  (step, number of processes, per-process parameter checksums, time)

Only directories named ``<int>.ckpt`` count as checkpoints, and they appear only through an atomic rename of a
finished ``<step>.ckpt.tmp`` directory, so a crash or a full disk never leaves a half-written "latest".
Old checkpoints are pruned only after the new one is complete.
"""
import errno
import json
import logging
import os
import random
import re
import shutil
import time

import numpy as np
import torch

from libs.errors import UserError

logger = logging.getLogger(__name__)

_CKPT_RE = re.compile(r'^(\d+)\.ckpt$')
TRAIN_STATE = 'train_state.json'


def rng_state() -> dict:
    """Every random number generator a training process draws from."""
    state = {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointManager:
    """Finds, writes and prunes the checkpoints of one run."""

    def __init__(self, root: str, keep: int = 0):
        self.root = root
        self.keep = keep

    def steps(self) -> list:
        """Steps of the complete checkpoints, ascending."""
        if not os.path.isdir(self.root):
            return []
        found = []
        for name in os.listdir(self.root):
            match = _CKPT_RE.match(name)
            if match and os.path.isfile(os.path.join(self.root, name, TRAIN_STATE)):
                found.append(int(match.group(1)))
        return sorted(found)

    def path(self, step: int) -> str:
        return os.path.join(self.root, f'{step}.ckpt')

    def latest(self):
        """Path of the newest complete checkpoint, or None."""
        steps = self.steps()
        return self.path(steps[-1]) if steps else None

    def tmp_path(self, step: int) -> str:
        return os.path.join(self.root, f'{step}.ckpt.tmp')

    def begin(self, step: int, is_main: bool) -> str:
        """Main process: clear a stale temporary directory and create a fresh one. Returns its path."""
        tmp = self.tmp_path(step)
        if is_main:
            os.makedirs(self.root, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        return tmp

    def write(self, tmp: str, name: str, obj) -> None:
        """torch.save one object into the temporary directory; out of disk becomes a UserError."""
        try:
            with open(os.path.join(tmp, name), 'wb') as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            self.abort(tmp)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                previous = self.latest()
                kept = f'the previous checkpoint {previous} is kept' if previous else 'no earlier checkpoint exists'
                raise UserError(f'out of disk space while writing checkpoint to {tmp}; {kept}') from None
            raise UserError(f'cannot write checkpoint file {os.path.join(tmp, name)}: {exc}') from None

    def write_json(self, tmp: str, name: str, data: dict) -> None:
        try:
            with open(os.path.join(tmp, name), 'w') as f:
                json.dump(data, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            self.abort(tmp)
            raise UserError(f'cannot write {os.path.join(tmp, name)}: {exc}') from None

    def commit(self, tmp: str, step: int) -> str:
        """Main process: publish the finished checkpoint with one rename, then prune old ones."""
        _fsync_dir(tmp)
        final = self.path(step)
        if os.path.exists(final):  # the same step saved again (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(self.root)
        self.prune()
        return final

    def abort(self, tmp: str) -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    def prune(self) -> None:
        if self.keep and self.keep > 0:
            for step in self.steps()[:-self.keep]:
                shutil.rmtree(self.path(step), ignore_errors=True)


def read_train_state(ckpt: str) -> dict:
    with open(os.path.join(ckpt, TRAIN_STATE)) as f:
        return json.load(f)


def load_object(ckpt: str, name: str):
    """torch.load a file of a checkpoint to the CPU (the caller moves it), with a one-line error if missing."""
    path = os.path.join(ckpt, name)
    if not os.path.isfile(path):
        raise UserError(f'checkpoint {ckpt} is incomplete: {name} is missing')
    return torch.load(path, map_location='cpu', weights_only=False)


def now() -> str:
    return time.strftime('%Y-%m-%d %H:%M:%S')
