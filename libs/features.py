"""Features extracted once and read at every training step: the Stable Diffusion autoencoder's moments of ImageNet
and MS-COCO images, and the CLIP text features of the MS-COCO captions (latent and text-to-image U-ViT).

A store is ``<root>/<split>/`` with items cut into shards of ``shard_size`` consecutive images::

    shard_00000/moments.npy          (n, 8, h, w) float32  mean | logvar of the centre crop
    shard_00000/moments_flip.npy     (n, 8, h, w) float32  ImageNet with flips: of the mirrored crop
    shard_00000/labels.npy           (n,) int64            ImageNet: class index of the sorted wnid folders
    shard_00000/contexts.npy         (m, 77, D) float32    MS-COCO: CLIP features of every caption of the shard
    shard_00000/caption_offsets.npy  (n + 1,) int64        MS-COCO: image i has contexts[off[i]:off[i + 1]]
    shard_00000/captions.json        list of lists of str  MS-COCO: the caption texts
    manifest.json                    the extraction settings, written first and compared on every re-run
    info.json                        written last, once every shard is complete; readers need it

An MS-COCO root also holds ``empty_context.npy`` (77, D) and ``test_prompts/`` (``prompts.txt`` and
``contexts.npy`` (n, 77, D)). A shard is written as ``shard_XXXXX.tmp/`` and renamed when complete, so an
interrupted extraction resumes where it stopped; under ``accelerate launch`` shard i is written by process
i % num_processes.
"""
import json
import logging
import math
import os
import shutil

import numpy as np
import torch
from torch.utils.data import Dataset

from libs.errors import UserError
from libs.fileio import atomic_open
from libs.text_encoder import DEFAULT_TEXT_ENCODER_DIR as DEFAULT_TEXT_ENCODER

logger = logging.getLogger(__name__)

FORMAT = 1
MANIFEST, INFO = 'manifest.json', 'info.json'
EMPTY_CONTEXT = 'empty_context.npy'
TEST_PROMPTS = 'test_prompts'
DEFAULT_AUTOENCODER = os.path.join('assets', 'stable-diffusion', 'autoencoder_kl.pth')
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}

# Prompts of the sample grids shown during text-to-image training, in the style of MS-COCO captions.
DEFAULT_TEST_PROMPTS = (
    'A red double-decker bus driving down a busy city street.',
    'Two dogs chasing a frisbee across a grassy park.',
    'A bowl of oranges and bananas on a wooden kitchen table.',
    'A surfer riding a large wave in the ocean.',
    'A cat sleeping on the keyboard of an open laptop.',
    'A slice of pepperoni pizza on a white plate next to a glass of water.',
    'A passenger train crossing a bridge over a river at sunset.',
    'People flying colorful kites on a sandy beach.',
    'A giraffe standing beside a tall tree in a zoo.',
    'A small fishing boat tied to a pier below snowy mountains.',
)


def shard_name(index: int) -> str:
    return f'shard_{index:05d}'


def extraction_command(kind: str, root: str, split: str = 'train', source: str = None, resolution: int = None) -> str:
    """The command line that writes (or resumes) the store ``<root>/<split>/``."""
    if kind == 'imagenet':
        command = f'python scripts/extract_imagenet_feature.py --path={source or "<ImageNet>/train"} --out={root}'
    else:
        command = f'python scripts/extract_mscoco_feature.py --path={source or "<coco>"} --split={split} --out={root}'
    return command + (f' --resolution={resolution}' if resolution else '')


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, value) -> None:
    with atomic_open(path, 'w') as f:
        json.dump(value, f, indent=1)


def _save_npy(path: str, array: np.ndarray) -> None:
    with atomic_open(path) as f:
        np.save(f, array)


def _accelerator():
    """This process's rank, process count and device (one process without ``accelerate launch``). An
    ``Accelerator``, as elsewhere in the suite, so that every launcher setting (ACCELERATE_USE_CPU too) applies."""
    from accelerate import Accelerator
    return Accelerator()


def _require_positive(**values) -> None:
    for name, value in values.items():
        if value < 1:
            raise UserError(f'--{name} must be at least 1, got {value}')


# Writing

class _NpyRows:
    """``.npy`` files in a folder, each created at its full length when its first rows arrive and filled in place
    (memory-mapped), so a shard never has to fit in memory."""

    def __init__(self, folder: str):
        self.folder = folder
        self.arrays = {}

    def put(self, name: str, start: int, rows: np.ndarray, total: int) -> None:
        if name not in self.arrays:
            self.arrays[name] = np.lib.format.open_memmap(os.path.join(self.folder, name + '.npy'), mode='w+',
                                                          dtype=rows.dtype, shape=(total,) + rows.shape[1:])
        self.arrays[name][start:start + len(rows)] = rows

    def close(self) -> None:
        for array in self.arrays.values():
            array.flush()
        self.arrays.clear()


