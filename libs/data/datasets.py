"""Datasets for the training loop and for FID reference statistics.

Every dataset yields ``(image, label)``: ``image`` a float32 ``(C, H, W)`` tensor in [-1, 1] (8-bit pixels map to
``p / 127.5 - 1``), ``label`` a python int, -1 when the dataset has no labels. ``__getitem__`` is deterministic; random
flips belong to the training loop. Every dataset carries ``name``, ``num_classes`` (0 when unlabeled), ``resolution``,
``channels``, ``data_shape`` = (C, H, W), ``labels`` (int64 array of all labels, -1 when unlabeled) and ``fid_stats``
(path of the reference statistics in the U-ViT release layout, or None; ``config.dataset.fid_stats`` overrides it).
The feature datasets of libs/data/feature_store.py, registered beside these in libs/data/__init__.py, yield stored
autoencoder features instead of images (``stores_features``).

Nothing here downloads: each dataset reads files the user has put in place and says where they belong when missing.
"""
import gzip
import json
import os
import pickle
import struct
import zipfile
import zlib

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from libs.errors import UserError
from libs.data.common import check_split, describe
from libs.images import from_uint8

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp', '.bmp')

# The CelebA crop of the U-ViT release (inherited from DDIM / Analytic-DPM): the 128x128 square centred at
# (x, y) = (89, 121) of the 178x218 aligned images, as a PIL box (left, upper, right, lower).
CELEBA_CROP_BOX = (89 - 64, 121 - 64, 89 + 64, 121 + 64)
CELEBA_ALIGNED_SIZE = (178, 218)


def _hwc_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8 -> (C, H, W) float32 in [-1, 1]."""
    return from_uint8(torch.from_numpy(np.array(arr, dtype=np.uint8)).permute(2, 0, 1))


def crop_and_resize(img: Image.Image, resolution: int, box=None, resample=Image.BICUBIC,
                    box_downsample: bool = True) -> np.ndarray:
    """A PIL image -> (resolution, resolution, 3) uint8 array: optional crop, then square resize and centre crop.

    ``box`` (left, upper, right, lower) is cut out first when given. The rest follows the ADM / U-ViT ImageNet
    preprocessing: halve with a box filter while the short side is at least twice ``resolution`` (when
    ``box_downsample``), resize so the short side equals ``resolution`` with ``resample`` (PIL filters are
    antialiased), then take the central ``resolution`` square.
    """
    img = img.convert('RGB')
    if box is not None:
        img = img.crop(box)
    if box_downsample:
        while min(img.size) >= 2 * resolution:
            img = img.resize((img.width // 2, img.height // 2), resample=Image.BOX)
    scale = resolution / min(img.size)
    size = (max(resolution, round(img.width * scale)), max(resolution, round(img.height * scale)))
    if size != img.size:
        img = img.resize(size, resample=resample)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - resolution) // 2, (arr.shape[1] - resolution) // 2
    return arr[top:top + resolution, left:left + resolution]


def _list_images(root: str) -> list:
    """All image files under ``root`` (recursive), sorted by path relative to ``root``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS))
    return found


class ImageDataset(Dataset):
    """Common attributes; subclasses set ``labels`` and implement ``_image(index) -> (C, H, W) float32``."""

    name = ''
    default_fid_stats = None
    fid_stats_pattern = None     # default statistics per resolution, '...{}...'.format(resolution)
    label_classes = 0            # classes of the labels, known without reading the data; None: read them

    describe = classmethod(describe)

    def __init__(self, split: str, resolution: int, channels: int, num_classes: int, labels: np.ndarray,
                 fid_stats=None):
        self.split = split
        self.resolution = int(resolution)
        self.channels = int(channels)
        self.num_classes = int(num_classes)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.fid_stats = fid_stats if fid_stats is not None else self.default_fid_stats

    @property
    def data_shape(self):
        return self.channels, self.resolution, self.resolution

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f'index {index} out of range for {self.name} ({len(self)} items)')
        index = index % len(self)
        return self._image(index), int(self.labels[index])

    def _image(self, index: int) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(split={self.split!r}, n={len(self)}, data_shape={self.data_shape}, '
                f'num_classes={self.num_classes})')


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

    @classmethod
    def from_config(cls, cfg, split):
        return cls(split, resolution=cfg.get('resolution', 8), fid_stats=cfg.get('fid_stats', None))

    def _image(self, index):
        return self.images[index]


