"""Datasets: images (registered in libs/data/datasets.py, one module per family) and stored autoencoder features
(libs/data/feature_store.py), one registry for ``config.dataset.name``; batch augmentations live in
libs/data/augment.py."""
import dataclasses

from libs.data.common import loader_workers
from libs.data.datasets import IMAGE_DATASETS, build_from
from libs.data.feature_store import ImageNetFeatures, MSCOCOFeatures
from libs.errors import UserError

LATENT_DOWNSAMPLING = 8  # the Stable Diffusion autoencoder: images are 8x the latents' size

DATASETS = {
    **IMAGE_DATASETS,
    'imagenet_features': ImageNetFeatures,
    'mscoco_features': MSCOCOFeatures,
}


def build_dataset(cfg, split: str = 'train'):
    """``config.dataset`` (``name`` plus that dataset's keys) -> the dataset of ``split`` ('train' or 'test')."""
    return build_from(DATASETS, cfg, split)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What sampling and scoring need to know of the data, read from the config alone (never the training set):
    ``data_shape`` (what the network sees), ``num_classes`` (0: unlabelled), ``fid_stats`` (the default reference
    statistics, '' if none), ``latent`` (the data are autoencoder latents) and ``resolution`` (of the images)."""

    name: str
    data_shape: tuple
    num_classes: int
    fid_stats: str
    latent: bool
    resolution: int


def data_spec(cfg, data_shape) -> DataSpec:
    """``config.dataset`` for a network taking ``data_shape`` (C, H, W) -> its DataSpec; an unknown name is one line."""
    name = cfg.get('name', None)
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}' in config.dataset.name; known: {', '.join(sorted(DATASETS))}")
    latent = bool(getattr(DATASETS[name], 'stores_moments', False))
    resolution = int(data_shape[-1]) * (LATENT_DOWNSAMPLING if latent else 1)
    num_classes, fid_stats = DATASETS[name].describe(cfg, resolution)
    return DataSpec(name, tuple(int(v) for v in data_shape), int(num_classes), fid_stats or '', latent, resolution)
