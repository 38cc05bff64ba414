"""Tests for the MNIST dataset of libs/data/releases.py on tiny idx files written here, plain and gzipped."""
import gzip
import os
import struct

import ml_collections
import numpy as np
import pytest
import torch

from libs.data import DATASETS, build_dataset, data_spec
from libs.data.datasets import Mnist
from libs.errors import UserError

NAMES = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
         'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}


def cfg(**kwargs):
    return ml_collections.ConfigDict(kwargs)


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """The idx encoding: big-endian magic, one big-endian int32 per dim, then the uint8 values."""
    return struct.pack('>I', magic) + struct.pack(f'>{array.ndim}i', *array.shape) + array.tobytes()


def write(path, name, payload: bytes, gz: bool):
    if gz:
        with gzip.open(os.path.join(path, name + '.gz'), 'wb') as f:
            f.write(payload)
    else:
        with open(os.path.join(path, name), 'wb') as f:
            f.write(payload)


def write_mnist(root, gz=False, sizes=(('train', 5), ('test', 3))):
    """Random 28x28 uint8 images and digit labels as the four idx files -> {split: (images, labels)}."""
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(7)
    written = {}
    for split, n in sizes:
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        write(root, NAMES[split][0], idx_bytes(images, 0x00000803), gz)
        write(root, NAMES[split][1], idx_bytes(labels, 0x00000801), gz)
        written[split] = (images, labels)
    return written


def px(values):
    """8-bit value(s) -> the float32 tensor the datasets produce (p / 127.5 - 1, computed in float32)."""
    return torch.tensor(np.asarray(values, dtype=np.float32)) / 127.5 - 1


def one_line_error(config, split='train'):
    with pytest.raises(UserError) as e:
        build_dataset(config, split)
    msg = str(e.value)
    assert '\n' not in msg
    return msg


@pytest.mark.parametrize('gz', [False, True])
def test_mnist_plain_and_gzipped(tmp_path, gz):
    written = write_mnist(str(tmp_path), gz=gz)
    train = build_dataset(cfg(name='mnist', path=str(tmp_path)))
    test = build_dataset(cfg(name='mnist', path=str(tmp_path)), 'test')
    assert isinstance(train, Mnist) and DATASETS['mnist'] is Mnist
    assert (len(train), len(test)) == (5, 3)
    for ds, split in [(train, 'train'), (test, 'test')]:
        images, labels = written[split]
        assert ds.name == 'mnist' and ds.num_classes == 10 and ds.channels == 1 and ds.resolution == 28
        assert ds.data_shape == (1, 28, 28)
        assert ds.labels.dtype == np.int64 and list(ds.labels) == [int(v) for v in labels]
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.dtype == torch.float32 and tuple(x.shape) == (1, 28, 28)
            assert torch.equal(x[0], torch.from_numpy(images[i].astype(np.float32)) / 127.5 - 1)
            assert type(y) is int and y == labels[i]
    x = train[2][0]
    assert x[0, 3, 17] == px(written['train'][0][2, 3, 17])    # row 3, column 17: row-major
    assert torch.equal(train[-1][0], train[4][0])
    with pytest.raises(IndexError):
        train[5]


def test_mnist_pixel_mapping_matches_the_other_datasets(tmp_path):
    write_mnist(str(tmp_path))
    images = np.zeros((1, 28, 28), dtype=np.uint8)
    images[0, 0, :3] = [0, 128, 255]
    write(str(tmp_path), NAMES['test'][0], idx_bytes(images, 0x803), gz=False)
    write(str(tmp_path), NAMES['test'][1], idx_bytes(np.array([4], dtype=np.uint8), 0x801), gz=False)
    x, y = build_dataset(cfg(name='mnist', path=str(tmp_path)), 'test')[0]
    assert torch.equal(x[0, 0, :3], px([0, 128, 255])) and x[0, 0, 0] == -1 and x[0, 0, 2] == 1 and y == 4


def test_mnist_prefers_the_plain_file(tmp_path):
    write_mnist(str(tmp_path), gz=True)
    plain = write_mnist(str(tmp_path), gz=False, sizes=(('train', 2),))
    ds = build_dataset(cfg(name='mnist', path=str(tmp_path)))
    assert len(ds) == 2 and torch.equal(ds[1][0][0], torch.from_numpy(plain['train'][0][1]).float() / 127.5 - 1)
    assert len(build_dataset(cfg(name='mnist', path=str(tmp_path)), 'test')) == 3     # only the .gz files there


