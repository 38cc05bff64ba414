"""Feature stores: features extracted once (libs/latent/extract.py) and read at every training step: an
autoencoder's features of ImageNet and MS-COCO images, and the CLIP text features of the MS-COCO captions (latent and
text-to-image models).

A store is ``<root>/<split>/`` with items cut into shards of ``shard_size`` consecutive images; what it holds of the
autoencoder's code z is ``info.json``'s ``stored`` (libs/data/latent_format.py), moments of a Gaussian encoder
(Stable Diffusion's, SD3's, FLUX's) or the deterministic codes of DC-AE::

    shard_00000/moments.npy          (n, 2C, h, w) float32 stored 'moments': mean | logvar of the centre crop
    shard_00000/latents.npy          (n, C, h, w) float32  stored 'latents': z of the centre crop
    shard_00000/<stored>_flip.npy    as above              ImageNet with flips: of the mirrored crop
    shard_00000/labels.npy           (n,) int64            ImageNet: class index of the sorted wnid folders
    shard_00000/contexts.npy         (m, 77, D) float32    MS-COCO: CLIP features of every caption of the shard
    shard_00000/caption_offsets.npy  (n + 1,) int64        MS-COCO: image i has contexts[off[i]:off[i + 1]]
    shard_00000/captions.json        list of lists of str  MS-COCO: the caption texts
    manifest.json                    the extraction settings, written first and compared on every re-run
    info.json                        written last, once every shard is complete; readers need it. With the
                                     autoencoder's LatentFormat: autoencoder_class, latent_channels, downsampling,
                                     scaling_factor, shift_factor, stored (a store without them, written before
                                     they were recorded, holds Stable Diffusion moments)

An MS-COCO root also holds ``empty_context.npy`` (77, D) and ``test_prompts/`` (``prompts.txt`` and
``contexts.npy`` (n, 77, D)). A shard is written as ``shard_XXXXX.tmp/`` and renamed when complete, so an
interrupted extraction resumes where it stopped; under ``accelerate launch`` shard i is written by process
i % num_processes.

REPA on latents (libs/training/repa.py) needs the images the latents came from: ``store.with_source_images()``
yields (features, target, image) with the image read from the folder the store was extracted from (``source`` in
info.json, or ``config.dataset.source_path`` if it moved), cropped as the extraction cropped it and mirrored for the
mirrored items, so the encoder sees exactly what the autoencoder saw. Item i of a store is image i of that folder in
the extraction's order; the count (and ImageNet's labels) are checked against the store. This costs no storage
(ImageNet's DINOv2-B tokens with mirrors would take 2 x 1.28M x 256 x 768 x 2 bytes = 1.0 TB in fp16) but loader
time: each step decodes and crops the batch's JPEGs, as the extraction did once.
"""
import json
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from libs.data.common import check_split, describe, from_config
from libs.data.latent_format import LatentFormat
from libs.errors import UserError

FORMAT = 1
MANIFEST, INFO = 'manifest.json', 'info.json'
EMPTY_CONTEXT = 'empty_context.npy'
TEST_PROMPTS = 'test_prompts'


def shard_name(index: int) -> str:
    return f'shard_{index:05d}'


def extraction_command(kind: str, root: str, split: str = 'train', source: str = None, resolution: int = None) -> str:
    """The command line that writes (or resumes) the store ``<root>/<split>/``."""
    if kind == 'imagenet':
        command = f'python scripts/extract_imagenet_feature.py --path={source or "<ImageNet>/train"} --out={root}'
    else:
        command = f'python scripts/extract_mscoco_feature.py --path={source or "<coco>"} --split={split} --out={root}'
    return command + (f' --resolution={resolution}' if resolution else '')


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def read_info(root: str, split: str, kind: str) -> dict:
    """info.json of the complete store ``<root>/<split>/`` of ``kind``; a missing or incomplete store is one
    UserError line with the command that extracts (or resumes) it."""
    store = os.path.join(root, split)
    path = os.path.join(store, INFO)
    if not os.path.isfile(path):
        manifest = os.path.join(store, MANIFEST)
        if os.path.isfile(manifest):
            recorded = read_json(manifest)
            command = extraction_command(kind, root, split, recorded.get('source'), recorded.get('resolution'))
            raise UserError(f'the feature store {store} is incomplete (no {INFO}): finish it with `{command}` '
                            f'(it resumes where it stopped)')
        raise UserError(f'no {kind} features at {store}: extract them with `{extraction_command(kind, root, split)}`')
    info = read_json(path)
    if info.get('format') != FORMAT or info.get('kind') != kind:
        raise UserError(f'{path} describes {info.get("kind")!r} features of format {info.get("format")!r}, '
                        f'expected {kind!r} of format {FORMAT}: point config.dataset.path at a {kind} feature store')
    return info