def _image_batches(dataset, start: int, stop: int, batch_size: int, num_workers: int):
    """(indices, images (B, 3, R, R) in [-1, 1]) for the items [start, stop) of an image dataset, in order."""
    from torch.utils.data import DataLoader
    batches = [list(range(i, min(i + batch_size, stop))) for i in range(start, stop, batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers)
    for indices, (images, _) in zip(batches, loader):
        yield indices, images


def _moments(autoencoder, images: torch.Tensor) -> np.ndarray:
    return autoencoder.encode_moments(images).float().cpu().numpy()


def _check_manifest(store: str, settings: dict) -> None:
    """A store started with other settings cannot be resumed with these: one line naming what differs."""
    path = os.path.join(store, MANIFEST)
    if not os.path.isfile(path):
        return
    recorded = _read_json(path)
    changed = [f'{key} {recorded.get(key)!r} there, {value!r} now' for key, value in settings.items()
               if recorded.get(key) != value]
    if changed:
        raise UserError(f'{store} holds features extracted with other settings ({"; ".join(changed)}): '
                        f'give another --out, or delete {store} to start over')


def _write_store(store: str, settings: dict, shard_size: int, make_writer, describe) -> dict:
    """Write the shards of ``store`` that are not complete yet, then ``info.json``.

    ``make_writer()`` loads what encoding needs and returns ``write(start, stop, folder, progress)``, which writes
    the files of items [start, stop) into ``folder``; it is called only when this process has shards to write.
    ``describe(store)`` gives the kind-specific entries of info.json. Returns what this process did.
    """
    from tqdm.auto import tqdm

    state = _accelerator()
    num_images = settings['num_images']
    num_shards = math.ceil(num_images / shard_size)
    _check_manifest(store, settings)  # every process, so that all of them stop on a mismatch
    if state.is_main_process and not os.path.isfile(os.path.join(store, MANIFEST)):
        _write_json(os.path.join(store, MANIFEST), settings)

    mine = range(state.process_index, num_shards, state.num_processes)
    for shard in mine:  # what an interrupted run of this process left half-written
        leftover = os.path.join(store, shard_name(shard) + '.tmp')
        if os.path.isdir(leftover):
            shutil.rmtree(leftover)
    missing = [shard for shard in range(num_shards) if not os.path.isdir(os.path.join(store, shard_name(shard)))]
    pending = [shard for shard in missing if shard % state.num_processes == state.process_index]
    images_done = 0
    if missing:  # every process loads the encoders, so that a missing file stops all of them
        write = make_writer()
        total = sum(min(shard_size, num_images - shard * shard_size) for shard in pending)
        with tqdm(total=total, unit='img', desc=f'extracting {os.path.basename(store)}',
                  disable=not state.is_main_process) as progress:
            for shard in pending:
                start, stop = shard * shard_size, min((shard + 1) * shard_size, num_images)
                folder = os.path.join(store, shard_name(shard))
                os.makedirs(folder + '.tmp')
                write(start, stop, folder + '.tmp', progress)
                os.replace(folder + '.tmp', folder)
                images_done += stop - start
    state.wait_for_everyone()

    for shard in range(num_shards):  # every process checks, so that all of them stop on a bad shard
        expected = min(shard_size, num_images - shard * shard_size)
        path = os.path.join(store, shard_name(shard), 'moments.npy')
        if not os.path.isfile(path) or len(np.load(path, mmap_mode='r')) != expected:
            raise UserError(f'{os.path.dirname(path)} is not a complete shard of {expected} images: delete it '
                            f'and run the extraction again')
    if state.is_main_process:
        moments_shape = np.load(os.path.join(store, shard_name(0), 'moments.npy'), mmap_mode='r').shape[1:]
        info = dict(settings, num_shards=num_shards,
                    latent_shape=[moments_shape[0] // 2, moments_shape[1], moments_shape[2]], **describe(store))
        _write_json(os.path.join(store, INFO), info)
        logger.info('%s: %d images in %d shards, complete (%d of them written now)', store, num_images,
                    num_shards, len(missing))
    state.wait_for_everyone()
    return {'store': store, 'num_shards': num_shards, 'shards_written': len(pending), 'images_encoded': images_done}


def _load_autoencoder(path: str, dtype: str, device):
    from libs.autoencoder import load_autoencoder
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; known: {', '.join(DTYPES)}")
    return load_autoencoder(path, device, DTYPES[dtype])


def extract_imagenet(path: str, out: str, resolution: int = 256, autoencoder: str = DEFAULT_AUTOENCODER,
                     flip: bool = True, batch_size: int = 64, shard_size: int = 10000, num_workers: int = 4,
                     dtype: str = 'fp32') -> dict:
    """Moments of the ImageNet training images ``path/<wnid>/*`` (centre crops at ``resolution``, and of their
    mirror images with ``flip``) and their labels, into ``out/train/``."""
    from libs.data import ImageFolder  # libs.data imports this module for its registry

    _require_positive(resolution=resolution, batch_size=batch_size, shard_size=shard_size)
    if not os.path.isdir(path) or not any(os.path.isdir(os.path.join(path, d)) for d in os.listdir(path)):
        raise UserError(f'no ImageNet class folders at {path}: give --path=<ImageNet>/train, the folder that holds '
                        f'<wnid>/*.JPEG')
    dataset = ImageFolder(path, int(resolution), labels_from_subfolders=True)
    settings = dict(format=FORMAT, kind='imagenet', split='train', resolution=int(resolution), flip=bool(flip),
                    source=os.path.abspath(path), autoencoder=os.path.abspath(autoencoder), dtype=dtype,
                    shard_size=int(shard_size), num_images=len(dataset))

    def make_writer():
        encoder = _load_autoencoder(autoencoder, dtype, _accelerator().device)

        def write(start, stop, folder, progress):
            files = _NpyRows(folder)
            for indices, images in _image_batches(dataset, start, stop, batch_size, num_workers):
                files.put('moments', indices[0] - start, _moments(encoder, images), stop - start)
                if flip:
                    files.put('moments_flip', indices[0] - start, _moments(encoder, images.flip(3)), stop - start)
                progress.update(len(indices))
            files.close()
            np.save(os.path.join(folder, 'labels.npy'), dataset.labels[start:stop].astype(np.int64))
        return write

    return _write_store(os.path.join(out, 'train'), settings, int(shard_size), make_writer,
                        lambda store: {'num_classes': dataset.num_classes})


def extract_mscoco(path: str, out: str, split: str = 'train', resolution: int = 256,
                   autoencoder: str = DEFAULT_AUTOENCODER, text_encoder: str = DEFAULT_TEXT_ENCODER,
                   batch_size: int = 64, shard_size: int = 1000, num_workers: int = 4, dtype: str = 'fp32') -> dict:
    """Moments of the MS-COCO 2014 images of ``split`` (centre crops at ``resolution``) and CLIP features of all
    their captions, into ``out/<split>/``."""
    from libs.data import MSCOCO  # libs.data imports this module for its registry

    _require_positive(resolution=resolution, batch_size=batch_size, shard_size=shard_size)
    dataset = MSCOCO(path, split, int(resolution))
    settings = dict(format=FORMAT, kind='mscoco', split=split, resolution=int(resolution), flip=False,
                    source=os.path.abspath(path), autoencoder=os.path.abspath(autoencoder),
                    text_encoder=os.path.abspath(text_encoder), dtype=dtype, shard_size=int(shard_size),
                    num_images=len(dataset), num_captions=sum(len(c) for c in dataset.captions))

    def make_writer():
        from libs.text_encoder import load_text_encoder
        device = _accelerator().device
        images_encoder = _load_autoencoder(autoencoder, dtype, device)
        captions_encoder = load_text_encoder(text_encoder, device)

        def write(start, stop, folder, progress):
            captions = dataset.captions[start:stop]
            offsets = np.cumsum([0] + [len(c) for c in captions]).astype(np.int64)
            files = _NpyRows(folder)
            for indices, images in _image_batches(dataset, start, stop, batch_size, num_workers):
                first = indices[0] - start
                files.put('moments', first, _moments(images_encoder, images), stop - start)
                texts = [caption for i in indices for caption in dataset.captions[i]]
                files.put('contexts', int(offsets[first]), captions_encoder.encode(texts).cpu().numpy(),
                          int(offsets[-1]))
                progress.update(len(indices))
            files.close()
            np.save(os.path.join(folder, 'caption_offsets.npy'), offsets)
            with open(os.path.join(folder, 'captions.json'), 'w') as f:
                json.dump(captions, f)
        return write

    def describe(store):
        contexts = np.load(os.path.join(store, shard_name(0), 'contexts.npy'), mmap_mode='r')
        return {'context_shape': list(contexts.shape[1:])}

    return _write_store(os.path.join(out, split), settings, int(shard_size), make_writer, describe)


def read_prompts(path: str) -> list:
    """The non-empty lines of a text file, one prompt each."""
    if not os.path.isfile(path):
        raise UserError(f'prompt file not found at {path}: give a text file with one prompt per line')
    with open(path, encoding='utf-8') as f:
        prompts = [line.strip() for line in f if line.strip()]
    if not prompts:
        raise UserError(f'{path} holds no prompts: write one prompt per line')
    return prompts


def extract_test_prompts(out: str, prompts_file: str = None, text_encoder: str = DEFAULT_TEXT_ENCODER,
                         batch_size: int = 64) -> str:
    """CLIP features of the sample-grid prompts (``prompts_file``, else ``DEFAULT_TEST_PROMPTS``) into
    ``out/test_prompts/``; returns that folder."""
    from libs.text_encoder import encode_in_batches, load_text_encoder

    _require_positive(batch_size=batch_size)
    prompts = read_prompts(prompts_file) if prompts_file else list(DEFAULT_TEST_PROMPTS)
    state = _accelerator()
    contexts = encode_in_batches(load_text_encoder(text_encoder, state.device), prompts, batch_size)
    folder = os.path.join(out, TEST_PROMPTS)
    if state.is_main_process:
        with atomic_open(os.path.join(folder, 'prompts.txt'), 'w') as f:
            f.write(''.join(prompt + '\n' for prompt in prompts))
        _save_npy(os.path.join(folder, 'contexts.npy'), contexts.numpy())
        logger.info('wrote %d test prompts and their CLIP features %s to %s/', len(prompts),
                    tuple(contexts.shape), folder)
    state.wait_for_everyone()
    return folder


def extract_empty_context(out: str, text_encoder: str = DEFAULT_TEXT_ENCODER) -> str:
    """CLIP features (77, D) of the empty prompt, the "no text" condition of classifier-free guidance, into
    ``out/empty_context.npy``; returns that path."""
    from libs.text_encoder import load_text_encoder

    state = _accelerator()
    context = load_text_encoder(text_encoder, state.device).empty_context().cpu().numpy()
    path = os.path.join(out, EMPTY_CONTEXT)
    if state.is_main_process:
        _save_npy(path, context)
        logger.info('wrote the CLIP features %s of the empty prompt to %s', context.shape, path)
    state.wait_for_everyone()
    return path


# Reading

def _check_split(name: str, split: str, splits) -> None:
    if split not in splits:
        raise UserError(f"dataset '{name}' has no split '{split}'; known splits: {', '.join(splits)}")


def read_info(root: str, split: str, kind: str) -> dict:
    """info.json of the complete store ``<root>/<split>/`` of ``kind``; a missing or incomplete store is one
    UserError line with the command that extracts (or resumes) it."""
    store = os.path.join(root, split)
    path = os.path.join(store, INFO)
    if not os.path.isfile(path):
        manifest = os.path.join(store, MANIFEST)
        if os.path.isfile(manifest):
            recorded = _read_json(manifest)
            command = extraction_command(kind, root, split, recorded.get('source'), recorded.get('resolution'))
            raise UserError(f'the feature store {store} is incomplete (no {INFO}): finish it with `{command}` '
                            f'(it resumes where it stopped)')
        raise UserError(f'no {kind} features at {store}: extract them with `{extraction_command(kind, root, split)}`')
    info = _read_json(path)
    if info.get('format') != FORMAT or info.get('kind') != kind:
        raise UserError(f'{path} describes {info.get("kind")!r} features of format {info.get("format")!r}, '
                        f'expected {kind!r} of format {FORMAT}: point config.dataset.path at a {kind} feature store')
    return info


class FeatureDataset(Dataset):
    """Common part of the feature datasets: a complete store read lazily, shard arrays memory-mapped on first use.

    Follows the conventions of libs/data.py, except that items hold autoencoder moments, not images:
    ``stores_moments``; ``data_shape`` = ``latent_shape`` = (4, h, w), what the diffusion model sees;
    ``moments_shape`` = (8, h, w); ``image_shape`` = (3, resolution, resolution).
    """

    name = ''
    kind = ''
    splits = ()
    fid_stats_pattern = None
    stores_moments = True

    def __init__(self, path: str, split: str, resolution: int = None, fid_stats=None):
        _check_split(self.name, split, self.splits)
        self.root, self.split = path, split
        self.store = os.path.join(path, split)
        self.info = read_info(path, split, self.kind)
        self.resolution = int(self.info['resolution'])
        if resolution is not None and int(resolution) != self.resolution:
            raise UserError(f'{self.store} holds features of {self.resolution}x{self.resolution} images, but '
                            f'config.dataset.resolution is {resolution}: point config.dataset.path at the '
                            f'{resolution}x{resolution} features or fix the resolution')
        self.latent_shape = tuple(int(v) for v in self.info['latent_shape'])
        self.channels = self.latent_shape[0]
        self.moments_shape = (2 * self.channels,) + self.latent_shape[1:]
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

    def _moments(self, image: int, name: str = 'moments') -> torch.Tensor:
        shard, row = divmod(image, self.shard_size)
        return torch.from_numpy(np.array(self._array(shard, name)[row], dtype=np.float32))

    def _shard_sizes(self) -> list:
        return [min(self.shard_size, self.num_images - s * self.shard_size) for s in range(self.num_shards)]

    def __getstate__(self):
        # Memory maps would be pickled as their whole content; DataLoader workers reopen what they read.
        state = dict(self.__dict__)
        state['_arrays'] = {}
        return state

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(store={self.store!r}, n={len(self)}, data_shape={self.data_shape}, '
                f'num_classes={self.num_classes})')


class ImageNetFeatures(FeatureDataset):
    """Class-conditional ImageNet moments: items 0..n-1 are (moments (8, h, w) float32, label) of the centre crops;
    when extracted with flips, items n..2n-1 are those of their mirror images, with the same labels."""

    name = 'imagenet_features'
    kind = 'imagenet'
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

    @classmethod
    def from_config(cls, cfg, split):
        return cls(cfg.get('path', 'assets/datasets/imagenet256_features'), split,
                   resolution=cfg.get('resolution', None), fid_stats=cfg.get('fid_stats', None))

    def __getitem__(self, index: int):
        index = self._index(index)
        image = index % self.num_images
        moments = self._moments(image, 'moments_flip' if index >= self.num_images else 'moments')
        return moments, int(self.labels[index])


class MSCOCOFeatures(FeatureDataset):
    """MS-COCO 2014 text-to-image features, one item per caption: (moments (8, h, w) of its image, its CLIP
    context (77, D)), both float32. Unlabeled (``num_classes`` 0, labels -1); ``context_shape`` = (77, D)."""

    name = 'mscoco_features'
    kind = 'mscoco'
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

    @classmethod
    def from_config(cls, cfg, split):
        return cls(cfg.get('path', 'assets/datasets/mscoco256_features'), split,
                   resolution=cfg.get('resolution', None), fid_stats=cfg.get('fid_stats', None))

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
        return self._moments(image), torch.from_numpy(context)

    def empty_context(self) -> torch.Tensor:
        """CLIP features (77, D) of the empty prompt, from ``<root>/empty_context.npy``."""
        path = os.path.join(self.root, EMPTY_CONTEXT)
        if not os.path.isfile(path):
            raise UserError(f'no empty-prompt context at {path}: write it with '
                            f'`python scripts/extract_empty_feature.py --out={self.root}`')
        context = np.load(path)
        if context.shape != self.context_shape:
            raise UserError(f'{path} has shape {context.shape}, but the captions of {self.store} have '
                            f'{self.context_shape}: write it again with the same text encoder')
        return torch.from_numpy(context.astype(np.float32))

    def test_prompts(self):
        """The sample-grid prompts and their CLIP features: (list of n str, (n, 77, D) float32 tensor)."""
        folder = os.path.join(self.root, TEST_PROMPTS)
        paths = os.path.join(folder, 'prompts.txt'), os.path.join(folder, 'contexts.npy')
        if not all(os.path.isfile(p) for p in paths):
            raise UserError(f'no test prompts in {folder}/: write them with '
                            f'`python scripts/extract_test_prompt_feature.py --out={self.root}`')
        with open(paths[0], encoding='utf-8') as f:
            prompts = [line.rstrip('\n') for line in f]
        contexts = np.load(paths[1])
        if len(contexts) != len(prompts) or contexts.shape[1:] != self.context_shape:
            raise UserError(f'{folder}/ holds {len(prompts)} prompts and contexts of shape {contexts.shape}, '
                            f'expected {len(prompts)} x {self.context_shape}: write them again')
        return prompts, torch.from_numpy(contexts.astype(np.float32))
