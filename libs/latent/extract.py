"""Feature extraction: the autoencoder's features of ImageNet and MS-COCO images (the moments of a Gaussian encoder
such as Stable Diffusion's, or the codes of a deterministic one such as DC-AE), and the CLIP text features of the
MS-COCO captions (latent and text-to-image models), written once into the stores that libs/data/feature_store.py
reads at every training step (the layout is described there).

Shards are written as ``shard_XXXXX.tmp/`` and renamed when complete, so an interrupted extraction resumes where it
stopped; ``manifest.json`` (the settings) is written first and compared on every re-run, ``info.json`` last. Under
``accelerate launch`` shard i is written by process i % num_processes.
"""
import json
import logging
import math
import os
import shutil

import numpy as np
import torch

from libs.data.common import loader_workers
from libs.data.feature_store import EMPTY_CONTEXT, FORMAT, INFO, MANIFEST, TEST_PROMPTS, read_json, shard_name
from libs.errors import UserError
from libs.fileio import atomic_open
from libs.latent.text_encoder import DEFAULT_TEXT_ENCODER_DIR as DEFAULT_TEXT_ENCODER

logger = logging.getLogger(__name__)

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
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=loader_workers(num_workers))
    for indices, (images, _) in zip(batches, loader):
        yield indices, images


def _features(autoencoder, images: torch.Tensor) -> np.ndarray:
    return autoencoder.encode_features(images).float().cpu().numpy()


def _check_manifest(store: str, settings: dict) -> None:
    """A store started with other settings cannot be resumed with these: one line naming what differs."""
    path = os.path.join(store, MANIFEST)
    if not os.path.isfile(path):
        return
    recorded = read_json(path)
    changed = [f'{key} {recorded.get(key)!r} there, {value!r} now' for key, value in settings.items()
               if recorded.get(key) != value]
    if changed:
        raise UserError(f'{store} holds features extracted with other settings ({"; ".join(changed)}): '
                        f'give another --out, or delete {store} to start over')


