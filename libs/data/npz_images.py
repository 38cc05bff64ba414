"""Images stored as one uint8 array in an ``.npz`` file: ``arr_0`` (N, H, W, C), the layout of ADM's
(guided-diffusion's) sample and reference batches, which DiT, SiT, REPA and most ImageNet work exchange.

A 50,000-sample batch of 256x256 images is 9.8 GB, so the array is not read whole when it can be avoided: ``np.savez``
stores each array uncompressed inside the zip file, and such an array is memory-mapped in place (its data starts after
the zip entry's local header and the .npy header). An array written by ``np.savez_compressed`` has to be inflated and
is read into memory.
"""
import os
import struct
import zipfile

import numpy as np
import torch
from torch.utils.data import Dataset

from libs.errors import UserError

ZIP_LOCAL_HEADER = b'PK\x03\x04'
ZIP_LOCAL_HEADER_SIZE = 30   # bytes before the name and the extra field; their lengths are at bytes 26..29


def npz_keys(path: str) -> list:
    """The names of the arrays in an .npz file, sorted; UserError when it is missing or not an .npz file."""
    if not os.path.isfile(path):
        raise UserError(f'file not found: {path}')
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise UserError(f'cannot read {path} as an .npz file: {type(exc).__name__}: {exc}') from None
    return sorted(name[:-len('.npy')] for name in names if name.endswith('.npy'))


def _read_npy_header(f):
    """(shape, fortran_order, dtype) of the .npy stream ``f``, left at the first byte of the data; None for a format
    version numpy has no public reader for."""
    version = np.lib.format.read_magic(f)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    return readers[version](f) if version in readers else None


def memory_map_npz_array(path: str, key: str):
    """Array ``key`` of an .npz file memory-mapped read-only, or None when it is compressed (or its header is of a
    format without a public reader): then ``np.load`` has to read it."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(key + '.npy')
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, 'rb') as f:
        f.seek(info.header_offset)
        local = f.read(ZIP_LOCAL_HEADER_SIZE)
        if local[:4] != ZIP_LOCAL_HEADER:
            return None
        name_length, extra_length = struct.unpack('<HH', local[26:30])
        f.seek(info.header_offset + ZIP_LOCAL_HEADER_SIZE + name_length + extra_length)
        header = _read_npy_header(f)
        if header is None:
            return None
        shape, fortran_order, dtype = header
        offset = f.tell()
    if dtype.hasobject:
        return None
    return np.memmap(path, dtype=dtype, mode='r', offset=offset, shape=shape, order='F' if fortran_order else 'C')


def read_npz_arrays(path: str, keys) -> dict:
    """The arrays ``keys`` of an .npz file, read into memory (statistics: small arrays); no pickled objects."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {key: f[key] for key in keys}
    except Exception as exc:
        raise UserError(f'cannot read {path}: {type(exc).__name__}: {exc}') from None


class NpzImages(Dataset):
    """The uint8 images (N, H, W, C) of array ``key`` in an .npz file, as (C, H, W) uint8 tensors with label -1.

    ``what`` names the file in error messages ('sample file', 'reference batch').
    """

    def __init__(self, path: str, key: str = 'arr_0', what: str = 'sample file'):
        if not os.path.isfile(path):
            raise UserError(f'{what} not found: {path}')
        keys = npz_keys(path)
        if key not in keys:
            raise UserError(f'{path} has arrays {keys}; expected {key!r} with the images (N, H, W, C) uint8')
        try:
            images = memory_map_npz_array(path, key)
            if images is None:
                images = read_npz_arrays(path, [key])[key]
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f'cannot read {path}: {type(exc).__name__}: {exc}') from None
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
            raise UserError(f'{path}: {key} is {images.dtype} {images.shape}; expected uint8 images '
                            f'(N, H, W, 1 or 3)')
        self.path, self.images = path, images

    @property
    def image_size(self) -> tuple:
        """(H, W) of every image."""
        return tuple(self.images.shape[1:3])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return torch.from_numpy(np.array(self.images[index])).permute(2, 0, 1), -1  # a copy: the map is read-only