class Cifar10(ImageDataset):
    """CIFAR-10 from the python-pickle release: ``path`` holds ``cifar-10-batches-py/`` or is that folder.

    'train' is data_batch_1..5 (50,000 images), 'test' is test_batch (10,000). Rows are CHW uint8 as released.
    """

    name = 'cifar10'
    label_classes = 10
    splits = ('train', 'test')
    default_fid_stats = 'assets/fid_stats/fid_stats_cifar10_train_pytorch.npz'
    files = {'train': [f'data_batch_{i}' for i in range(1, 6)], 'test': ['test_batch']}
    default_path = 'assets/datasets/cifar10'
    title, num_label_classes, label_key = 'CIFAR-10', 10, b'labels'
    folder, archive = 'cifar-10-batches-py', 'cifar-10-python.tar.gz'

    def __init__(self, path: str = None, split: str = 'train', fid_stats=None):
        check_split(self.name, split, self.splits)
        path = self.default_path if path is None else path
        folder = path if os.path.basename(os.path.normpath(path)) == self.folder else os.path.join(path, self.folder)
        data, labels = [], []
        for fname in self.files[split]:
            fpath = os.path.join(folder, fname)
            if not os.path.isfile(fpath):
                raise UserError(f'{self.title} not found at {path}: extract {self.archive} there so that '
                                f'{os.path.join(path, self.folder, self.files["train"][0])} exists '
                                f'(missing {fpath})')
            try:
                with open(fpath, 'rb') as f:
                    batch = pickle.load(f, encoding='bytes')
                rows = np.asarray(batch[b'data'], dtype=np.uint8)
                labels.extend(int(v) for v in batch[self.label_key])
            except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
                raise UserError(f'{fpath} is not a {self.title} python batch ({type(e).__name__}): re-extract '
                                f'{self.archive} into {path}') from None
            if rows.ndim != 2 or rows.shape[1] != 3 * 32 * 32:
                raise UserError(f'{fpath} holds rows of shape {rows.shape[1:]}, expected 3072 pixels: use the '
                                f'{self.title} python release ({self.archive})')
            data.append(rows)
        self.data = np.concatenate(data).reshape(-1, 3, 32, 32)
        super().__init__(split, 32, 3, self.num_label_classes, np.asarray(labels), fid_stats)

    @classmethod
    def from_config(cls, cfg, split):
        return cls(cfg.get('path', cls.default_path), split, fid_stats=cfg.get('fid_stats', None))

    def _image(self, index):
        return from_uint8(torch.from_numpy(self.data[index].copy()))


class Cifar100(Cifar10):
    """CIFAR-100 from the python-pickle release: ``path`` holds ``cifar-100-python/`` or is that folder.

    'train' is the file ``train`` (50,000 images), 'test' the file ``test`` (10,000); labels are the 100 fine
    classes (b'fine_labels'), rows CHW uint8 as in CIFAR-10.
    """

    name = 'cifar100'
    label_classes = 100
    default_fid_stats = None
    files = {'train': ['train'], 'test': ['test']}
    default_path = 'assets/datasets/cifar100'
    title, num_label_classes, label_key = 'CIFAR-100', 100, b'fine_labels'
    folder, archive = 'cifar-100-python', 'cifar-100-python.tar.gz'


class SVHN(ImageDataset):
    """SVHN cropped digits from the .mat release (format 2): ``path`` holds ``train_32x32.mat`` and ``test_32x32.mat``.

    'X' is (32, 32, 3, N) uint8 indexed (row, column, channel, image); 'y' is (N, 1) with 1..9 for the digits 1..9
    and 10 for the digit 0, so labels here are the digits themselves (10 -> 0). 'train' has 73,257 images, 'test'
    26,032. The whole file is read into memory (scipy cannot memory-map .mat files).
    """

    name = 'svhn'
    label_classes = 10
    splits = ('train', 'test')
    files = {'train': 'train_32x32.mat', 'test': 'test_32x32.mat'}

    def __init__(self, path: str = 'assets/datasets/svhn', split: str = 'train', fid_stats=None):
        check_split(self.name, split, self.splits)
        fpath = os.path.join(path, self.files[split])
        if not os.path.isfile(fpath):
            raise UserError(f'SVHN not found at {path}: put train_32x32.mat and test_32x32.mat of the cropped-digits '
                            f'release there (missing {fpath})')
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError
        try:
            mat = loadmat(fpath)
            images, targets = np.asarray(mat['X']), np.asarray(mat['y']).reshape(-1)
        except (MatReadError, ValueError, TypeError, KeyError, NotImplementedError) as e:
            raise UserError(f"{fpath} is not an SVHN cropped-digits .mat file with 'X' and 'y' "
                            f'({type(e).__name__}): put the format-2 release file {self.files[split]} there') from None
        if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.shape[3] != len(targets):
            raise UserError(f"{fpath}: expected 'X' (32, 32, 3, N) and N labels 'y', got {images.shape} and "
                            f'{targets.shape}: use the cropped-digits release (format 2), not the full numbers')
        if len(targets) and (targets.min() < 1 or targets.max() > 10):
            raise UserError(f"{fpath}: labels 'y' must be 1..10 as in the SVHN release (10 is the digit 0)")
        self.images = images.astype(np.uint8, copy=False)
        super().__init__(split, 32, 3, 10, targets.astype(np.int64) % 10, fid_stats)

    @classmethod
    def from_config(cls, cfg, split):
        return cls(cfg.get('path', 'assets/datasets/svhn'), split, fid_stats=cfg.get('fid_stats', None))

    def _image(self, index):
        return _hwc_to_tensor(self.images[:, :, :, index])


