"""Datasets: images (registered in libs/data/datasets.py, one module per family) and stored autoencoder features
(libs/data/feature_store.py), one registry for ``config.dataset.name``; batch augmentations live in
libs/data/augment.py."""
import dataclasses

from libs.data.common import loader_workers
from libs.data.datasets import IMAGE_DATASETS, build_from, class_from
from libs.data.feature_store import ImageNetFeatures, MSCOCOFeatures
from libs.data.latent_format import LatentFormat
from libs.errors import UserError

DATASETS = {
    **IMAGE_DATASETS,
    'imagenet_features': ImageNetFeatures,
    'mscoco_features': MSCOCOFeatures,
}


def build_dataset(cfg, split: str = 'train'):
    """``config.dataset`` (``name`` plus that dataset's keys) -> the dataset of ``split`` ('train' or 'test')."""
    return build_from(DATASETS, cfg, split)


def dataset_class(cfg):
    """The dataset class ``config.dataset.name`` names; an unknown name is one line listing the known ones."""
    return class_from(DATASETS, cfg)


def is_latent(cfg) -> bool:
    """Whether ``config.dataset`` is a store of autoencoder features (the data of a latent model)."""
    return bool(getattr(dataset_class(cfg), 'stores_features', False))


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What sampling and scoring need to know of the data, read from the config (never the training set):
    ``data_shape`` (what the network sees), ``num_classes`` (0: unlabelled), ``fid_stats`` (the default reference
    statistics, '' if none), ``latent_format`` (a LatentFormat when the data are autoencoder latents, else None) and
    ``resolution`` (of the images: the latents' size times the autoencoder's down-sampling factor)."""

    name: str
    data_shape: tuple
    num_classes: int
    fid_stats: str
    latent_format: LatentFormat
    resolution: int

    @property
    def latent(self) -> bool:
        return self.latent_format is not None


def data_spec(cfg, data_shape, latent_format: LatentFormat = None) -> DataSpec:
    """``config.dataset`` for a network taking ``data_shape`` (C, H, W) -> its DataSpec. A latent dataset needs the
    autoencoder's ``latent_format``: the network's channels must be its channels, and ``config.dataset.resolution``,
    when set, the latents' size times its factor (one UserError line naming both sides otherwise)."""
    latent = is_latent(cfg)
    if latent != (latent_format is not None):
        raise ValueError(f'dataset {cfg.name!r} is {"" if latent else "not "}latent: a latent_format is '
                         f'{"needed" if latent else "out of place"}')
    data_shape = tuple(int(v) for v in data_shape)
    resolution = data_shape[-1]
    if latent:
        fmt = latent_format
        if data_shape[0] != fmt.channels:
            raise UserError(f'the network takes {data_shape[0]}-channel latents (config.nnet), but the autoencoder '
                            f'of {fmt.source} gives {fmt.channels} ({fmt.describe()}): set the network\'s input '
                            f'channels to {fmt.channels}, or use the autoencoder the model belongs to')
        resolution *= fmt.factor
        configured = cfg.get('resolution', None)
        if configured and int(configured) != resolution:
            raise UserError(f'config.dataset.resolution is {configured}, but {data_shape[-1]}x{data_shape[-1]} '
                            f'latents (config.nnet) of the autoencoder of {fmt.source} (down-sampling '
                            f'{fmt.factor}) are {resolution}x{resolution} images: set one to match the other')
    num_classes, fid_stats = dataset_class(cfg).describe(cfg, resolution)
    return DataSpec(cfg.name, data_shape, int(num_classes), fid_stats or '', latent_format, resolution)
