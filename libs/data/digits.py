"""The bundled digits: scikit-learn's 8x8 handwritten digits, which need no file (the suite's offline default)."""
import numpy as np
import torch

from libs.data.common import ImageDataset, check_split
from libs.errors import UserError


class Digits(ImageDataset):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), one channel.

    Values 0..16 map to ``v / 8 - 1``. Split: per class, a fixed permutation (``numpy.random.default_rng(0)``) sends
    round(20%) of the images to 'test' and the rest to 'train' (1438 train / 359 test); 'all' is every image. (The digit
    classifier was trained on another split, ``classifier_split``, kept so that its scores stay comparable.) A
    ``resolution`` that is a multiple of 8 repeats pixels (nearest-neighbour upsampling), so values stay on the 17
    original levels.
    """

    name = 'digits'
    label_classes = 10
    splits = ('train', 'test', 'all')
    test_fraction = 0.2

    def __init__(self, split: str = 'train', resolution: int = 8, fid_stats=None):
        check_split(self.name, split, self.splits)
        resolution = int(resolution)
        if resolution <= 0 or resolution % 8:
            raise UserError(f'digits resolution must be a positive multiple of 8 (config.dataset.resolution), '
                            f'got {resolution}')
        from sklearn.datasets import load_digits
        bunch = load_digits()
        images, targets = bunch.images, bunch.target.astype(np.int64)
        indices = self.split_indices(targets)[split]
        x = torch.from_numpy(images[indices].astype(np.float32))[:, None] / 8 - 1
        factor = resolution // 8
        if factor > 1:
            x = x.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
        self.images = x.contiguous()
        super().__init__(split, resolution, 1, 10, targets[indices], fid_stats)

    @classmethod
    def split_indices(cls, targets: np.ndarray) -> dict:
        """Deterministic stratified split -> {'train': sorted indices, 'test': sorted indices}."""
        rng = np.random.default_rng(0)
        test = []
        for c in range(int(targets.max()) + 1):
            idx = np.flatnonzero(targets == c)
            test.extend(idx[rng.permutation(len(idx))[:round(cls.test_fraction * len(idx))]])
        test = np.sort(np.asarray(test, dtype=np.int64))
        train = np.setdiff1d(np.arange(len(targets)), test)
        return {'train': train, 'test': test, 'all': np.arange(len(targets))}

    # The split behind the digit classifier of libs/metrics/digits_score.py, kept as it was trained: scikit-learn's
    # stratified train_test_split with a quarter held out, random_state 0. Changing it retrains the classifier and
    # moves every recorded digit score.
    CLASSIFIER_HELD_OUT_FRACTION = 0.25
    CLASSIFIER_SPLIT_SEED = 0

    @classmethod
    def classifier_split(cls, labels: np.ndarray):
        """(train indices, held-out indices) of all 1797 digits for the digit classifier (see above)."""
        from sklearn.model_selection import train_test_split
        return train_test_split(np.arange(len(labels)), test_size=cls.CLASSIFIER_HELD_OUT_FRACTION,
                                random_state=cls.CLASSIFIER_SPLIT_SEED, stratify=labels)

    def _image(self, index):
        return self.images[index]