class Mnist(ImageDataset):
    """MNIST from the four idx files of the original release in ``path``, each plain or gzipped (``.gz``; the plain
    file wins when both are there): ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` ('train', 60,000
    images) and ``t10k-images-idx3-ubyte`` / ``t10k-labels-idx1-ubyte`` ('test', 10,000).

    An idx file is a big-endian header, the magic (0x00000803 for the uint8 images, 3 dims; 0x00000801 for the labels,
    1 dim) and one int32 per dim, then the uint8 values row-major. Images are 28x28, one channel, labels the digits
    0..9. ``resolution`` 32 pads 2 background pixels (-1) on each side, so that patch sizes 2 and 4 of a ViT divide
    the image; 28 (the default) keeps the images as they are.
    """

    name = 'mnist'
    label_classes = 10
    splits = ('train', 'test')
    default_path = 'assets/datasets/mnist'
    fid_stats_pattern = 'assets/fid_stats/fid_stats_mnist{}_train.npz'
    files = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
             'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}
    resolutions = (28, 32)
    side = 28
    url = 'https://yann.lecun.com/exdb/mnist/'

    def __init__(self, path: str = None, split: str = 'train', resolution: int = 28, fid_stats=None):
        check_split(self.name, split, self.splits)
        path = self.default_path if path is None else path
        resolution = int(resolution)
        if resolution not in self.resolutions:
            raise UserError(f'mnist resolution must be 28 or 32 (config.dataset.resolution; 32 pads 2 background '
                            f'pixels on each side), got {resolution}')
        found = [self._find(path, fname) for fname in self.files[split]]
        missing = [os.path.join(path, fname) for fname, f in zip(self.files[split], found) if f is None]
        if missing:
            every = ', '.join(f for pair in self.files.values() for f in pair)
            raise UserError(f'MNIST not found at {path}: looked for {", ".join(f"{m} or {m}.gz" for m in missing)}; '
                            f'nothing is downloaded: put {every} (plain or .gz, from {self.url} or a mirror) there')
        image_file, label_file = found
        images = self._read_idx(image_file, 0x00000803, 'images')
        labels = self._read_idx(label_file, 0x00000801, 'labels')
        if images.shape[1:] != (self.side, self.side):
            raise UserError(f'{image_file} holds {images.shape[1]}x{images.shape[2]} images, expected 28x28: put the '
                            f'MNIST file {self.files[split][0]} there')
        if len(images) != len(labels):
            raise UserError(f'{image_file} holds {len(images)} images but {label_file} {len(labels)} labels: put the '
                            f'two MNIST {split} files of one release in {path}')
        if len(labels) and labels.max() > 9:
            raise UserError(f'{label_file}: labels must be the digits 0..9, found {int(labels.max())}')
        self.images = images
        self.default_fid_stats = self.fid_stats_pattern.format(resolution)
        super().__init__(split, resolution, 1, 10, labels.astype(np.int64), fid_stats)

    @staticmethod
    def _find(path: str, fname: str):
        """``path/fname``, else ``path/fname.gz``, else None."""
        for candidate in (os.path.join(path, fname), os.path.join(path, fname + '.gz')):
            if os.path.isfile(candidate):
                return candidate
        return None

    @staticmethod
    def _read_idx(fpath: str, magic: int, kind: str) -> np.ndarray:
        """An idx file of uint8 values (plain or gzipped) -> its array, after checking the magic and the size."""
        ndim = magic & 0xFF
        try:
            with (gzip.open(fpath, 'rb') if fpath.endswith('.gz') else open(fpath, 'rb')) as f:
                raw = f.read()
        except EOFError:
            raise UserError(f'{fpath} is truncated (the gzip stream ends early): replace it with the original MNIST '
                            f'file') from None
        except (OSError, zlib.error) as e:
            raise UserError(f'{fpath} is not a readable gzip file ({type(e).__name__}): replace it with the original '
                            f'MNIST file, or put the unpacked file there without .gz') from None
        header = 4 * (1 + ndim)
        found = int(np.frombuffer(raw, dtype='>u4', count=1)[0]) if len(raw) >= 4 else magic
        if found != magic:
            raise UserError(f'{fpath} is not an MNIST {kind} idx file (magic 0x{found:08x}, expected 0x{magic:08x}): '
                            f'put the original MNIST file there')
        if len(raw) < header:
            raise UserError(f'{fpath} is truncated: {len(raw)} bytes, shorter than its {header}-byte idx header: '
                            f'replace it with the original MNIST file')
        dims = tuple(int(d) for d in np.frombuffer(raw, dtype='>i4', count=ndim, offset=4))
        expected = int(np.prod(dims, dtype=np.int64)) if min(dims) >= 0 else -1
        if expected != len(raw) - header:
            state = 'truncated' if 0 <= expected and len(raw) - header < expected else 'not a consistent idx file'
            raise UserError(f'{fpath} is {state}: its header gives {kind} of shape {dims} ({expected} bytes) but '
                            f'{len(raw) - header} bytes follow it: replace it with the original MNIST file')
        return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)

    @classmethod
    def from_config(cls, cfg, split):
        return cls(cfg.get('path', cls.default_path), split, resolution=cfg.get('resolution', 28),
                   fid_stats=cfg.get('fid_stats', None))

    def _image(self, index):
        x = from_uint8(torch.from_numpy(self.images[index][None].copy()))
        if self.resolution != self.side:
            pad = (self.resolution - self.side) // 2
            x = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=-1.0)
        return x


