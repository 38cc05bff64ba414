"""Datasets for the training loop and for FID reference statistics.

Every dataset yields ``(image, label)``: ``image`` a float32 ``(C, H, W)`` tensor in [-1, 1] (8-bit pixels map to
``p / 127.5 - 1``), ``label`` a python int, -1 when the dataset has no labels. ``__getitem__`` is deterministic; random
flips belong to the training loop. Every dataset carries ``name``, ``num_classes`` (0 when unlabeled), ``resolution``,
``channels``, ``data_shape`` = (C, H, W), ``labels`` (int64 array of all labels, -1 when unlabeled) and ``fid_stats``
(path of the reference statistics in the U-ViT release layout, or None; ``config.dataset.fid_stats`` overrides it).
The feature datasets of libs/data/feature_store.py, registered beside these in libs/data/__init__.py, yield stored
autoencoder features instead of images (``stores_features``).

Nothing here downloads: each dataset reads files the user has put in place and says where they belong when missing.

The datasets live in one module per family; this module is their registry (``config.dataset.name`` -> class):
    common.py     ImageDataset (the base class), crop_and_resize, hwc_to_tensor, list_images, class_from, build_from
    folders.py    image_folder: your own images, optionally one subfolder per class
    releases.py   cifar10, cifar100 (python pickles), mnist (idx files)
    digits.py     digits: scikit-learn's bundled 8x8 digits
    photos.py     imagenet64, imagenet32, imagenet_subset, celeba64, stl10, svhn, tinyimagenet
    mscoco.py     mscoco: images and captions
    synthetic.py  interpolated: out-of-distribution mixtures of another dataset
Adding a dataset is a class in its family's module and a line here.
"""
from libs.data.common import IMAGE_EXTENSIONS, ImageDataset, build_from, class_from, crop_and_resize
from libs.data.digits import Digits
from libs.data.folders import ImageFolder
from libs.data.mscoco import MSCOCO
from libs.data.photos import (CELEBA_ALIGNED_SIZE, CELEBA_CROP_BOX, SVHN, STL10, CelebA64, ImageNet32, ImageNet64,
                              ImageNetSubset, TinyImageNet)
from libs.data.releases import Cifar10, Cifar100, Mnist
from libs.data import synthetic

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
    'mscoco': MSCOCO,
    'mnist': Mnist,
}


class Interpolated(synthetic.Interpolated):
    __doc__ = synthetic.Interpolated.__doc__
    bases = IMAGE_DATASETS  # its base is any dataset registered here


IMAGE_DATASETS['interpolated'] = Interpolated

__all__ = ['CELEBA_ALIGNED_SIZE', 'CELEBA_CROP_BOX', 'IMAGE_DATASETS', 'IMAGE_EXTENSIONS', 'MSCOCO', 'STL10', 'SVHN',
           'CelebA64', 'Cifar10', 'Cifar100', 'Digits', 'ImageDataset', 'ImageFolder', 'ImageNet32', 'ImageNet64',
           'ImageNetSubset', 'Interpolated', 'Mnist', 'TinyImageNet', 'build_from', 'class_from', 'crop_and_resize']
