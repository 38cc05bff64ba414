"""Tests for libs/data/ on small files written here: fake CIFAR-10 pickles, CelebA JPEGs, ImageNet trees and npz,
CIFAR-100 pickles, SVHN .mat files, STL-10 binaries and a Tiny ImageNet tree; the registry and its import names."""
import os
import pickle

import ml_collections
import numpy as np
import pytest
import torch
from PIL import Image

from libs.data import DATASETS, build_dataset
from libs.data.datasets import Digits
from libs.errors import UserError

# U-ViT release: the 128x128 square centred at x=89, y=121 of the 178x218 aligned image, as (left, top, right, bottom)
CELEBA_BOX = (25, 57, 153, 185)
RED, GREEN, BLUE, YELLOW = (200, 40, 80), (30, 190, 60), (0, 0, 255), (230, 220, 20)


def cfg(**kwargs):
    return ml_collections.ConfigDict(kwargs)


def px(values):
    """8-bit value(s) -> the float32 tensor the datasets must produce (p / 127.5 - 1)."""
    return torch.tensor(np.asarray(values, dtype=np.float32)) / 127.5 - 1


def solid(size, color):
    return Image.new('RGB', size, color)


def check_common(ds, name, shape, num_classes):
    assert ds.name == name
    assert ds.data_shape == shape
    assert (ds.channels, ds.resolution, ds.resolution) == shape
    assert ds.num_classes == num_classes
    x, y = ds[0]
    assert x.dtype == torch.float32 and tuple(x.shape) == shape
    assert -1 <= x.min() and x.max() <= 1
    assert type(y) is int
    assert torch.equal(ds[0][0], x)
    assert len(ds.labels) == len(ds)


# digits

def test_digits_splits_values_and_determinism():
    from sklearn.datasets import load_digits
    bunch = load_digits()
    train, test = build_dataset(cfg(name='digits')), build_dataset(cfg(name='digits'), 'test')
    check_common(train, 'digits', (1, 8, 8), 10)
    check_common(test, 'digits', (1, 8, 8), 10)
    assert len(train) + len(test) == 1797
    idx = Digits.split_indices(bunch.target)
    assert len(np.intersect1d(idx['train'], idx['test'])) == 0
    assert len(np.union1d(idx['train'], idx['test'])) == 1797
    counts = np.bincount(train.labels, minlength=10)
    assert counts.min() >= 135 and counts.max() <= 150
    assert abs(len(test) / 1797 - 0.2) < 0.01
    i = idx['train'][7]
    assert torch.equal(train[7][0][0], torch.from_numpy(bunch.images[i]).float() / 8 - 1)
    assert train[7][1] == int(bunch.target[i])
    values = torch.unique(train.images)
    assert values.min() == -1 and values.max() == 1 and len(values) <= 17
    again = build_dataset(cfg(name='digits'))
    assert torch.equal(again.images, train.images) and np.array_equal(again.labels, train.labels)
    assert train.fid_stats is None
    assert build_dataset(cfg(name='digits', fid_stats='x.npz')).fid_stats == 'x.npz'


def test_digits_upsampled():
    small, big = build_dataset(cfg(name='digits')), build_dataset(cfg(name='digits', resolution=16))
    assert big.data_shape == (1, 16, 16)
    assert torch.equal(big[3][0][:, ::2, ::2], small[3][0])
    assert torch.equal(big[3][0][:, 1::2, 1::2], small[3][0])
    with pytest.raises(UserError, match='multiple of 8'):
        build_dataset(cfg(name='digits', resolution=12))


# cifar10