class STL10(ImageDataset):
    """STL-10 from the binary release: ``path`` holds ``stl10_binary/`` or is that folder; files are memory-mapped.

    ``<split>_X.bin`` is N images of 3 x 96 x 96 uint8, one channel after another, each channel stored column-major
    (byte ``c * 9216 + w * 96 + h`` is channel c, row h, column w). ``<split>_y.bin`` is N uint8 labels 1..10, here
    0..9. 'train' has 5,000 images, 'test' 8,000, and the optional 'unlabeled' (``unlabeled_X.bin``) 100,000 with
    label -1. A ``resolution`` other than 96 resizes with ``crop_and_resize`` (box halving, then bicubic).
    """

    name = 'stl10'
    label_classes = 10
    splits = ('train', 'test', 'unlabeled')
    image_bytes = 3 * 96 * 96

    def __init__(self, path: str = 'assets/datasets/stl10', split: str = 'train', resolution: int = 96,
                 fid_stats=None):
        check_split(self.name, split, self.splits)
        resolution = int(resolution)
        if resolution <= 0:
            raise UserError(f'stl10 resolution must be positive (config.dataset.resolution), got {resolution}')
        folder = path if os.path.basename(os.path.normpath(path)) == 'stl10_binary' \
            else os.path.join(path, 'stl10_binary')
        xfile = os.path.join(folder, f'{split}_X.bin')
        if not os.path.isfile(xfile):
            if split == 'unlabeled' and os.path.isfile(os.path.join(folder, 'train_X.bin')):
                raise UserError(f"STL-10 split 'unlabeled' needs {xfile}: extract unlabeled_X.bin from "
                                f'stl10_binary.tar.gz into {folder}')
            raise UserError(f'STL-10 not found at {path}: extract stl10_binary.tar.gz there so that '
                            f'{os.path.join(path, "stl10_binary", "train_X.bin")} exists (missing {xfile})')
        size = os.path.getsize(xfile)
        if size == 0 or size % self.image_bytes:
            raise UserError(f'{xfile} is {size} bytes, not a whole number of 3x96x96 images: re-extract '
                            f'stl10_binary.tar.gz into {path}')
        n = size // self.image_bytes
        self.data = np.memmap(xfile, dtype=np.uint8, mode='r', shape=(n, 3, 96, 96))   # (N, C, W, H)
        if split == 'unlabeled':
            labels, num_classes = np.full(n, -1), 0
        else:
            yfile = os.path.join(folder, f'{split}_y.bin')
            if not os.path.isfile(yfile):
                raise UserError(f'STL-10 labels not found: extract stl10_binary.tar.gz so that {yfile} exists')
            labels, num_classes = np.fromfile(yfile, dtype=np.uint8).astype(np.int64) - 1, 10
            if len(labels) != n or labels.min() < 0 or labels.max() > 9:
                raise UserError(f'{yfile} must hold {n} labels 1..10 for the {n} images of {xfile}: re-extract '
                                f'stl10_binary.tar.gz into {path}')
        super().__init__(split, resolution, 3, num_classes, labels, fid_stats)

    @classmethod
    def from_config(cls, cfg, split):
        return cls(cfg.get('path', 'assets/datasets/stl10'), split, resolution=cfg.get('resolution', 96),
                   fid_stats=cfg.get('fid_stats', None))

    def _image(self, index):
        hwc = np.transpose(self.data[index], (2, 1, 0))
        if self.resolution != 96:
            hwc = crop_and_resize(Image.fromarray(np.ascontiguousarray(hwc)), self.resolution)
        return _hwc_to_tensor(hwc)


class TinyImageNet(ImageDataset):
    """Tiny ImageNet (200 classes, 64x64): ``path`` holds ``tiny-imagenet-200/`` or is that folder.

    'train' is ``train/<wnid>/images/*.JPEG`` (100,000 images), classes the sorted train wnids. 'test' is the
    labelled validation set ``val/images/*.JPEG`` (10,000), each labelled by its line of ``val/val_annotations.txt``
    (file name, wnid, box, tab-separated); the release's own test/ has no labels and is not used. Images are read
    lazily and go through ``crop_and_resize`` (RGB, a no-op at the native ``resolution`` of 64).
    """

    name = 'tinyimagenet'
    label_classes = 200
    splits = ('train', 'test')

    def __init__(self, path: str = 'assets/datasets/tinyimagenet', split: str = 'train', resolution: int = 64,
                 fid_stats=None):
        check_split(self.name, split, self.splits)
        root = path if os.path.basename(os.path.normpath(path)) == 'tiny-imagenet-200' \
            else os.path.join(path, 'tiny-imagenet-200')
        train_dir = os.path.join(root, 'train')
        if not os.path.isdir(train_dir):
            raise UserError(f'Tiny ImageNet not found at {path}: extract tiny-imagenet-200.zip there so that '
                            f'{os.path.join(path, "tiny-imagenet-200", "train")} exists (missing {train_dir})')
        wnids = sorted(d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d)))
        if not wnids:
            raise UserError(f'no class folders in {train_dir}: re-extract tiny-imagenet-200.zip into {path} '
                            f'(train/<wnid>/images/*.JPEG)')
        self.classes = wnids
        index = {w: i for i, w in enumerate(wnids)}
        if split == 'train':
            files, labels = [], []
            for wnid in wnids:
                found = _list_images(os.path.join(train_dir, wnid, 'images'))
                files.extend(found)
                labels.extend([index[wnid]] * len(found))
            split_dir = os.path.join(train_dir, '<wnid>', 'images')
        else:
            files, labels, split_dir = self._val_files(root, path, index)
        if not files:
            raise UserError(f'no images (.JPEG, .png, ...) under {split_dir}: re-extract tiny-imagenet-200.zip '
                            f'into {path}')
        self.files = files
        super().__init__(split, resolution, 3, len(wnids), np.asarray(labels), fid_stats)

    @staticmethod
    def _val_files(root, path, index):
        """val/images/* and their labels from val/val_annotations.txt."""
        annotations = os.path.join(root, 'val', 'val_annotations.txt')
        if not os.path.isfile(annotations):
            raise UserError(f"Tiny ImageNet split 'test' (the val/ images) needs {annotations}: re-extract "
                            f'tiny-imagenet-200.zip into {path}')
        wnid_of = {}
        with open(annotations) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2:
                    wnid_of[parts[0]] = parts[1]
        split_dir = os.path.join(root, 'val', 'images')
        files, labels = _list_images(split_dir), []
        for file in files:
            wnid = wnid_of.get(os.path.basename(file))
            if wnid is None:
                raise UserError(f'{file} has no line in {annotations}: re-extract tiny-imagenet-200.zip into {path}')
            if wnid not in index:
                raise UserError(f'{annotations} labels {os.path.basename(file)} with {wnid}, which is not a '
                                f'class folder of {os.path.join(root, "train")}: re-extract tiny-imagenet-200.zip '
                                f'into {path}')
            labels.append(index[wnid])
        return files, labels, split_dir

    @classmethod
    def from_config(cls, cfg, split):
        return cls(cfg.get('path', 'assets/datasets/tinyimagenet'), split, resolution=cfg.get('resolution', 64),
                   fid_stats=cfg.get('fid_stats', None))

    def _image(self, index):
        with Image.open(self.files[index]) as img:
            return _hwc_to_tensor(crop_and_resize(img, self.resolution))


