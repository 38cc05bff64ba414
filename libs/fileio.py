"""Files: written so that readers never see a half-written one, weights read with one-line errors, and pickles of
numpy arrays read without running code."""
import contextlib
import os
import pickle
import tempfile

import numpy as np
import torch

from libs.errors import UserError

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1
    from numpy.core.multiarray import _reconstruct

# What a pickle of plain numpy arrays refers to, under the module names of numpy 1 and numpy 2: reconstructing an
# array builds data and calls nothing else, so a reader may allow these and refuse every other global.
NUMPY_ARRAY_GLOBALS = {'numpy.core.multiarray._reconstruct': _reconstruct,
                       'numpy._core.multiarray._reconstruct': _reconstruct,
                       'numpy.ndarray': np.ndarray, 'numpy.dtype': np.dtype}


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


class ArraysOnly(pickle.Unpickler):
    """A pickle reader that builds plain data (numbers, strings, bytes, lists, tuples, dicts) and numpy arrays, and
    refuses any other global, that is any function or class a pickle could call, with ``pickle.UnpicklingError``."""

    def find_class(self, module: str, name: str):
        if f'{module}.{name}' in NUMPY_ARRAY_GLOBALS:
            return NUMPY_ARRAY_GLOBALS[f'{module}.{name}']
        raise pickle.UnpicklingError(f'global {module}.{name} refused: only plain data and numpy arrays are read')