def test_mnist_resolution_32_pads_background(tmp_path):
    write_mnist(str(tmp_path))
    small = build_dataset(cfg(name='mnist', path=str(tmp_path)))
    big = build_dataset(cfg(name='mnist', path=str(tmp_path), resolution=32))
    assert big.data_shape == (1, 32, 32) and big.resolution == 32
    for i in range(len(big)):
        x = big[i][0]
        assert torch.equal(x[:, 2:30, 2:30], small[i][0])
        border = torch.ones_like(x, dtype=torch.bool)
        border[:, 2:30, 2:30] = False
        assert (x[border] == -1).all() and border.sum() == 32 * 32 - 28 * 28
    assert small.fid_stats == 'assets/fid_stats/fid_stats_mnist28_train.npz'
    assert big.fid_stats == 'assets/fid_stats/fid_stats_mnist32_train.npz'
    assert build_dataset(cfg(name='mnist', path=str(tmp_path), fid_stats='s.npz')).fid_stats == 's.npz'
    spec = data_spec(cfg(name='mnist', path=str(tmp_path / 'not_read')), (1, 32, 32))   # from the config alone
    assert (spec.num_classes, spec.fid_stats) == (10, 'assets/fid_stats/fid_stats_mnist32_train.npz')
    for bad in (16, 30, 64):
        msg = one_line_error(cfg(name='mnist', path=str(tmp_path), resolution=bad))
        assert 'mnist resolution must be 28 or 32' in msg and str(bad) in msg


def test_mnist_missing_files(tmp_path, monkeypatch):
    missing = str(tmp_path / 'nope')
    msg = one_line_error(cfg(name='mnist', path=missing), 'test')
    assert 'MNIST not found at' in msg and 'nothing is downloaded' in msg
    for name in NAMES['test']:
        assert os.path.join(missing, name) in msg and os.path.join(missing, name) + '.gz' in msg
    assert all(name in msg for pair in NAMES.values() for name in pair)
    monkeypatch.chdir(tmp_path)                                  # no assets/ here: the default path is missing
    default = one_line_error(cfg(name='mnist'))
    assert os.path.join('assets/datasets/mnist', 'train-images-idx3-ubyte') in default
    write_mnist(str(tmp_path))
    os.remove(tmp_path / 't10k-labels-idx1-ubyte')
    msg = one_line_error(cfg(name='mnist', path=str(tmp_path)), 'test')
    assert str(tmp_path / 't10k-labels-idx1-ubyte') in msg and 't10k-images-idx3-ubyte or' not in msg
    assert len(build_dataset(cfg(name='mnist', path=str(tmp_path)))) == 5     # the train split is complete
    with pytest.raises(UserError, match="no split 'val'"):
        build_dataset(cfg(name='mnist', path=str(tmp_path)), 'val')


@pytest.mark.parametrize('gz', [False, True])
def test_mnist_bad_files(tmp_path, gz):
    root = str(tmp_path)
    written = write_mnist(root, gz=gz)
    suffix = '.gz' if gz else ''
    images, labels = written['train']
    image_file = os.path.join(root, NAMES['train'][0] + suffix)
    label_file = os.path.join(root, NAMES['train'][1] + suffix)
    config = cfg(name='mnist', path=root)

    write(root, NAMES['train'][0], idx_bytes(images, 0x00000801), gz)                 # a labels magic
    msg = one_line_error(config)
    assert image_file in msg and 'magic 0x00000801, expected 0x00000803' in msg
    write(root, NAMES['train'][0], idx_bytes(images, 0x00000803)[:-10], gz)           # 10 bytes short
    msg = one_line_error(config)
    assert image_file in msg and 'truncated' in msg
    write(root, NAMES['train'][0], idx_bytes(images, 0x00000803)[:9], gz)             # inside the header
    msg = one_line_error(config)
    assert image_file in msg and 'truncated' in msg
    write(root, NAMES['train'][0], b'', gz)
    assert 'truncated' in one_line_error(config)
    write(root, NAMES['train'][0], idx_bytes(images, 0x00000803) + b'\0', gz)         # a byte too many
    msg = one_line_error(config)
    assert image_file in msg and 'not a consistent idx file' in msg
    write(root, NAMES['train'][0], idx_bytes(images[:, :14], 0x00000803), gz)         # 14x28 images
    assert 'expected 28x28' in one_line_error(config)
    write(root, NAMES['train'][0], idx_bytes(images[:4], 0x00000803), gz)             # 4 images, 5 labels
    msg = one_line_error(config)
    assert image_file in msg and label_file in msg and '4 images' in msg and '5 labels' in msg
    write(root, NAMES['train'][0], idx_bytes(images, 0x00000803), gz)
    write(root, NAMES['train'][1], idx_bytes(np.array([1, 2, 3, 4, 10], dtype=np.uint8), 0x801), gz)
    assert 'digits 0..9' in one_line_error(config)
    write(root, NAMES['train'][1], idx_bytes(labels.reshape(5, 1), 0x00000801), gz)   # 2 dims under a 1-dim magic
    msg = one_line_error(config)
    assert label_file in msg and 'not a consistent idx file' in msg
    write(root, NAMES['train'][1], idx_bytes(labels, 0x00000801), gz)
    assert len(build_dataset(config)) == 5


def test_mnist_broken_gzip(tmp_path):
    root = str(tmp_path)
    write_mnist(root, gz=True)
    path = os.path.join(root, NAMES['train'][0] + '.gz')
    with open(path, 'rb') as f:
        payload = f.read()
    with open(path, 'wb') as f:
        f.write(payload[:len(payload) // 2])                                            # the stream cut short
    msg = one_line_error(cfg(name='mnist', path=root))
    assert path in msg and 'truncated' in msg
    with open(path, 'wb') as f:
        f.write(b'this is not gzip data at all')
    msg = one_line_error(cfg(name='mnist', path=root))
    assert path in msg and 'not a readable gzip file' in msg
