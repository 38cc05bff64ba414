"""Datasets read from their own release files: CIFAR-10 and CIFAR-100 (python pickles) and MNIST (idx files)."""
import gzip
import os
import pickle
import zlib

import numpy as np
import torch

from libs.data.common import ImageDataset, check_split
from libs.errors import UserError
from libs.fileio import ArraysOnly
from libs.images import from_uint8


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
                    batch = ArraysOnly(f, encoding='bytes').load()  # the release's pickle; nothing in it can run
                rows = np.asarray(batch[b'data'], dtype=np.uint8)
                labels.extend(int(v) for v in batch[self.label_key])
            except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
                why = str(e) if isinstance(e, pickle.UnpicklingError) else type(e).__name__
                raise UserError(f'{fpath} is not a {self.title} python batch ({why}): re-extract '
                                f'{self.archive} into {path}') from None
            if rows.ndim != 2 or rows.shape[1] != 3 * 32 * 32:
                raise UserError(f'{fpath} holds rows of shape {rows.shape[1:]}, expected 3072 pixels: use the '
                                f'{self.title} python release ({self.archive})')
            data.append(rows)
        self.data = np.concatenate(data).reshape(-1, 3, 32, 32)
        super().__init__(split, 32, 3, self.num_label_classes, np.asarray(labels), fid_stats)

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

    def _image(self, index):
        x = from_uint8(torch.from_numpy(self.images[index][None].copy()))
        if self.resolution != self.side:
            pad = (self.resolution - self.side) // 2
            x = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=-1.0)
        return x