class FeatureDataset(Dataset):
    """Common part of the feature datasets: a complete store read lazily, shard arrays memory-mapped on first use.

    Follows the conventions of libs/data/datasets.py, except that items hold autoencoder features, not images:
    ``stores_features``; ``latent_format`` (a LatentFormat) says which and how they become latents;
    ``data_shape`` = ``latent_shape`` = (C, h, w), what the diffusion model sees; ``features_shape`` = (2C, h, w)
    for moments, (C, h, w) for latents; ``image_shape`` = (3, resolution, resolution).
    """

    name = ''
    kind = ''
    splits = ()
    fid_stats_pattern = None
    default_fid_stats = None
    label_classes = 0
    has_contexts = False
    stores_features = True
    loop_keys = ('source_path',)  # config.dataset keys the training loop reads for this dataset (REPA's images)
    describe = classmethod(describe)
    from_config = classmethod(from_config)  # the constructor's arguments from config.dataset, as the image datasets'

    def __init__(self, path: str, split: str, resolution: int = None, fid_stats=None):
        check_split(self.name, split, self.splits)
        self.root, self.split = path, split
        self.store = os.path.join(path, split)
        self.info = read_info(path, split, self.kind)
        self.resolution = int(self.info['resolution'])
        if resolution is not None and int(resolution) != self.resolution:
            raise UserError(f'{self.store} holds features of {self.resolution}x{self.resolution} images, but '
                            f'config.dataset.resolution is {resolution}: point config.dataset.path at the '
                            f'{resolution}x{resolution} features or fix the resolution')
        self.latent_shape = tuple(int(v) for v in self.info['latent_shape'])
        self.latent_format = LatentFormat.from_info(self.info, self.store)
        self.channels = self.latent_shape[0]
        self.features_shape = (self.latent_format.stored_channels,) + self.latent_shape[1:]
        self.image_shape = (3, self.resolution, self.resolution)
        self.num_images = int(self.info['num_images'])
        self.shard_size = int(self.info['shard_size'])
        self.num_shards = int(self.info['num_shards'])
        self.fid_stats = fid_stats if fid_stats is not None else self.fid_stats_pattern.format(self.resolution)
        self._arrays = {}

    @property
    def data_shape(self):
        return self.latent_shape

    def __len__(self) -> int:
        return len(self.labels)

    def _index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f'index {index} out of range for {self.name} ({len(self)} items)')
        return index % len(self)

    def _array(self, shard: int, name: str) -> np.ndarray:
        key = (shard, name)
        if key not in self._arrays:
            path = os.path.join(self.store, shard_name(shard), name + '.npy')
            if not os.path.isfile(path):
                raise UserError(f'{path} is missing from the feature store: extract it again with '
                                f'`{extraction_command(self.kind, self.root, self.split, self.info.get("source"))}`')
            self._arrays[key] = np.load(path, mmap_mode='r')
        return self._arrays[key]

    def _features(self, image: int, flipped: bool = False) -> torch.Tensor:
        shard, row = divmod(image, self.shard_size)
        name = self.latent_format.stored + ('_flip' if flipped else '')
        return torch.from_numpy(np.array(self._array(shard, name)[row], dtype=np.float32))

    def _shard_sizes(self) -> list:
        return [min(self.shard_size, self.num_images - s * self.shard_size) for s in range(self.num_shards)]

    def __getstate__(self):
        # Memory maps would be pickled as their whole content; DataLoader workers reopen what they read.
        state = dict(self.__dict__)
        state['_arrays'] = {}
        return state

    def with_source_images(self, source_path: str = '') -> 'WithSourceImages':
        """This store's items with their source images (module docstring); ``source_path`` '' : info.json's."""
        return WithSourceImages(self, source_path)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(store={self.store!r}, n={len(self)}, data_shape={self.data_shape}, '
                f'num_classes={self.num_classes})')