class CelebA64(ImageDataset):
    """CelebA aligned faces (``img_align_celeba/*.jpg``, 178x218), unlabeled, read lazily from the files.

    ``path`` is ``img_align_celeba`` itself, the folder holding it, or torchvision's root (``<path>/celeba/``).
    Each image is cut to ``CELEBA_CROP_BOX`` (the U-ViT release crop) and resized to ``resolution`` with PIL bilinear,
    which is what the release's ``transforms.Resize`` does and what its FID statistics were computed with.
    If ``list_eval_partition.txt`` sits beside ``img_align_celeba``, 'train' is partition 0 (162,770 images, as in
    the release) and 'test' partition 2; without it 'train' is every image and there is no 'test'.
    """

    name = 'celeba64'
    splits = ('train', 'test')
    default_fid_stats = 'assets/fid_stats/fid_stats_celeba64_train_50000_ddim.npz'
    partitions = {'train': '0', 'test': '2'}

    def __init__(self, path: str = 'assets/datasets/celeba', split: str = 'train', resolution: int = 64,
                 fid_stats=None):
        check_split(self.name, split, self.splits)
        folder = self._find_folder(path)
        names = sorted(f for f in os.listdir(folder) if f.lower().endswith('.jpg'))
        if not names:
            raise UserError(f'no .jpg images in {folder}: extract img_align_celeba.zip into {path}')
        partition_file = os.path.join(os.path.dirname(folder), 'list_eval_partition.txt')
        if os.path.isfile(partition_file):
            wanted = set()
            with open(partition_file) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 2 and parts[1] == self.partitions[split]:
                        wanted.add(parts[0])
            names = [n for n in names if n in wanted]
            if not names:
                raise UserError(f'no images of the CelebA {split} partition in {folder}: check that '
                                f'{partition_file} belongs to these images')
        elif split != 'train':
            raise UserError(f"CelebA split '{split}' needs {partition_file}: put list_eval_partition.txt "
                            f'beside img_align_celeba')
        self.files = [os.path.join(folder, n) for n in names]
        super().__init__(split, resolution, 3, 0, np.full(len(self.files), -1), fid_stats)

    @staticmethod
    def _find_folder(path: str) -> str:
        for candidate in (path, os.path.join(path, 'img_align_celeba'),
                          os.path.join(path, 'celeba', 'img_align_celeba')):
            if os.path.basename(os.path.normpath(candidate)) == 'img_align_celeba' and os.path.isdir(candidate):
                return candidate
        raise UserError(f'CelebA not found at {path}: extract img_align_celeba.zip there so that '
                        f'{os.path.join(path, "img_align_celeba", "000001.jpg")} exists')

    @classmethod
    def from_config(cls, cfg, split):
        return cls(cfg.get('path', 'assets/datasets/celeba'), split, resolution=cfg.get('resolution', 64),
                   fid_stats=cfg.get('fid_stats', None))

    def _image(self, index):
        path = self.files[index]
        with Image.open(path) as img:
            if img.size != CELEBA_ALIGNED_SIZE:
                raise UserError(f'{path} is {img.width}x{img.height}, expected the 178x218 aligned CelebA images: '
                                f'use img_align_celeba.zip, not the in-the-wild release')
            arr = crop_and_resize(img, self.resolution, box=CELEBA_CROP_BOX, resample=Image.BILINEAR,
                                  box_downsample=False)
        return _hwc_to_tensor(arr)


def _npz_array(path: str, key: str) -> np.ndarray:
    """Array ``key`` of an .npz file, memory-mapped when stored uncompressed, else read into memory."""
    member = key + '.npy'
    with zipfile.ZipFile(path) as zf:
        if member not in zf.namelist():
            raise UserError(f"{path} has no array '{key}': use the downsampled-ImageNet npz release")
        info = zf.getinfo(member)
        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, 'rb') as f:
                f.seek(info.header_offset)
                local_header = f.read(30)
                name_len, extra_len = struct.unpack('<HH', local_header[26:30])
                f.seek(info.header_offset + 30 + name_len + extra_len)
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                offset = f.tell()
            if not dtype.hasobject:
                return np.memmap(path, dtype=dtype, mode='r', offset=offset, shape=shape,
                                 order='F' if fortran else 'C')
    with np.load(path) as npz:
        return npz[key]


