"""The reference a sample score compares with: one path, three kinds.

- ``statistics``: an .npz holding ``mu`` and ``sigma`` (Inception pool features), optionally ``mu_s`` and
  ``sigma_s`` (sFID's spatial features), and no images: the U-ViT release's ``fid_stats`` and the files of
  ``scripts/compute_fid_stats.py``. It serves FID (and sFID when it holds ``mu_s``); the Inception Score needs no
  reference.
- ``batch``: an .npz whose ``arr_0`` holds the reference images (N, H, W, C) uint8, with or without statistics:
  ADM's reference batches (``VIRTUAL_imagenet256_labeled.npz``: 10,000 images, ``mu``, ``sigma``, ``mu_s``,
  ``sigma_s``). Stored statistics are used as they are, as ADM's evaluator does; missing ones are computed from the
  images. Precision, recall, KID and FD-DINOv2 always use features of the images.
- ``folder``: a folder of images, all of one square size (libs/data: ``ImageFolder``).

When the reference holds images, samples of another size are refused (``check_image_size``): Inception resizes
everything to 299 x 299, so a mismatch would give a number without an error.
"""
import functools
import hashlib
import os

from libs.errors import UserError

STATISTICS = {'pool': ('mu', 'sigma'), 'spatial': ('mu_s', 'sigma_s')}   # feature name -> keys in the .npz


def missing_reference_message(path: str) -> str:
    """The error line for an unset or absent reference."""
    if not path:
        return ('no FID reference statistics are set for this dataset: set config.eval.ref_stats to an .npz file '
                '(make one with `python scripts/compute_fid_stats.py --config=CONFIG --out=assets/fid_stats/NAME.npz`'
                ') or to a reference batch or folder of images')
    return (f'FID reference statistics not found: {path} (create them with '
            f'`python scripts/compute_fid_stats.py --config=... --out={path}`)')


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    from libs.fileio import file_sha256
    return file_sha256(path)


def file_sha256_cached(path: str) -> str:
    """SHA-256 of a file, hashed once per process for each (path, size, modification time)."""
    stat = os.stat(path)
    return _sha256(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


def folder_sha256(files: list, root: str) -> str:
    """SHA-256 over the sorted relative names of ``files`` and each file's own SHA-256."""
    digest = hashlib.sha256()
    for file in sorted(files):
        digest.update(os.path.relpath(file, root).encode() + b'\0' + file_sha256_cached(file).encode())
    return digest.hexdigest()


class Reference:
    """``path`` read as one of the three kinds; ``images`` is a dataset of (C, H, W) images (or None),
    ``stored`` maps 'pool' / 'spatial' to the (mu, sigma) found in the file."""

    def __init__(self, path: str):
        from libs.data.npz_images import NpzImages, npz_keys, read_npz_arrays
        if not path or not os.path.exists(path):
            raise UserError(missing_reference_message(path))
        self.path = path
        self.stored, self.images = {}, None
        if os.path.isdir(path):
            from libs.data.datasets import ImageFolder
            self.kind, self.images = 'folder', ImageFolder(path)
            return
        keys = npz_keys(path)
        wanted = [key for pair in STATISTICS.values() for key in pair if set(pair) <= set(keys)]
        arrays = read_npz_arrays(path, wanted)
        for name, (mu, sigma) in STATISTICS.items():
            if mu in arrays:
                self.stored[name] = self._checked(arrays[mu], arrays[sigma], mu, sigma)
        if 'arr_0' in keys:
            self.kind, self.images = 'batch', NpzImages(path, 'arr_0', what='reference batch')
        elif 'pool' in self.stored:
            self.kind = 'statistics'
        else:
            raise UserError(f'reference {path} has arrays {keys}; expected mu and sigma (statistics) or arr_0 '
                            f'(images)')

    def _checked(self, mu, sigma, mu_key: str, sigma_key: str):
        import numpy as np
        mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise UserError(f'reference {self.path} has {mu_key} {mu.shape} and {sigma_key} {sigma.shape}; '
                            f'expected (D,) and (D, D)')
        return mu, sigma

    @property
    def count(self):
        """The number of reference images, or None for statistics."""
        return None if self.images is None else len(self.images)

    @property
    def image_size(self):
        """(H, W) of the reference images, or None for statistics."""
        if self.images is None:
            return None
        if self.kind == 'folder':
            return (self.images.resolution, self.images.resolution)
        return self.images.image_size

    def check_image_size(self, size) -> None:
        """UserError unless images of ``size`` (H, W) can be compared with the reference images."""
        mine = self.image_size
        if mine is not None and tuple(size) != tuple(mine):
            raise UserError(f'the reference {self.path} holds {mine[0]}x{mine[1]} images and the samples are '
                            f'{size[0]}x{size[1]}: compare samples with a reference of their own resolution')

    @functools.cached_property
    def sha256(self) -> str:
        """SHA-256 of the file, or of a folder's file names and contents."""
        if self.kind == 'folder':
            return folder_sha256(self.images.files, self.path)
        return file_sha256_cached(self.path)

    def describe(self) -> dict:
        """What a result JSON records of the reference."""
        return {'reference_statistics': self.path, 'reference_sha256': self.sha256, 'reference_kind': self.kind,
                'reference_images': self.count}