class ImageNetFeatures(FeatureDataset):
    """Class-conditional ImageNet features: items 0..n-1 are (features (2C or C, h, w) float32, label) of the centre
    crops; when extracted with flips, items n..2n-1 are those of their mirror images, with the same labels."""

    name = 'imagenet_features'
    kind = 'imagenet'
    label_classes = 1000
    default_path = 'assets/datasets/imagenet256_features'

    @classmethod
    def describe(cls, cfg, resolution: int):
        """The class count of the store's info.json when the store is there (a class subset has fewer), else
        ImageNet's 1000: evaluating a released checkpoint needs no features."""
        num_classes, fid_stats = describe(cls, cfg, resolution)
        path = cfg.get('path', cls.default_path)
        if os.path.isfile(os.path.join(path, 'train', INFO)):
            num_classes = int(read_info(path, 'train', cls.kind)['num_classes'])
        return num_classes, fid_stats
    splits = ('train',)
    fid_stats_pattern = 'assets/fid_stats/fid_stats_imagenet{}_guided_diffusion.npz'

    def __init__(self, path: str = 'assets/datasets/imagenet256_features', split: str = 'train',
                 resolution: int = None, fid_stats=None):
        super().__init__(path, split, resolution, fid_stats)
        self.num_classes = int(self.info['num_classes'])
        self.flip = bool(self.info['flip'])
        labels = []
        for shard, size in enumerate(self._shard_sizes()):
            shard_labels = np.asarray(self._array(shard, 'labels'), dtype=np.int64)
            if len(shard_labels) != size:
                raise UserError(f'{os.path.join(self.store, shard_name(shard))} holds {len(shard_labels)} labels, '
                                f'expected {size}: delete it and run the extraction again')
            labels.append(shard_labels)
        self._arrays.clear()
        labels = np.concatenate(labels)
        self.labels = np.concatenate([labels, labels]) if self.flip else labels

    def __getitem__(self, index: int):
        index = self._index(index)
        image = index % self.num_images
        return self._features(image, flipped=index >= self.num_images), int(self.labels[index])

    def source_images(self, path: str):
        """The image dataset the store was extracted from, as extract_imagenet read it."""
        from libs.data.datasets import ImageFolder
        images = ImageFolder(path, self.resolution, labels_from_subfolders=True)
        if len(images) != self.num_images or not np.array_equal(images.labels, self.labels[:self.num_images]):
            raise UserError(f'{path} holds {len(images)} images in other classes or another order than the '
                            f'{self.num_images} of {self.store}: point config.dataset.source_path at the folder '
                            f'it was extracted from')
        return images

    def source_index(self, index: int):
        """(the source image of item ``index``, whether the item is its mirror image)."""
        index = self._index(index)
        return index % self.num_images, index >= self.num_images