def write_cifar(root, n_train=3, n_test=2):
    folder = os.path.join(root, 'cifar-10-batches-py')
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    rows = {}
    for name, n in [(f'data_batch_{i}', n_train) for i in range(1, 6)] + [('test_batch', n_test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        rows[name] = (data, labels)
        with open(os.path.join(folder, name), 'wb') as f:
            pickle.dump({b'data': data, b'labels': labels, b'batch_label': name.encode()}, f)
    return rows


def test_cifar10(tmp_path):
    rows = write_cifar(str(tmp_path))
    for path in (str(tmp_path), str(tmp_path / 'cifar-10-batches-py')):
        train = build_dataset(cfg(name='cifar10', path=path))
        test = build_dataset(cfg(name='cifar10', path=path), 'test')
        check_common(train, 'cifar10', (3, 32, 32), 10)
        assert (len(train), len(test)) == (15, 2)
    data, labels = rows['data_batch_2']
    x, y = train[3]                       # first row of data_batch_2
    assert y == labels[0]
    c, h, w = 1, 4, 7                     # rows are CHW: channel plane, then row, then column
    assert x[c, h, w] == px(data[0, c * 1024 + h * 32 + w])
    assert torch.equal(x, torch.from_numpy(data[0].reshape(3, 32, 32)).float() / 127.5 - 1)
    assert test[1][1] == rows['test_batch'][1][1]
    assert train.fid_stats == 'assets/fid_stats/fid_stats_cifar10_train_pytorch.npz'
    assert build_dataset(cfg(name='cifar10', path=str(tmp_path), fid_stats='s.npz')).fid_stats == 's.npz'


def test_cifar10_missing(tmp_path):
    missing = str(tmp_path / 'nope')
    with pytest.raises(UserError) as e:
        build_dataset(cfg(name='cifar10', path=missing))
    msg = str(e.value)
    assert '\n' not in msg and missing in msg and 'cifar-10-python.tar.gz' in msg
    assert os.path.join(missing, 'cifar-10-batches-py', 'data_batch_1') in msg


class Planted:
    """Unpickled by an unrestricted reader, it calls os.makedirs(path)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.makedirs, (self.path,)


def test_cifar_pickles_are_read_without_running_code(tmp_path):
    """The python-pickle release is read by an unpickler that builds plain data and numpy arrays only: a batch
    holding anything else is refused in one line, and its code never runs."""
    write_cifar(str(tmp_path))
    marker = tmp_path / 'code_ran'
    batch = tmp_path / 'cifar-10-batches-py' / 'data_batch_3'
    with open(batch, 'wb') as f:
        pickle.dump({b'data': np.zeros((1, 3072), np.uint8), b'labels': [0], b'x': Planted(str(marker))}, f)
    with pytest.raises(UserError, match=r'data_batch_3 is not a CIFAR-10 python batch \(global os.makedirs '
                                        r'refused: only plain data and numpy arrays are read\): re-extract'):
        build_dataset(cfg(name='cifar10', path=str(tmp_path)))
    assert not marker.exists()


def test_the_registry_and_the_names_libs_data_exported_before_the_split():
    import types

    import libs.data
    from libs.data import datasets
    exported = {
        libs.data: ['DATASETS', 'DataSpec', 'IMAGE_DATASETS', 'ImageNetFeatures', 'LatentFormat', 'MSCOCOFeatures',
                    'build_dataset', 'build_from', 'class_from', 'data_spec', 'dataset_class', 'is_latent'],
        datasets: ['CELEBA_ALIGNED_SIZE', 'CELEBA_CROP_BOX', 'CelebA64', 'Cifar10', 'Cifar100', 'Digits',
                   'IMAGE_DATASETS', 'IMAGE_EXTENSIONS', 'ImageDataset', 'ImageFolder', 'ImageNet32', 'ImageNet64',
                   'ImageNetSubset', 'Interpolated', 'MSCOCO', 'Mnist', 'STL10', 'SVHN', 'TinyImageNet', 'build_from',
                   'class_from', 'crop_and_resize']}
    for module, names in exported.items():
        assert set(names) <= {n for n in dir(module) if not isinstance(getattr(module, n), types.ModuleType)}, module
    for name, cls in datasets.IMAGE_DATASETS.items():   # one class per name, in its family's module
        assert cls.name == name and (cls.__module__ != 'libs.data.datasets' or name == 'interpolated'), name
    assert DATASETS['interpolated'] is datasets.Interpolated and datasets.Interpolated.bases is datasets.IMAGE_DATASETS


def test_a_key_the_dataset_does_not_take_is_one_line():
    """config.dataset is free-form (each dataset takes its own keys, and the command line may add them), so the
    dataset refuses a key it does not take, naming the close one."""
    with pytest.raises(UserError, match=r"^dataset 'digits' takes no key config.dataset.resolutoin; did you mean "
                                        r"resolution\? \(it takes fid_stats, name, random_flip, resolution\)$"):
        build_dataset(cfg(name='digits', resolutoin=16))
    with pytest.raises(UserError, match=r"^dataset 'cifar10' takes no key config.dataset.resolution \(it takes"):
        build_dataset(cfg(name='interpolated', base=cfg(name='cifar10', resolution=32)))


# celeba64

def celeba_image(quadrants=True):
    """178x218 blue image whose crop box is split in four coloured quadrants (or all red)."""
    img = solid((178, 218), BLUE)
    l, t, r, b = CELEBA_BOX
    cx, cy = (l + r) // 2, (t + b) // 2
    if quadrants:
        img.paste(RED, (l, t, cx, cy))
        img.paste(GREEN, (cx, t, r, cy))
        img.paste(YELLOW, (l, cy, cx, b))
        img.paste(BLUE, (cx, cy, r, b))
    else:
        img.paste(RED, (l, t, r, b))
    return img


def write_celeba(folder, n=3):
    os.makedirs(folder)
    for i in range(1, n + 1):
        celeba_image(quadrants=i == 1).save(os.path.join(folder, f'{i:06d}.jpg'), quality=100, subsampling=0)


def test_celeba64_crop(tmp_path):
    write_celeba(str(tmp_path / 'img_align_celeba'))
    ds = build_dataset(cfg(name='celeba64', path=str(tmp_path)))
    check_common(ds, 'celeba64', (3, 64, 64), 0)
    assert len(ds) == 3 and ds[2][1] == -1 and set(ds.labels) == {-1}
    tol = 4 / 127.5                       # JPEG at quality 100 is near-lossless on flat colours
    x = ds[1][0]                          # crop region all red, surroundings blue
    assert (x - px(RED)[:, None, None]).abs().max() < tol
    q = ds[0][0]                          # top-left red, top-right green, bottom-left yellow, bottom-right blue
    for rows, cols, color in [(slice(0, 30), slice(0, 30), RED), (slice(0, 30), slice(34, 64), GREEN),
                              (slice(34, 64), slice(0, 30), YELLOW), (slice(34, 64), slice(34, 64), BLUE)]:
        assert (q[:, rows, cols] - px(color)[:, None, None]).abs().max() < tol, color
    assert ds.fid_stats == 'assets/fid_stats/fid_stats_celeba64_train_50000_ddim.npz'
    with pytest.raises(UserError, match='list_eval_partition.txt'):
        build_dataset(cfg(name='celeba64', path=str(tmp_path)), 'test')


def test_celeba64_layouts_and_partition(tmp_path):
    folder = tmp_path / 'celeba' / 'img_align_celeba'
    write_celeba(str(folder))
    for path in (tmp_path, tmp_path / 'celeba', folder):
        assert len(build_dataset(cfg(name='celeba64', path=str(path)))) == 3
    (tmp_path / 'celeba' / 'list_eval_partition.txt').write_text('000001.jpg 0\n000002.jpg 1\n000003.jpg 2\n')
    train = build_dataset(cfg(name='celeba64', path=str(tmp_path)))
    test = build_dataset(cfg(name='celeba64', path=str(tmp_path)), 'test')
    assert [os.path.basename(f) for f in train.files] == ['000001.jpg']
    assert [os.path.basename(f) for f in test.files] == ['000003.jpg']


def test_celeba64_errors(tmp_path):
    with pytest.raises(UserError, match='img_align_celeba.zip'):
        build_dataset(cfg(name='celeba64', path=str(tmp_path / 'missing')))
    (tmp_path / 'img_align_celeba').mkdir()
    with pytest.raises(UserError, match='no .jpg images'):
        build_dataset(cfg(name='celeba64', path=str(tmp_path)))
    solid((100, 100), RED).save(str(tmp_path / 'img_align_celeba' / '000001.jpg'))
    ds = build_dataset(cfg(name='celeba64', path=str(tmp_path)))
    with pytest.raises(UserError, match='178x218'):
        ds[0]


# imagenet64

def write_imagenet_folder(root):
    """train/<wnid>/ and val/<wnid>/: 160x128 images, red in the central 128 columns, blue at the sides."""
    def image(color):
        img = solid((160, 128), BLUE)
        img.paste(color, (16, 0, 144, 128))
        return img
    layout = {'train/n02': [GREEN], 'train/n01': [RED, YELLOW], 'val/n01': [RED], 'val/n02': [GREEN]}
    for sub, colors in layout.items():
        os.makedirs(os.path.join(root, sub))
        for i, color in enumerate(colors):
            image(color).save(os.path.join(root, sub, f'{sub[-3:]}_{i}.png'))


def test_imagenet64_folder(tmp_path):
    write_imagenet_folder(str(tmp_path))
    train = build_dataset(cfg(name='imagenet64', path=str(tmp_path)))
    test = build_dataset(cfg(name='imagenet64', path=str(tmp_path)), 'test')
    check_common(train, 'imagenet64', (3, 64, 64), 2)
    assert list(train.labels) == [0, 0, 1] and list(test.labels) == [0, 1]
    for ds, i, color in [(train, 0, RED), (train, 1, YELLOW), (train, 2, GREEN), (test, 1, GREEN)]:
        x = ds[i][0]                      # the centre crop keeps only the coloured middle, never the blue sides
        assert (x - px(color)[:, None, None]).abs().max() <= 1 / 127.5 + 1e-6
    assert train.fid_stats == 'assets/fid_stats/fid_stats_imagenet64_guided_diffusion.npz'
    small = build_dataset(cfg(name='imagenet64', path=str(tmp_path), resolution=32))
    assert small.data_shape == (3, 32, 32)
    assert small.fid_stats == 'assets/fid_stats/fid_stats_imagenet32_guided_diffusion.npz'


def write_imagenet_npz(root, res=64):
    rng = np.random.default_rng(1)
    batches = {}
    for name, folder, n, compressed in [('train_data_batch_1', 'Imagenet64_train_npz', 2, False),
                                        ('train_data_batch_2', 'Imagenet64_train_npz', 3, False),
                                        ('train_data_batch_10', 'Imagenet64_train_npz', 1, False),
                                        ('val_data', 'Imagenet64_val_npz', 2, True)]:
        data = rng.integers(0, 256, (n, 3 * res * res), dtype=np.uint8)
        labels = rng.integers(1, 1001, n)
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        save = np.savez_compressed if compressed else np.savez
        save(os.path.join(root, folder, name + '.npz'), data=data, labels=labels)
        batches[name] = (data, labels)
    return batches


def test_imagenet64_npz(tmp_path):
    batches = write_imagenet_npz(str(tmp_path))
    train = build_dataset(cfg(name='imagenet64', path=str(tmp_path)))
    test = build_dataset(cfg(name='imagenet64', path=str(tmp_path)), 'test')
    check_common(train, 'imagenet64', (3, 64, 64), 1000)
    assert (len(train), len(test)) == (6, 2)
    assert isinstance(train.batches[0], np.memmap)           # uncompressed npz is memory-mapped
    data, labels = batches['train_data_batch_2']
    x, y = train[3]                       # batch 1 has 2 rows, so index 3 is row 1 of batch 2
    assert y == labels[1] - 1
    c, h, w = 2, 10, 33
    assert x[c, h, w] == px(data[1, c * 4096 + h * 64 + w])
    assert torch.equal(x, torch.from_numpy(data[1].reshape(3, 64, 64)).float() / 127.5 - 1)
    assert train[5][1] == batches['train_data_batch_10'][1][0] - 1   # numeric, not lexical, batch order
    vdata, vlabels = batches['val_data']
    assert torch.equal(test[1][0], torch.from_numpy(vdata[1].reshape(3, 64, 64)).float() / 127.5 - 1)
    assert test[1][1] == vlabels[1] - 1
    with pytest.raises(UserError, match='resolution=64'):
        build_dataset(cfg(name='imagenet64', path=str(tmp_path), resolution=32))


def test_imagenet64_errors(tmp_path):
    with pytest.raises(UserError, match='ImageNet not found'):
        build_dataset(cfg(name='imagenet64', path=str(tmp_path / 'missing')))
    with pytest.raises(UserError, match='train_data_batch_1.npz'):
        build_dataset(cfg(name='imagenet64', path=str(tmp_path)))
    (tmp_path / 'train').mkdir()
    with pytest.raises(UserError, match='no class folders'):
        build_dataset(cfg(name='imagenet64', path=str(tmp_path)))


# image_folder

def test_image_folder(tmp_path):
    for sub, color in [('dogs', GREEN), ('cats', RED), ('cats/deep', YELLOW)]:
        os.makedirs(tmp_path / sub, exist_ok=True)
        img = solid((48, 32), BLUE)       # centre 32 columns coloured, 8 blue columns each side
        img.paste(color, (8, 0, 40, 32))
        img.save(str(tmp_path / sub / 'a.png'))
    solid((64, 64), (10, 20, 30)).save(str(tmp_path / 'dogs' / 'b.bmp'))
    (tmp_path / 'dogs' / 'notes.txt').write_text('not an image')
    plain = build_dataset(cfg(name='image_folder', path=str(tmp_path), resolution=32))
    check_common(plain, 'image_folder', (3, 32, 32), 0)
    assert len(plain) == 4 and set(plain.labels) == {-1}
    assert plain.fid_stats is None
    x = plain[0][0]                       # cats/a.png: the crop is exactly the red middle
    assert torch.equal(x, px(RED)[:, None, None].expand(3, 32, 32))
    assert x[0, 0, 0] == px(200)
    resized = plain[3][0]                 # dogs/b.bmp: 64 -> 32, a flat colour stays flat
    assert (resized - px((10, 20, 30))[:, None, None]).abs().max() <= 1 / 127.5 + 1e-6
    labeled = build_dataset(cfg(name='image_folder', path=str(tmp_path), resolution=32, labels_from_subfolders=True))
    assert labeled.num_classes == 2 and labeled.classes == ['cats', 'dogs']
    assert list(labeled.labels) == [0, 0, 1, 1]
    assert torch.equal(labeled[1][0], px(YELLOW)[:, None, None].expand(3, 32, 32))
    solid((8, 8), RED).save(str(tmp_path / 'loose.png'))
    with pytest.raises(UserError, match='class subfolder'):
        build_dataset(cfg(name='image_folder', path=str(tmp_path), resolution=8, labels_from_subfolders=True))


def test_image_folder_at_native_size(tmp_path):
    solid((12, 12), RED).save(str(tmp_path / 'a.png'))
    solid((12, 12), GREEN).save(str(tmp_path / 'b.png'))
    native = build_dataset(cfg(name='image_folder', path=str(tmp_path)))   # no resolution: the images' own size
    assert native.data_shape == (3, 12, 12)
    assert torch.equal(native[1][0], px(GREEN)[:, None, None].expand(3, 12, 12))
    solid((20, 10), BLUE).save(str(tmp_path / 'c.png'))
    with pytest.raises(UserError, match=r'not all of one square size \(12x12 in a.png, 20x10 in c.png\): set a '
                                        r'resolution \(config.dataset.resolution'):
        build_dataset(cfg(name='image_folder', path=str(tmp_path)))
    (tmp_path / 'a.png').unlink()
    (tmp_path / 'b.png').unlink()
    with pytest.raises(UserError, match=r'not all of one square size \(20x10 in c.png\): set a resolution'):
        build_dataset(cfg(name='image_folder', path=str(tmp_path)))   # one image, not square: named once


def test_image_folder_errors(tmp_path):
    with pytest.raises(UserError, match='not found'):
        build_dataset(cfg(name='image_folder', path=str(tmp_path / 'missing'), resolution=8))
    with pytest.raises(UserError, match='no images'):
        build_dataset(cfg(name='image_folder', path=str(tmp_path), resolution=8))
    with pytest.raises(UserError, match='config.dataset.path'):
        build_dataset(cfg(name='image_folder', resolution=8))


# registry

def test_unknown_name_and_split(tmp_path):
    with pytest.raises(UserError) as e:
        build_dataset(cfg(name='fashion_mnist'))
    msg = str(e.value)
    assert "'fashion_mnist'" in msg and '\n' not in msg
    assert all(name in msg for name in DATASETS)
    with pytest.raises(UserError, match="no split 'val'; known splits: train, test"):
        build_dataset(cfg(name='digits'), 'val')
    with pytest.raises(UserError, match="no split 'test'"):
        build_dataset(cfg(name='image_folder', path=str(tmp_path), resolution=8), 'test')
    with pytest.raises(UserError, match="no split 'valid'"):
        build_dataset(cfg(name='cifar10', path=str(tmp_path)), 'valid')
    assert set(DATASETS) >= {'digits', 'cifar10', 'celeba64', 'imagenet64', 'image_folder', 'cifar100', 'svhn',
                             'stl10', 'tinyimagenet', 'imagenet32', 'interpolated', 'mscoco', 'imagenet_features',
                             'mscoco_features'}


# cifar100

def write_cifar100(root, n_train=4, n_test=2):
    folder = os.path.join(root, 'cifar-100-python')
    os.makedirs(folder)
    rng = np.random.default_rng(2)
    rows = {}
    for name, n in [('train', n_train), ('test', n_test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        rows[name] = (data, fine)
        with open(os.path.join(folder, name), 'wb') as f:
            pickle.dump({b'data': data, b'fine_labels': fine, b'coarse_labels': [v // 5 for v in fine],
                         b'batch_label': name.encode()}, f)
    return rows


def test_cifar100(tmp_path):
    rows = write_cifar100(str(tmp_path))
    for path in (str(tmp_path), str(tmp_path / 'cifar-100-python')):
        train = build_dataset(cfg(name='cifar100', path=path))
        test = build_dataset(cfg(name='cifar100', path=path), 'test')
        check_common(train, 'cifar100', (3, 32, 32), 100)
        assert (len(train), len(test)) == (4, 2)
    data, fine = rows['train']
    x, y = train[2]
    assert y == fine[2] and list(train.labels) == fine          # the fine labels, not the coarse ones
    c, h, w = 2, 31, 5
    assert x[c, h, w] == px(data[2, c * 1024 + h * 32 + w])
    assert torch.equal(x, torch.from_numpy(data[2].reshape(3, 32, 32)).float() / 127.5 - 1)
    assert test[1][1] == rows['test'][1][1]
    assert train.fid_stats is None
    assert build_dataset(cfg(name='cifar100', path=str(tmp_path), fid_stats='s.npz')).fid_stats == 's.npz'


def test_cifar100_missing(tmp_path):
    missing = str(tmp_path / 'nope')
    with pytest.raises(UserError) as e:
        build_dataset(cfg(name='cifar100', path=missing))
    msg = str(e.value)
    assert '\n' not in msg and missing in msg and 'cifar-100-python.tar.gz' in msg
    assert os.path.join(missing, 'cifar-100-python', 'train') in msg
    write_cifar(str(tmp_path))                                    # a CIFAR-10 folder is not CIFAR-100
    with pytest.raises(UserError, match='CIFAR-100 not found'):
        build_dataset(cfg(name='cifar100', path=str(tmp_path)))


# svhn

def write_svhn(root, labels=None):
    from scipy.io import savemat
    rng = np.random.default_rng(3)
    mats = {}
    for name, y in [('train_32x32.mat', [10, 1, 9]), ('test_32x32.mat', [4, 10])]:
        y = labels or y
        x = rng.integers(0, 256, (32, 32, 3, len(y)), dtype=np.uint8)     # (row, column, channel, image)
        savemat(os.path.join(root, name), {'X': x, 'y': np.asarray(y, dtype=np.uint8)[:, None]})
        mats[name] = (x, y)
    return mats


def test_svhn(tmp_path):
    mats = write_svhn(str(tmp_path))
    train = build_dataset(cfg(name='svhn', path=str(tmp_path)))
    test = build_dataset(cfg(name='svhn', path=str(tmp_path)), 'test')
    check_common(train, 'svhn', (3, 32, 32), 10)
    assert (len(train), len(test)) == (3, 2)
    assert list(train.labels) == [0, 1, 9] and list(test.labels) == [4, 0]    # label 10 is the digit 0
    x_mat = mats['train_32x32.mat'][0]
    x, y = train[2]
    c, h, w = 1, 3, 30
    assert x[c, h, w] == px(x_mat[h, w, c, 2]) and y == 9
    assert torch.equal(x, torch.from_numpy(x_mat[:, :, :, 2]).permute(2, 0, 1).float() / 127.5 - 1)
    assert torch.equal(test[1][0], torch.from_numpy(mats['test_32x32.mat'][0][:, :, :, 1]).permute(2, 0, 1)
                       .float() / 127.5 - 1)
    assert train.fid_stats is None
    assert build_dataset(cfg(name='svhn', path=str(tmp_path), fid_stats='s.npz')).fid_stats == 's.npz'


def test_svhn_errors(tmp_path):
    missing = str(tmp_path / 'nope')
    with pytest.raises(UserError) as e:
        build_dataset(cfg(name='svhn', path=missing), 'test')
    msg = str(e.value)
    assert '\n' not in msg and 'SVHN not found' in msg and os.path.join(missing, 'test_32x32.mat') in msg
    assert 'train_32x32.mat' in msg
    (tmp_path / 'train_32x32.mat').write_bytes(b'not a mat file')
    with pytest.raises(UserError, match='train_32x32.mat is not an SVHN'):
        build_dataset(cfg(name='svhn', path=str(tmp_path)))
    write_svhn(str(tmp_path), labels=[0, 3])
    with pytest.raises(UserError, match='1..10'):
        build_dataset(cfg(name='svhn', path=str(tmp_path)))


# stl10

STL_BYTES = 3 * 96 * 96


def write_stl10(root, unlabeled=False):
    """Raw rows as in the release: per image 3 channels, each 96x96 channel stored column-major."""
    folder = os.path.join(root, 'stl10_binary')
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(4)
    files = {}
    splits = [('train', [1, 10, 5]), ('test', [2, 7])] + ([('unlabeled', None)] if unlabeled else [])
    for split, y in splits:
        raw = rng.integers(0, 256, (len(y) if y else 4, STL_BYTES), dtype=np.uint8)
        if split == 'test':
            raw[0] = np.repeat(np.array([10, 120, 250], dtype=np.uint8), 96 * 96)   # a flat colour
        raw.tofile(os.path.join(folder, f'{split}_X.bin'))
        if y:
            np.asarray(y, dtype=np.uint8).tofile(os.path.join(folder, f'{split}_y.bin'))
        files[split] = (raw, y)
    return files


def test_stl10(tmp_path):
    files = write_stl10(str(tmp_path))
    for path in (str(tmp_path), str(tmp_path / 'stl10_binary')):
        train = build_dataset(cfg(name='stl10', path=path))
        test = build_dataset(cfg(name='stl10', path=path), 'test')
        check_common(train, 'stl10', (3, 96, 96), 10)
        assert (len(train), len(test)) == (3, 2)
    assert isinstance(train.data, np.memmap)
    assert list(train.labels) == [0, 9, 4] and list(test.labels) == [1, 6]      # 1..10 -> 0..9
    raw = files['train'][0]
    x, y = train[1]
    c, h, w = 2, 5, 70                    # byte c * 9216 + w * 96 + h: column-major within a channel
    assert x[c, h, w] == px(raw[1, c * 9216 + w * 96 + h]) and y == 9
    assert x[c, h, w] != px(raw[1, c * 9216 + h * 96 + w])
    assert torch.equal(x, torch.from_numpy(raw[1].reshape(3, 96, 96).transpose(0, 2, 1).copy()).float() / 127.5 - 1)
    assert train.fid_stats is None
    assert build_dataset(cfg(name='stl10', path=str(tmp_path), fid_stats='s.npz')).fid_stats == 's.npz'
    small = build_dataset(cfg(name='stl10', path=str(tmp_path), resolution=48), 'test')
    check_common(small, 'stl10', (3, 48, 48), 10)
    assert torch.equal(small[0][0], px((10, 120, 250))[:, None, None].expand(3, 48, 48))   # flat stays flat


def test_stl10_unlabeled_and_errors(tmp_path):
    missing = str(tmp_path / 'nope')
    with pytest.raises(UserError) as e:
        build_dataset(cfg(name='stl10', path=missing))
    msg = str(e.value)
    assert '\n' not in msg and 'stl10_binary.tar.gz' in msg
    assert os.path.join(missing, 'stl10_binary', 'train_X.bin') in msg
    write_stl10(str(tmp_path))
    with pytest.raises(UserError, match="split 'unlabeled' needs .*unlabeled_X.bin"):
        build_dataset(cfg(name='stl10', path=str(tmp_path)), 'unlabeled')
    files = write_stl10(str(tmp_path), unlabeled=True)
    unlabeled = build_dataset(cfg(name='stl10', path=str(tmp_path)), 'unlabeled')
    check_common(unlabeled, 'stl10', (3, 96, 96), 0)
    assert len(unlabeled) == 4 and set(unlabeled.labels) == {-1} and unlabeled[3][1] == -1
    raw = files['unlabeled'][0]
    assert torch.equal(unlabeled[3][0], torch.from_numpy(raw[3].reshape(3, 96, 96).transpose(0, 2, 1).copy())
                       .float() / 127.5 - 1)
    os.remove(tmp_path / 'stl10_binary' / 'test_y.bin')
    with pytest.raises(UserError, match='test_y.bin'):
        build_dataset(cfg(name='stl10', path=str(tmp_path)), 'test')
    (tmp_path / 'stl10_binary' / 'train_X.bin').write_bytes(b'\0' * 100)
    with pytest.raises(UserError, match='not a whole number of 3x96x96 images'):
        build_dataset(cfg(name='stl10', path=str(tmp_path)))


# tinyimagenet

def write_tinyimagenet(root):
    """tiny-imagenet-200/ with 64x64 noise JPEGs (one grayscale), classes n02 (1 image) and n01 (2), 3 val images."""
    base = os.path.join(root, 'tiny-imagenet-200')
    rng = np.random.default_rng(5)

    def save(rel, gray=False):
        os.makedirs(os.path.dirname(os.path.join(base, rel)), exist_ok=True)
        shape = (64, 64) if gray else (64, 64, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(os.path.join(base, rel), quality=90)
    for rel in ['train/n02/images/n02_0.JPEG', 'train/n01/images/n01_0.JPEG', 'val/images/val_0.JPEG',
                'val/images/val_1.JPEG', 'val/images/val_2.JPEG']:
        save(rel)
    save('train/n01/images/n01_1.JPEG', gray=True)
    with open(os.path.join(base, 'train', 'n01', 'n01_boxes.txt'), 'w') as f:
        f.write('n01_0.JPEG\t0\t0\t63\t63\n')
    with open(os.path.join(base, 'val', 'val_annotations.txt'), 'w') as f:
        for name, wnid in [('val_0.JPEG', 'n02'), ('val_1.JPEG', 'n01'), ('val_2.JPEG', 'n02')]:
            f.write(f'{name}\t{wnid}\t1\t2\t40\t50\n')
    return base


def test_tinyimagenet(tmp_path):
    base = write_tinyimagenet(str(tmp_path))
    for path in (str(tmp_path), base):
        train = build_dataset(cfg(name='tinyimagenet', path=path))
        test = build_dataset(cfg(name='tinyimagenet', path=path), 'test')
        check_common(train, 'tinyimagenet', (3, 64, 64), 2)
        assert (len(train), len(test)) == (3, 3)
    assert train.classes == ['n01', 'n02'] and list(train.labels) == [0, 0, 1]
    assert list(test.labels) == [1, 0, 1]                          # from val_annotations.txt, not the folder
    assert [os.path.basename(f) for f in test.files] == ['val_0.JPEG', 'val_1.JPEG', 'val_2.JPEG']
    decoded = np.asarray(Image.open(os.path.join(base, 'val', 'images', 'val_1.JPEG')).convert('RGB'))
    x, y = test[1]
    c, h, w = 0, 17, 42
    assert x[c, h, w] == px(decoded[h, w, c]) and y == 0
    assert torch.equal(x, torch.from_numpy(decoded.copy()).permute(2, 0, 1).float() / 127.5 - 1)
    gray = train[1][0]                                             # n01_1.JPEG is grayscale: three equal channels
    assert gray.shape == (3, 64, 64) and torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert train.fid_stats is None
    assert build_dataset(cfg(name='tinyimagenet', path=base, fid_stats='s.npz')).fid_stats == 's.npz'
    assert build_dataset(cfg(name='tinyimagenet', path=base, resolution=32)).data_shape == (3, 32, 32)


def test_tinyimagenet_errors(tmp_path):
    missing = str(tmp_path / 'nope')
    with pytest.raises(UserError) as e:
        build_dataset(cfg(name='tinyimagenet', path=missing))
    msg = str(e.value)
    assert '\n' not in msg and 'tiny-imagenet-200.zip' in msg
    assert os.path.join(missing, 'tiny-imagenet-200', 'train') in msg
    base = write_tinyimagenet(str(tmp_path))
    with open(os.path.join(base, 'val', 'val_annotations.txt'), 'a') as f:
        f.write('val_3.JPEG\tn09\t0\t0\t1\t1\n')
    Image.new('RGB', (64, 64)).save(os.path.join(base, 'val', 'images', 'val_3.JPEG'))
    with pytest.raises(UserError, match='n09, which is not a class folder'):
        build_dataset(cfg(name='tinyimagenet', path=base), 'test')
    os.remove(os.path.join(base, 'val', 'val_annotations.txt'))
    with pytest.raises(UserError, match="split 'test' .*needs .*val_annotations.txt"):
        build_dataset(cfg(name='tinyimagenet', path=base), 'test')


# imagenet32

def test_imagenet32_npz(tmp_path):
    batches = write_imagenet_npz(str(tmp_path), res=32)
    for kind in ('train', 'val'):
        os.rename(tmp_path / f'Imagenet64_{kind}_npz', tmp_path / f'Imagenet32_{kind}_npz')
    train = build_dataset(cfg(name='imagenet32', path=str(tmp_path)))
    test = build_dataset(cfg(name='imagenet32', path=str(tmp_path)), 'test')
    check_common(train, 'imagenet32', (3, 32, 32), 1000)
    assert (len(train), len(test)) == (6, 2)
    assert isinstance(train.batches[0], np.memmap)
    data, labels = batches['train_data_batch_2']
    x, y = train[3]
    c, h, w = 1, 20, 3
    assert x[c, h, w] == px(data[1, c * 1024 + h * 32 + w]) and y == labels[1] - 1
    assert torch.equal(x, torch.from_numpy(data[1].reshape(3, 32, 32)).float() / 127.5 - 1)
    assert train[5][1] == batches['train_data_batch_10'][1][0] - 1
    assert test[0][1] == batches['val_data'][1][0] - 1
    assert train.fid_stats is None
    assert build_dataset(cfg(name='imagenet32', path=str(tmp_path), fid_stats='s.npz')).fid_stats == 's.npz'
    with pytest.raises(UserError, match='resolution=32'):
        build_dataset(cfg(name='imagenet64', path=str(tmp_path)))


def test_imagenet32_errors(tmp_path):
    missing = str(tmp_path / 'missing')
    for name, res in [('imagenet32', 32), ('imagenet64', 64)]:
        with pytest.raises(UserError) as e:
            build_dataset(cfg(name=name, path=missing))
        msg = str(e.value)
        assert '\n' not in msg and 'ImageNet not found' in msg
        assert f'{missing}/Imagenet{res}_train_npz/train_data_batch_1.npz' in msg
    write_imagenet_npz(str(tmp_path))                              # the 64x64 release
    with pytest.raises(UserError, match='are 64x64; set config.dataset.resolution=64'):
        build_dataset(cfg(name='imagenet32', path=str(tmp_path)))
    os.remove(tmp_path / 'Imagenet64_val_npz' / 'val_data.npz')
    with pytest.raises(UserError, match='Imagenet32_val_npz.zip'):
        build_dataset(cfg(name='imagenet32', path=str(tmp_path), resolution=64), 'test')


# interpolated

def test_interpolated(tmp_path):
    rows = write_cifar(str(tmp_path), n_test=5)
    base_cfg = cfg(name='cifar10', path=str(tmp_path))
    ds = build_dataset(cfg(name='interpolated', base=base_cfg, seed=3), 'test')
    base = build_dataset(base_cfg, 'test')
    check_common(ds, 'interpolated', (3, 32, 32), 0)
    assert len(ds) == 5 and set(ds.labels) == {-1} and ds[4][1] == -1
    assert sorted(ds.pairs[:, 0]) == list(range(5)) and all(ds.pairs[:, 0] != ds.pairs[:, 1])
    data = rows['test_batch'][0].reshape(5, 3, 32, 32).astype(np.float64)
    for i, (a, b) in enumerate(ds.pairs):
        x = ds[i][0]
        assert torch.equal(x, (base[int(a)][0] + base[int(b)][0]) / 2)
        assert torch.allclose(x, torch.from_numpy((data[a] + data[b]) / 2 / 127.5 - 1).float(), atol=1e-6)
    again = build_dataset(cfg(name='interpolated', base=base_cfg, seed=3), 'test')
    assert np.array_equal(again.pairs, ds.pairs) and torch.equal(again[2][0], ds[2][0])
    train_pairs = [build_dataset(cfg(name='interpolated', base=base_cfg, seed=s)).pairs for s in range(40)]
    assert all(len(p) == 15 and all(p[:, 0] != p[:, 1]) for p in train_pairs)
    assert len({p.tobytes() for p in train_pairs}) == 40            # the seed changes the pairing
    assert ds.fid_stats is None
    assert build_dataset(cfg(name='interpolated', base=base_cfg, fid_stats='s.npz'), 'test').fid_stats == 's.npz'


def test_interpolated_errors(tmp_path):
    with pytest.raises(UserError) as e:
        build_dataset(cfg(name='interpolated'))
    msg = str(e.value)
    assert '\n' not in msg and 'config.dataset.base.name' in msg
    missing = str(tmp_path / 'nope')
    with pytest.raises(UserError, match='CIFAR-10 not found'):                 # the base dataset's own message
        build_dataset(cfg(name='interpolated', base=cfg(name='cifar10', path=missing)))
    write_cifar(str(tmp_path), n_test=1)
    with pytest.raises(UserError, match='at least two images'):
        build_dataset(cfg(name='interpolated', base=cfg(name='cifar10', path=str(tmp_path))), 'test')
    two = build_dataset(cfg(name='interpolated', base=cfg(name='digits'), seed=0), 'test')
    assert two.data_shape == (1, 8, 8)
