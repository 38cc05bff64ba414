"""Photographs in their releases' layouts: ImageNet (a folder tree or the downsampled npz release, and class
subsets), CelebA, STL-10, SVHN and Tiny ImageNet."""
import os
import zipfile

import numpy as np
import torch
from PIL import Image

from libs.data.common import ImageDataset, check_split, crop_and_resize, hwc_to_tensor, list_images, read_image
from libs.data.npz_images import memory_map_npz_array
from libs.errors import UserError
from libs.images import from_uint8

# The CelebA crop of the U-ViT release (inherited from DDIM / Analytic-DPM): the 128x128 square centred at
# (x, y) = (89, 121) of the 178x218 aligned images, as a PIL box (left, upper, right, lower).
CELEBA_CROP_BOX = (89 - 64, 121 - 64, 89 + 64, 121 + 64)
CELEBA_ALIGNED_SIZE = (178, 218)


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

    def _image(self, index):
        return hwc_to_tensor(self.images[:, :, :, index])


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

    def _image(self, index):
        hwc = np.transpose(self.data[index], (2, 1, 0))
        if self.resolution != 96:
            hwc = crop_and_resize(Image.fromarray(np.ascontiguousarray(hwc)), self.resolution)
        return hwc_to_tensor(hwc)


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
                found = list_images(os.path.join(train_dir, wnid, 'images'))
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
        files, labels = list_images(split_dir), []
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

    def _image(self, index):
        return read_image(self.files[index], self.resolution)


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

    def _image(self, index):
        path = self.files[index]
        with Image.open(path) as img:
            if img.size != CELEBA_ALIGNED_SIZE:
                raise UserError(f'{path} is {img.width}x{img.height}, expected the 178x218 aligned CelebA images: '
                                f'use img_align_celeba.zip, not the in-the-wild release')
            arr = crop_and_resize(img, self.resolution, box=CELEBA_CROP_BOX, resample=Image.BILINEAR,
                                  box_downsample=False)
        return hwc_to_tensor(arr)


def _npz_array(path: str, key: str) -> np.ndarray:
    """Array ``key`` of an .npz file, memory-mapped when stored uncompressed, else read into memory."""
    with zipfile.ZipFile(path) as zf:
        if key + '.npy' not in zf.namelist():
            raise UserError(f"{path} has no array '{key}': use the downsampled-ImageNet npz release")
    mapped = memory_map_npz_array(path, key)
    if mapped is not None:
        return mapped
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
            found = list_images(os.path.join(split_dir, wnid))
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

    def _image(self, index):
        if self.files is not None:
            return read_image(self.files[index], self.resolution)
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