class ImageNet64(ImageDataset):
    """ImageNet, class-conditional (labels 0..999), from one of two layouts found in ``path``.

    * ImageFolder: ``train/<wnid>/*.JPEG`` (and ``val/<wnid>/*.JPEG`` for 'test'); classes are the sorted train wnids;
      images go through ``crop_and_resize`` (ADM / U-ViT: box halving, bicubic short-side resize, centre crop).
    * Downsampled-ImageNet npz release: ``train_data_batch_*.npz`` ('train') and ``val_data.npz`` ('test') anywhere
      up to two folders below ``path`` (e.g. ``Imagenet64_train_npz/``); 'data' rows are CHW uint8, 'labels' 1-based.
      Resolution comes from the rows; uncompressed files are memory-mapped, compressed ones loaded into memory.
    """

    name = 'imagenet64'
    label_classes = 1000
    splits = ('train', 'test')
    npz_names = {'train': 'train_data_batch_', 'test': 'val_data'}
    default_resolution = 64
    fid_stats_pattern = 'assets/fid_stats/fid_stats_imagenet{}_guided_diffusion.npz'

    def __init__(self, path: str = 'assets/datasets/ImageNet', split: str = 'train', resolution: int = 64,
                 fid_stats=None):
        check_split(self.name, split, self.splits)
        if not os.path.isdir(path):
            raise UserError(self._missing(path))
        self.files, self.batches, self.offsets = None, None, None
        if os.path.isdir(os.path.join(path, 'train')):
            labels, num_classes = self._init_folder(path, split)
        else:
            labels, resolution, num_classes = self._init_npz(path, split, resolution)
        self.default_fid_stats = self.fid_stats_pattern.format(int(resolution)) if self.fid_stats_pattern else None
        super().__init__(split, resolution, 3, num_classes, labels, fid_stats)

    @classmethod
    def _missing(cls, path):
        return (f'ImageNet not found at {path}: put the ImageNet train/ (train/<wnid>/*.JPEG) and val/ folders there, '
                f'or extract the downsampled release so that {path}/Imagenet{cls.default_resolution}_train_npz/'
                f'train_data_batch_1.npz exists')

    def _init_folder(self, path, split):
        train_dir = os.path.join(path, 'train')
        wnids = sorted(d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d)))
        if not wnids:
            raise UserError(f'no class folders in {train_dir}: lay out ImageNet as train/<wnid>/*.JPEG')
        split_dir = train_dir if split == 'train' else os.path.join(path, 'val')
        if not os.path.isdir(split_dir) or not any(
                os.path.isdir(os.path.join(split_dir, w)) for w in os.listdir(split_dir)):
            raise UserError(f'ImageNet test split needs {split_dir}/<wnid>/*.JPEG: sort the validation images '
                            f'into one folder per wnid')
        index = {w: i for i, w in enumerate(wnids)}
        files, labels = [], []
        for wnid in sorted(os.listdir(split_dir)):
            if not os.path.isdir(os.path.join(split_dir, wnid)):
                continue
            if wnid not in index:
                raise UserError(f'{os.path.join(split_dir, wnid)} is not a class of {train_dir}: '
                                f'val/ must use the train wnids')
            found = _list_images(os.path.join(split_dir, wnid))
            files.extend(found)
            labels.extend([index[wnid]] * len(found))
        if not files:
            raise UserError(f'no images (.JPEG, .png, ...) under {split_dir}/<wnid>/')
        self.files = files
        return np.asarray(labels), len(wnids)

    def _init_npz(self, path, split, resolution):
        prefix = self.npz_names[split]
        found = []
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            if os.path.relpath(dirpath, path).count(os.sep) >= 2:
                dirnames[:] = []
            found.extend(os.path.join(dirpath, f) for f in filenames if f.startswith(prefix) and f.endswith('.npz'))
        if not found:
            if split == 'test' and any('train_data_batch_' in f for _, _, fs in os.walk(path) for f in fs):
                raise UserError(f'ImageNet npz test split needs val_data.npz under {path}: extract '
                                f'Imagenet{self.default_resolution}_val_npz.zip there')
            raise UserError(self._missing(path))

        def batch_number(f):
            stem = os.path.basename(f)[len(prefix):-len('.npz')]
            return int(stem) if stem.isdigit() else 0
        found.sort(key=batch_number)
        self.batches, labels, sizes = [], [], []
        for f in found:
            data = _npz_array(f, 'data')
            with np.load(f) as npz:
                if 'labels' not in npz.files:
                    raise UserError(f"{f} has no array 'labels': use the downsampled-ImageNet npz release")
                lab = np.asarray(npz['labels'], dtype=np.int64).reshape(-1) - 1
            side = int(round((data.shape[1] / 3) ** 0.5)) if data.ndim == 2 else 0
            if data.ndim != 2 or 3 * side * side != data.shape[1] or len(lab) != len(data):
                raise UserError(f"{f}: expected 'data' (N, 3*R*R) uint8 and N 'labels', got {data.shape} and "
                                f'{lab.shape}')
            if lab.min() < 0 or lab.max() > 999:
                raise UserError(f'{f}: labels must be 1..1000 as in the downsampled-ImageNet release')
            self.batches.append(data)
            labels.append(lab)
            sizes.append(len(lab))
        if resolution is not None and int(resolution) != side:
            raise UserError(f'the ImageNet npz files at {path} are {side}x{side}; set config.dataset.resolution={side} '
                            f'or point config.dataset.path at the {resolution}x{resolution} release')
        self.offsets = np.cumsum([0] + sizes)
        return np.concatenate(labels), side, 1000

    @classmethod
    def from_config(cls, cfg, split):
        return cls(cfg.get('path', 'assets/datasets/ImageNet'), split,
                   resolution=cfg.get('resolution', cls.default_resolution), fid_stats=cfg.get('fid_stats', None))

    def _image(self, index):
        if self.files is not None:
            with Image.open(self.files[index]) as img:
                return _hwc_to_tensor(crop_and_resize(img, self.resolution))
        b = int(np.searchsorted(self.offsets, index, side='right')) - 1
        row = np.array(self.batches[b][index - self.offsets[b]], dtype=np.uint8)
        return from_uint8(torch.from_numpy(row.reshape(3, self.resolution, self.resolution)))


