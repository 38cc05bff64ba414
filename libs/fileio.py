"""Files: written so that readers never see a half-written one, and weights read with one-line errors."""
import contextlib
import hashlib
import os
import tempfile

import torch

from libs.errors import UserError


@contextlib.contextmanager
def atomic_open(path: str, mode: str = 'wb'):
    """Open a temporary file beside ``path``; when the block succeeds, flush, fsync and rename it to ``path``.

    If the block raises, the temporary file is removed and ``path`` keeps its previous content (or stays absent).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_state_file(path: str) -> dict:
    """torch.load a weights file to the CPU, with one-line errors for missing or unreadable files."""
    if not os.path.isfile(path):
        raise UserError(f'weights file not found: {path}')
    try:
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file
            return load_file(path, device='cpu')
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:
        raise UserError(f'cannot read weights file {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}') from None


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes, as hex, read in blocks of 16 MiB."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 24), b''):
            digest.update(block)
    return digest.hexdigest()
