"""What every dataset shares: the base class of the image datasets, the split check, what a dataset says about itself
without reading its data, the pixel conversions and resizing of image files, and building one from a registry."""
import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from libs.errors import UserError
from libs.images import from_uint8

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp', '.bmp')


def check_split(name: str, split: str, splits) -> None:
    if split not in splits:
        raise UserError(f"dataset '{name}' has no split '{split}'; known splits: {', '.join(splits)}")


def from_config(cls, cfg, split: str):
    """The dataset ``cls`` of ``split`` from ``config.dataset``: each argument of the constructor from the key of its
    name where the config has it, else the constructor's default (``check_keys`` refuses any other key)."""
    return cls(split=split, **{key: cfg[key] for key in config_keys(cls) if key in cfg})


def describe(cls, cfg, resolution: int):
    """(num_classes, default reference statistics or None) of ``config.dataset`` (a dataset class ``cls``) at
    ``resolution``, from the class attributes ``label_classes`` (None: build the train split to count them),
    ``default_fid_stats`` and ``fid_stats_pattern``; ``config.dataset.fid_stats`` overrides the statistics."""
    fid_stats = cfg.get('fid_stats', None) or cls.default_fid_stats
    if fid_stats is None and cls.fid_stats_pattern:
        fid_stats = cls.fid_stats_pattern.format(int(resolution))
    if cls.label_classes is None:
        return cls.from_config(cfg, 'train').num_classes, fid_stats
    return cls.label_classes, fid_stats


def hwc_to_tensor(arr: np.ndarray) -> torch.Tensor:
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


def read_image(path: str, resolution: int) -> torch.Tensor:
    """An image file -> (3, resolution, resolution) float32 in [-1, 1], through ``crop_and_resize``."""
    with Image.open(path) as img:
        return hwc_to_tensor(crop_and_resize(img, resolution))


def list_images(root: str) -> list:
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
    loop_keys = ()               # config.dataset keys that the training loop reads for this dataset only

    describe = classmethod(describe)
    from_config = classmethod(from_config)

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


def class_from(registry: dict, cfg):
    """The class of ``registry`` that ``config.dataset.name`` names; an unknown name is one line listing the rest."""
    name = cfg.get('name', None)
    if name not in registry:
        raise UserError(f"unknown dataset '{name}' in config.dataset.name; known: {', '.join(sorted(registry))}")
    return registry[name]


def build_from(registry: dict, cfg, split: str):
    """``config.dataset`` (``name`` plus that dataset's keys) -> the dataset of ``split`` from ``registry``."""
    cls = class_from(registry, cfg)
    check_keys(cls, cfg)
    return cls.from_config(cfg, split)


def loader_workers(requested: int) -> int:
    """DataLoader worker processes: ``requested`` (config.train.num_workers), at most the CPUs this process may run
    on (more only compete for them; torch warns)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(0, min(int(requested), cpus))


# Keys of config.dataset that the training loop reads, whatever the dataset.
LOOP_KEYS = ('name', 'random_flip')


def config_keys(cls) -> list:
    """The keys of ``config.dataset`` that dataset ``cls`` takes: its constructor's arguments, the split aside."""
    import inspect
    return [key for key in inspect.signature(cls.__init__).parameters if key not in ('self', 'split')]


def check_keys(cls, cfg) -> None:
    """UserError (one line) for a key of ``config.dataset`` that dataset ``cls`` does not take: ``config_keys``,
    LOOP_KEYS and the class's own ``loop_keys``. Catches a misspelt key, which the free-form section lets through."""
    import difflib
    accepted = set(config_keys(cls)) | set(LOOP_KEYS) | set(cls.loop_keys)
    unknown = sorted(set(cfg.keys()) - accepted)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(accepted), n=1)
        hint = f'; did you mean {close[0]}?' if close else ''
        raise UserError(f"dataset '{cls.name}' takes no key config.dataset.{unknown[0]}{hint} (it takes "
                        f"{', '.join(sorted(accepted))})")
