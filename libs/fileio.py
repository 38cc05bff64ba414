"""Files: written so that readers never see a half-written one, weights read with one-line errors, pickles of numpy
arrays read without running code, and small models trained once with a fixed recipe and cached (the digit
classifier, the digits' REPA encoder)."""
import contextlib
import hashlib
import json
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


# The weights files of a Hugging Face model folder (transformers' from_pretrained reads one of them).
HF_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin', 'model.safetensors.index.json',
                   'pytorch_model.bin.index.json')


def check_model_folder(path: str, what: str, where: str) -> None:
    """One UserError line unless ``path`` is a folder with a Hugging Face model's config.json and weights: '<what>
    folder <path>/ not found: <where>' or '... lacks config.json or the weights: <where>'."""
    if not os.path.isdir(path):
        raise UserError(f'{what} folder {path}/ not found: {where}')
    present = set(os.listdir(path))
    if 'config.json' not in present or not present.intersection(HF_WEIGHT_FILES):
        raise UserError(f'{what} folder {path}/ lacks config.json or the weights: {where}')


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes, as hex, read in blocks of 16 MiB."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 24), b''):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def one_thread():
    """Run torch on one CPU thread: faster for tiny tensors (especially on a busy machine), and the same weights
    whatever the number of cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def recipe_hash(recipe: dict) -> str:
    """A short hash of everything that determines a cached model's weights."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def cached_model(path: str, recipe: dict, build, train) -> torch.nn.Module:
    """The model ``build()`` with the weights cached at ``path`` when they were made with ``recipe``; a missing,
    unreadable or stale cache (another recipe) is replaced by ``train()``'s model, trained on one thread.

    The file holds ``{'recipe_hash', 'recipe', 'state_dict'}``: strings and tensors, read with weights_only=True.
    """
    digest = recipe_hash(recipe)
    cache = None
    if os.path.isfile(path):
        try:
            cache = torch.load(path, map_location='cpu', weights_only=True)
        except Exception:  # whatever a damaged file makes torch.load raise: retrain
            cache = None
    if isinstance(cache, dict) and cache.get('recipe_hash') == digest:
        model = build()
        try:
            model.load_state_dict(cache.get('state_dict'))
            return model.eval()
        except (RuntimeError, TypeError, AttributeError):
            pass
    with one_thread(), torch.enable_grad():  # may be called lazily from inside a no_grad block
        model = train().eval()
    with atomic_open(path) as f:
        torch.save({'recipe_hash': digest, 'recipe': json.dumps(recipe, sort_keys=True),
                    'state_dict': model.state_dict()}, f)
    return model
