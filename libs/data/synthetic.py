"""Synthetic out-of-distribution sets, made from another dataset."""
import numpy as np

from libs.data.common import ImageDataset, build_from
from libs.errors import UserError


class Interpolated(ImageDataset):
    """An out-of-distribution set made from another dataset: item i is the pixel-wise mean of two distinct images.

    ``base`` is the other dataset, built from ``config.dataset.base`` (its ``name`` and keys) with the same split.
    The pairing is fixed by ``seed``: ``pairs[:, 0]`` is a permutation of the base indices and ``pairs[i, 1]`` is
    drawn uniformly from the other indices, so item i is ``(base[pairs[i, 0]] + base[pairs[i, 1]]) / 2`` in [-1, 1]
    (values may fall between the 8-bit levels). Same length and shape as ``base``; unlabeled. Base cifar10, split
    'test' is the "interpolated CIFAR-10" of the GenViT / JEM OOD evaluations.
    """

    name = 'interpolated'
    bases = {}  # the registry the base dataset comes from (libs/data/datasets.py registers a subclass with its own)

    def __init__(self, base: ImageDataset, seed: int = 0, fid_stats=None):
        n = len(base)
        if n < 2:
            raise UserError(f'interpolated needs at least two images in its base dataset ({base.name} '
                            f'{base.split} has {n}): point config.dataset.base at a larger dataset')
        rng = np.random.default_rng(int(seed))
        first = rng.permutation(n)
        second = rng.integers(0, n - 1, size=n)
        second += second >= first
        self.base, self.seed = base, int(seed)
        self.pairs = np.stack([first, second], axis=1).astype(np.int64)
        super().__init__(base.split, base.resolution, base.channels, 0, np.full(n, -1), fid_stats)

    @classmethod
    def from_config(cls, cfg, split):
        base = cfg.get('base', None)
        if base is None or base.get('name', None) is None:
            raise UserError('interpolated needs a base dataset: set config.dataset.base.name (e.g. cifar10) and that '
                            "dataset's keys under config.dataset.base")
        return cls(build_from(cls.bases, base, split), seed=cfg.get('seed', 0),
                   fid_stats=cfg.get('fid_stats', None))

    def _image(self, index):
        a, b = self.pairs[index]
        return (self.base[int(a)][0] + self.base[int(b)][0]) / 2