class MSCOCOFeatures(FeatureDataset):
    """MS-COCO 2014 text-to-image features, one item per caption: (autoencoder features of its image, its CLIP
    context (77, D)), both float32. Unlabeled (``num_classes`` 0, labels -1); ``context_shape`` = (77, D)."""

    name = 'mscoco_features'
    kind = 'mscoco'
    has_contexts = True
    default_path = 'assets/datasets/mscoco256_features'
    splits = ('train', 'val')
    fid_stats_pattern = 'assets/fid_stats/fid_stats_mscoco{}_val.npz'

    def __init__(self, path: str = 'assets/datasets/mscoco256_features', split: str = 'train',
                 resolution: int = None, fid_stats=None):
        super().__init__(path, split, resolution, fid_stats)
        self.context_shape = tuple(int(v) for v in self.info['context_shape'])
        self.num_classes = 0
        self._offsets = []  # per shard: caption_offsets, (n + 1,)
        for shard, size in enumerate(self._shard_sizes()):
            offsets = np.array(self._array(shard, 'caption_offsets'), dtype=np.int64)
            if len(offsets) != size + 1:
                raise UserError(f'{os.path.join(self.store, shard_name(shard))} has {len(offsets) - 1} caption '
                                f'offsets for {size} images: delete it and run the extraction again')
            self._offsets.append(offsets)
        self._arrays.clear()
        self._caption_starts = np.cumsum([0] + [int(o[-1]) for o in self._offsets])  # first caption of each shard
        self.labels = np.full(int(self._caption_starts[-1]), -1, dtype=np.int64)

    def _locate(self, index: int):
        """Caption ``index`` -> (its shard, its row in the shard's contexts, its image 0..num_images-1)."""
        index = self._index(index)
        shard = int(np.searchsorted(self._caption_starts, index, side='right')) - 1
        row = index - int(self._caption_starts[shard])
        image = shard * self.shard_size + int(np.searchsorted(self._offsets[shard], row, side='right')) - 1
        return shard, row, image

    def image_index(self, index: int) -> int:
        """The image (0..num_images-1) that caption ``index`` describes."""
        return self._locate(index)[2]

    def __getitem__(self, index: int):
        shard, row, image = self._locate(index)
        context = np.array(self._array(shard, 'contexts')[row], dtype=np.float32)
        return self._features(image), torch.from_numpy(context)

    def source_images(self, path: str):
        """The MS-COCO images the store was extracted from, as extract_mscoco read them."""
        from libs.data.datasets import MSCOCO
        images = MSCOCO(path, self.split, self.resolution)
        if len(images) != self.num_images:
            raise UserError(f'{path} holds {len(images)} {self.split} images, {self.store} was extracted from '
                            f'{self.num_images}: point config.dataset.source_path at the folder it was extracted from')
        return images

    def source_index(self, index: int):
        return self.image_index(index), False

    def empty_context(self) -> torch.Tensor:
        """CLIP features (77, D) of the empty prompt, from ``<root>/empty_context.npy``."""
        return read_empty_context(self.root, self.context_shape)

    def test_prompts(self):
        """The sample-grid prompts and their CLIP features: (list of n str, (n, 77, D) float32 tensor)."""
        return read_test_prompts(self.root, self.context_shape)


class WithSourceImages(Dataset):
    """A feature store's items with the image each was extracted from: (features, target, image (3, R, R) in
    [-1, 1]), the image mirrored when the item is a mirrored one. Other attributes are the store's."""

    def __init__(self, store: FeatureDataset, source_path: str = ''):
        self.store = store
        path = source_path or store.info.get('source', '')
        if not path or not os.path.isdir(path):
            raise UserError(f'{store.store} was extracted from {path or "a folder it does not record"}, which is not '
                            f'there; REPA reads the images beside the latents: put them back or set '
                            f'config.dataset.source_path')
        self.images = store.source_images(path)

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int):
        features, target = self.store[index]
        source, mirrored = self.store.source_index(index)
        image = self.images[source][0]
        return features, target, image.flip(-1) if mirrored else image

    def __getattr__(self, name):
        if name in ('store', 'images'):  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.store, name)


def read_empty_context(root: str, context_shape=None) -> torch.Tensor:
    """CLIP features (77, D) of the empty prompt, from ``<root>/empty_context.npy`` (checked against the captions'
    ``context_shape`` when given)."""
    path = os.path.join(root, EMPTY_CONTEXT)
    if not os.path.isfile(path):
        raise UserError(f'no empty-prompt context at {path}: write it with '
                        f'`python scripts/extract_empty_feature.py --out={root}`')
    context = np.load(path)
    if context_shape is not None and context.shape != tuple(context_shape):
        raise UserError(f'{path} has shape {context.shape}, but the captions of {root} have '
                        f'{tuple(context_shape)}: write it again with the same text encoder')
    return torch.from_numpy(context.astype(np.float32))


def read_test_prompts(root: str, context_shape=None):
    """The sample-grid prompts of ``<root>/test_prompts/`` and their CLIP features: (list of n str, (n, 77, D))."""
    folder = os.path.join(root, TEST_PROMPTS)
    paths = os.path.join(folder, 'prompts.txt'), os.path.join(folder, 'contexts.npy')
    if not all(os.path.isfile(p) for p in paths):
        raise UserError(f'no test prompts in {folder}/: write them with '
                        f'`python scripts/extract_test_prompt_feature.py --out={root}`')
    with open(paths[0], encoding='utf-8') as f:
        prompts = [line.rstrip('\n') for line in f]
    contexts = np.load(paths[1])
    if len(contexts) != len(prompts) or (context_shape is not None and contexts.shape[1:] != tuple(context_shape)):
        raise UserError(f'{folder}/ holds {len(prompts)} prompts and contexts of shape {contexts.shape}, '
                        f'expected {len(prompts)} x {context_shape}: write them again')
    return prompts, torch.from_numpy(contexts.astype(np.float32))