class ImageNet32(ImageNet64):
    """ImageNet at 32x32: ``ImageNet64`` with resolution 32, for the downsampled release's ``Imagenet32_train_npz/``
    (``train_data_batch_1..10.npz``) and ``Imagenet32_val_npz/`` (``val_data.npz``), or an ImageFolder tree resized
    to 32. No reference FID statistics by default.
    """

    name = 'imagenet32'
    default_resolution = 32
    fid_stats_pattern = None

    def __init__(self, path: str = 'assets/datasets/ImageNet', split: str = 'train', resolution: int = 32,
                 fid_stats=None):
        super().__init__(path, split, resolution, fid_stats)


class ImageNetSubset(ImageNet64):
    """A class subset of ImageNet in the ImageFolder layout, ``path/train/<wnid>/*.JPEG`` (and ``path/val/<wnid>/``
    for 'test'), at any resolution: the 10-class subsets of the GenViT paper's img128-10 and img224-10. Labels are
    the sorted wnid folders present. No npz layout and no default FID statistics (they would not be ImageNet's).
    """

    name = 'imagenet_subset'
    label_classes = None
    default_resolution = 128
    fid_stats_pattern = None

    def __init__(self, path: str = 'assets/datasets/imagenet10', split: str = 'train', resolution: int = 128,
                 fid_stats=None):
        if not os.path.isdir(os.path.join(path, 'train')):
            raise UserError(f'ImageNet subset not found at {path}: put one folder of images per class there, '
                            f'{path}/train/<wnid>/*.JPEG (and {path}/val/<wnid>/ for the test split)')
        super().__init__(path, split, resolution, fid_stats)

    @classmethod
    def from_config(cls, cfg, split):
        return cls(cfg.get('path', 'assets/datasets/imagenet10'), split,
                   resolution=cfg.get('resolution', cls.default_resolution), fid_stats=cfg.get('fid_stats', None))


class ImageFolder(ImageDataset):
    """Any folder of images (recursive; .png .jpg .jpeg .webp .bmp), RGB.

    With ``resolution`` every image goes through ``crop_and_resize``; without it the images are used at their own
    size, which must be one square size for all of them (a folder of samples, say). With
    ``labels_from_subfolders`` the class of an image is its first-level subfolder (sorted names -> 0..K-1);
    otherwise every label is -1. Only a 'train' split exists.
    """

    name = 'image_folder'
    label_classes = None
    splits = ('train',)

    def __init__(self, path, resolution=None, split: str = 'train', labels_from_subfolders: bool = False,
                 fid_stats=None):
        check_split(self.name, split, self.splits)
        if not path:
            raise UserError('image_folder needs a folder: set config.dataset.path=/path/to/images')
        if not os.path.isdir(path):
            raise UserError(f'image folder not found at {path}: set config.dataset.path to a folder of images')
        files = _list_images(path)
        if not files:
            raise UserError(f'no images ({" ".join(IMAGE_EXTENSIONS)}) under {path}: put images there or fix '
                            f'config.dataset.path')
        if labels_from_subfolders:
            rel = [os.path.relpath(f, path).split(os.sep) for f in files]
            loose = [os.sep.join(r) for r in rel if len(r) == 1]
            if loose:
                raise UserError(f'{os.path.join(path, loose[0])} is not in a class subfolder: move it into '
                                f'{path}/<class>/ or set config.dataset.labels_from_subfolders=False')
            classes = sorted({r[0] for r in rel})
            index = {c: i for i, c in enumerate(classes)}
            labels, num_classes = [index[r[0]] for r in rel], len(classes)
            self.classes = classes
        else:
            labels, num_classes = [-1] * len(files), 0
            self.classes = []
        self.files = files
        self.native_size = not resolution
        if self.native_size:
            resolution = _common_square_size(path, files)
        super().__init__(split, int(resolution), 3, num_classes, np.asarray(labels), fid_stats)

    @classmethod
    def describe(cls, cfg, resolution: int):
        if not cfg.get('labels_from_subfolders', False):
            return 0, cfg.get('fid_stats', None)
        return describe(cls, cfg, resolution)

    @classmethod
    def from_config(cls, cfg, split):
        return cls(cfg.get('path', None), cfg.get('resolution', None), split,
                   labels_from_subfolders=bool(cfg.get('labels_from_subfolders', False)),
                   fid_stats=cfg.get('fid_stats', None))

    def _image(self, index):
        with Image.open(self.files[index]) as img:
            if self.native_size:
                return _hwc_to_tensor(np.asarray(img.convert('RGB')))
            return _hwc_to_tensor(crop_and_resize(img, self.resolution))