def _write_store(store: str, settings: dict, shard_size: int, fmt, make_writer, describe) -> dict:
    """Write the shards of ``store`` that are not complete yet, then ``info.json``.

    ``fmt``: the autoencoder's LatentFormat (its features are ``<fmt.stored>.npy``; info.json records it).
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
        path = os.path.join(store, shard_name(shard), fmt.stored + '.npy')
        if not os.path.isfile(path) or len(np.load(path, mmap_mode='r')) != expected:
            raise UserError(f'{os.path.dirname(path)} is not a complete shard of {expected} images: delete it '
                            f'and run the extraction again')
    if state.is_main_process:
        stored_shape = np.load(os.path.join(store, shard_name(0), fmt.stored + '.npy'), mmap_mode='r').shape[1:]
        info = dict(settings, num_shards=num_shards, latent_shape=[fmt.channels, stored_shape[1], stored_shape[2]],
                    **fmt.info(), **describe(store))
        _write_json(os.path.join(store, INFO), info)
        logger.info('%s: %d images in %d shards, complete (%d of them written now)', store, num_images,
                    num_shards, len(missing))
    state.wait_for_everyone()
    return {'store': store, 'num_shards': num_shards, 'shards_written': len(pending), 'images_encoded': images_done}


def _autoencoder_format(path: str, dtype: str):
    """The autoencoder's LatentFormat from its config alone, so that a missing or unknown autoencoder and a bad
    dtype stop the extraction before it writes anything."""
    from libs.latent.autoencoder import autoencoder_format
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; known: {', '.join(DTYPES)}")
    return autoencoder_format(path)


def _load_autoencoder(path: str, dtype: str, device):
    from libs.latent.autoencoder import load_autoencoder
    return load_autoencoder(path, device, DTYPES[dtype])


def extract_imagenet(path: str, out: str, resolution: int = 256, autoencoder: str = DEFAULT_AUTOENCODER,
                     flip: bool = True, batch_size: int = 64, shard_size: int = 10000, num_workers: int = 4,
                     dtype: str = 'fp32') -> dict:
    """Autoencoder features of the ImageNet training images ``path/<wnid>/*`` (centre crops at ``resolution``, and
    of their mirror images with ``flip``) and their labels, into ``out/train/``."""
    from libs.data.datasets import ImageFolder

    _require_positive(resolution=resolution, batch_size=batch_size, shard_size=shard_size)
    if not os.path.isdir(path) or not any(os.path.isdir(os.path.join(path, d)) for d in os.listdir(path)):
        raise UserError(f'no ImageNet class folders at {path}: give --path=<ImageNet>/train, the folder that holds '
                        f'<wnid>/*.JPEG')
    fmt = _autoencoder_format(autoencoder, dtype)
    dataset = ImageFolder(path, int(resolution), labels_from_subfolders=True)
    settings = dict(format=FORMAT, kind='imagenet', split='train', resolution=int(resolution), flip=bool(flip),
                    source=os.path.abspath(path), autoencoder=os.path.abspath(autoencoder), dtype=dtype,
                    shard_size=int(shard_size), num_images=len(dataset))

    def make_writer():
        encoder = _load_autoencoder(autoencoder, dtype, _accelerator().device)

        def write(start, stop, folder, progress):
            files = _NpyRows(folder)
            for indices, images in _image_batches(dataset, start, stop, batch_size, num_workers):
                files.put(fmt.stored, indices[0] - start, _features(encoder, images), stop - start)
                if flip:
                    files.put(fmt.stored + '_flip', indices[0] - start, _features(encoder, images.flip(3)),
                              stop - start)
                progress.update(len(indices))
            files.close()
            np.save(os.path.join(folder, 'labels.npy'), dataset.labels[start:stop].astype(np.int64))
        return write

    return _write_store(os.path.join(out, 'train'), settings, int(shard_size), fmt, make_writer,
                        lambda store: {'num_classes': dataset.num_classes})


def extract_mscoco(path: str, out: str, split: str = 'train', resolution: int = 256,
                   autoencoder: str = DEFAULT_AUTOENCODER, text_encoder: str = DEFAULT_TEXT_ENCODER,
                   batch_size: int = 64, shard_size: int = 1000, num_workers: int = 4, dtype: str = 'fp32') -> dict:
    """Autoencoder features of the MS-COCO 2014 images of ``split`` (centre crops at ``resolution``) and CLIP
    features of all their captions, into ``out/<split>/``."""
    from libs.data.datasets import MSCOCO

    _require_positive(resolution=resolution, batch_size=batch_size, shard_size=shard_size)
    fmt = _autoencoder_format(autoencoder, dtype)
    dataset = MSCOCO(path, split, int(resolution))
    settings = dict(format=FORMAT, kind='mscoco', split=split, resolution=int(resolution), flip=False,
                    source=os.path.abspath(path), autoencoder=os.path.abspath(autoencoder),
                    text_encoder=os.path.abspath(text_encoder), dtype=dtype, shard_size=int(shard_size),
                    num_images=len(dataset), num_captions=sum(len(c) for c in dataset.captions))

    def make_writer():
        from libs.latent.text_encoder import load_text_encoder
        device = _accelerator().device
        images_encoder = _load_autoencoder(autoencoder, dtype, device)
        captions_encoder = load_text_encoder(text_encoder, device)

        def write(start, stop, folder, progress):
            captions = dataset.captions[start:stop]
            offsets = np.cumsum([0] + [len(c) for c in captions]).astype(np.int64)
            files = _NpyRows(folder)
            for indices, images in _image_batches(dataset, start, stop, batch_size, num_workers):
                first = indices[0] - start
                files.put(fmt.stored, first, _features(images_encoder, images), stop - start)
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

    return _write_store(os.path.join(out, split), settings, int(shard_size), fmt, make_writer, describe)


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
    from libs.latent.text_encoder import encode_in_batches, load_text_encoder

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
    from libs.latent.text_encoder import load_text_encoder

    state = _accelerator()
    context = load_text_encoder(text_encoder, state.device).empty_context().cpu().numpy()
    path = os.path.join(out, EMPTY_CONTEXT)
    if state.is_main_process:
        _save_npy(path, context)
        logger.info('wrote the CLIP features %s of the empty prompt to %s', context.shape, path)
    state.wait_for_everyone()
    return path