def _common_square_size(path: str, files: list) -> int:
    """The one square size of all ``files``; otherwise a UserError asking for a resolution."""
    first = None
    for file in files:
        with Image.open(file) as img:
            size = img.size
        if first is None:
            first = (size, file)
        if size != first[0] or size[0] != size[1]:
            raise UserError(f'images in {path} are not all of one square size ({first[0][0]}x{first[0][1]} in '
                            f'{os.path.relpath(first[1], path)}, {size[0]}x{size[1]} in {os.path.relpath(file, path)}'
                            f'): set a resolution (config.dataset.resolution or --resolution) to center-crop and '
                            f'resize them')
    return first[0][0]


class Interpolated(ImageDataset):
    """An out-of-distribution set made from another dataset: item i is the pixel-wise mean of two distinct images.

    ``base`` is the other dataset, built from ``config.dataset.base`` (its ``name`` and keys) with the same split.
    The pairing is fixed by ``seed``: ``pairs[:, 0]`` is a permutation of the base indices and ``pairs[i, 1]`` is
    drawn uniformly from the other indices, so item i is ``(base[pairs[i, 0]] + base[pairs[i, 1]]) / 2`` in [-1, 1]
    (values may fall between the 8-bit levels). Same length and shape as ``base``; unlabeled. Base cifar10, split
    'test' is the "interpolated CIFAR-10" of the GenViT / JEM OOD evaluations.
    """

    name = 'interpolated'

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
        return cls(build_from(IMAGE_DATASETS, base, split), seed=cfg.get('seed', 0),
                   fid_stats=cfg.get('fid_stats', None))

    def _image(self, index):
        a, b = self.pairs[index]
        return (self.base[int(a)][0] + self.base[int(b)][0]) / 2


class MSCOCO(ImageDataset):
    """MS-COCO 2014 images and their captions, from the release layout in ``path``: ``train2014/*.jpg``,
    ``val2014/*.jpg`` and ``annotations/captions_{train,val}2014.json``.

    Items are the images that have captions, sorted by COCO image id, unlabeled; ``captions[i]`` lists the captions
    of image i in the order of the annotations file, ``image_ids[i]`` its COCO id. Images go through
    ``crop_and_resize`` (box halving, bicubic, centre crop). Text-to-image FIDs are computed against 'val'.
    """

    name = 'mscoco'
    splits = ('train', 'val')
    fid_stats_pattern = 'assets/fid_stats/fid_stats_mscoco{}_val.npz'

    def __init__(self, path: str = 'assets/datasets/coco', split: str = 'train', resolution: int = 256,
                 fid_stats=None):
        check_split(self.name, split, self.splits)
        annotations = os.path.join(path, 'annotations', f'captions_{split}2014.json')
        image_dir = os.path.join(path, f'{split}2014')
        if not os.path.isfile(annotations) or not os.path.isdir(image_dir):
            raise UserError(f'MS-COCO {split} not found at {path}: put the COCO 2014 release there so that '
                            f'{image_dir}/*.jpg and {annotations} exist')
        try:
            with open(annotations) as f:
                content = json.load(f)
            files = {int(image['id']): image['file_name'] for image in content['images']}
            captions = {}
            for annotation in content['annotations']:
                captions.setdefault(int(annotation['image_id']), []).append(str(annotation['caption']))
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f'{annotations} is not a COCO captions file ("images" with id and file_name, '
                            f'"annotations" with image_id and caption): {type(e).__name__} {e}') from None
        ids = sorted(i for i in files if i in captions)
        if not ids:
            raise UserError(f'no image of {annotations} has a caption: use the COCO 2014 captions annotations')
        present = set(os.listdir(image_dir))
        missing = [files[i] for i in ids if files[i] not in present]
        if missing:
            raise UserError(f'{len(missing)} images listed in {annotations} are missing from {image_dir} (first: '
                            f'{missing[0]}): extract {split}2014.zip into {path}')
        self.image_ids = np.asarray(ids, dtype=np.int64)
        self.files = [os.path.join(image_dir, files[i]) for i in ids]
        self.captions = [captions[i] for i in ids]
        self.default_fid_stats = self.fid_stats_pattern.format(int(resolution))
        super().__init__(split, resolution, 3, 0, np.full(len(ids), -1), fid_stats)

    @classmethod
    def from_config(cls, cfg, split):
        return cls(cfg.get('path', 'assets/datasets/coco'), split, resolution=cfg.get('resolution', 256),
                   fid_stats=cfg.get('fid_stats', None))

    def _image(self, index):
        with Image.open(self.files[index]) as img:
            return _hwc_to_tensor(crop_and_resize(img, self.resolution))


IMAGE_DATASETS = {
    'digits': Digits,
    'cifar10': Cifar10,
    'celeba64': CelebA64,
    'imagenet64': ImageNet64,
    'image_folder': ImageFolder,
    'cifar100': Cifar100,
    'svhn': SVHN,
    'stl10': STL10,
    'tinyimagenet': TinyImageNet,
    'imagenet32': ImageNet32,
    'imagenet_subset': ImageNetSubset,
    'interpolated': Interpolated,
    'mscoco': MSCOCO,
    'mnist': Mnist,
}


def class_from(registry: dict, cfg):
    """The class of ``registry`` that ``config.dataset.name`` names; an unknown name is one line listing the rest."""
    name = cfg.get('name', None)
    if name not in registry:
        raise UserError(f"unknown dataset '{name}' in config.dataset.name; known: {', '.join(sorted(registry))}")
    return registry[name]


def build_from(registry: dict, cfg, split: str):
    """``config.dataset`` (``name`` plus that dataset's keys) -> the dataset of ``split`` from ``registry``."""
    return class_from(registry, cfg).from_config(cfg, split)
