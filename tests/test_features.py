"""Feature extraction and feature datasets (libs/features.py, the mscoco dataset of libs/data.py, the four
scripts/extract_*_feature.py): small ImageNet and COCO trees written here, encoded with the tiny autoencoder and
CLIP text model of tests/tiny_models.py, and compared with direct calls of those encoders."""
import json
import os
import pickle
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, reset_accelerate
from libs.latent import extract
from libs.latent.autoencoder import FrozenAutoencoder, load_autoencoder
from libs.cli import run
from libs.data import build_dataset
from libs.data.datasets import MSCOCO, crop_and_resize
from libs.errors import UserError
from libs.data.feature_store import ImageNetFeatures, MSCOCOFeatures
from libs.data.latent_format import LatentFormat
from libs.images import from_uint8
from libs.latent.text_encoder import load_text_encoder
from libs.latent.moments import latents_from_features
from tiny_models import TEXT_HIDDEN_SIZE, save_tiny_autoencoder, save_tiny_text_encoder, tiny_dc_autoencoder

LABELS = [0, 0, 0, 1, 1, 2, 2]  # of the sorted class folders below
RES = 16  # the tiny autoencoder halves once: moments (8, 8, 8)
# wnid -> image sizes (width, height): non-square and larger than RES, so crops, box halving and resizes all happen
CLASSES = {'n01': [(24, 20), (40, 33), (16, 16)], 'n02': [(20, 31), (35, 35)], 'n03': [(18, 26), (33, 64)]}
# COCO: (id, file name, size); id 3 has no caption and must be left out; the file lists ids out of order
COCO_IMAGES = [(42, (30, 20)), (7, (20, 24)), (3, (20, 20)), (19, (40, 32)), (25, (17, 22)), (11, (24, 24))]
COCO_CAPTIONS = [(7, 'a cat sat'), (42, 'a dog'), (19, 'the cat and the dog'), (7, 'cat dog cat'), (25, 'sat'),
                 (42, 'dog sat on a mat'), (11, 'a tabby cat'), (7, 'two cats'), (25, 'a dog sat')]


def cfg(**kwargs):
    return ml_collections.ConfigDict(kwargs)


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert '\n' not in message
    return message


def write_image(path, size, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def center_crops(files) -> torch.Tensor:
    """(N, 3, RES, RES) in [-1, 1]: the crops the stored moments must be of."""
    crops = []
    for file in files:
        with Image.open(file) as img:
            crops.append(torch.from_numpy(crop_and_resize(img, RES).copy()).permute(2, 0, 1))
    return from_uint8(torch.stack(crops))


@pytest.fixture(scope='module', autouse=True)
def fresh_accelerate_after_module():
    """The extractions create Accelerators in this process; later test modules start from a fresh state."""
    yield
    reset_accelerate()


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp('models')
    return (save_tiny_autoencoder(folder / 'vae'),
            save_tiny_text_encoder(folder / 'clip', max_position_embeddings=77))


@pytest.fixture(scope='module')
def imagenet_dir(tmp_path_factory):
    """ImageNet/train/<wnid>/ with PNG and JPEG files; returns (train folder, sorted files, labels)."""
    train = tmp_path_factory.mktemp('ImageNet') / 'train'
    files, labels = [], []
    for label, (wnid, sizes) in enumerate(CLASSES.items()):
        (train / wnid).mkdir(parents=True)
        for i, size in enumerate(sizes):
            path = train / wnid / f'{wnid}_{i}.{"JPEG" if i % 2 else "png"}'
            write_image(path, size, seed=10 * label + i)
            files.append(str(path))
            labels.append(label)
    return str(train), files, labels


@pytest.fixture(scope='module')
def coco_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('coco')
    for split, images, captions in (('train', COCO_IMAGES, COCO_CAPTIONS),
                                    ('val', [(5, (20, 30)), (2, (26, 26))], [(5, 'a dog'), (2, 'cat'), (2, 'dog')])):
        (root / f'{split}2014').mkdir()
        listed = []
        for image_id, size in images:
            name = f'COCO_{split}2014_{image_id:012d}.jpg'
            write_image(root / f'{split}2014' / name, size, seed=image_id)
            listed.append({'id': image_id, 'file_name': name, 'width': size[0], 'height': size[1]})
        annotations = [{'id': 100 + i, 'image_id': image_id, 'caption': text}
                       for i, (image_id, text) in enumerate(captions)]
        (root / 'annotations').mkdir(exist_ok=True)
        with open(root / 'annotations' / f'captions_{split}2014.json', 'w') as f:
            json.dump({'images': listed, 'annotations': annotations}, f)
    return str(root)


def extract_imagenet(imagenet_dir, models, out, **kwargs):
    reset_accelerate()
    settings = dict(resolution=RES, autoencoder=models[0], batch_size=2, shard_size=3, num_workers=0)
    return extract.extract_imagenet(imagenet_dir[0], str(out), **{**settings, **kwargs})


@pytest.fixture(scope='module')
def imagenet_root(imagenet_dir, models, tmp_path_factory):
    """A clean extraction with flips: 7 images in shards of 3."""
    root = tmp_path_factory.mktemp('imagenet16_features')
    done = extract_imagenet(imagenet_dir, models, root)
    assert done['images_encoded'] == 7 and done['shards_written'] == 3
    return str(root)


@pytest.fixture(scope='module')
def mscoco_root(coco_dir, models, tmp_path_factory):
    root = tmp_path_factory.mktemp('mscoco16_features')
    for split in ('train', 'val'):
        reset_accelerate()
        extract.extract_mscoco(coco_dir, str(root), split, RES, models[0], models[1], batch_size=2, shard_size=2,
                                num_workers=0)
    return str(root)


def load_store(store, names):
    """{file name: concatenation over the shards} of a store."""
    shards = sorted(d for d in os.listdir(store) if d.startswith('shard_'))
    return {name: np.concatenate([np.load(os.path.join(store, s, name)) for s in shards]) for name in names}


# ImageNet

def test_imagenet_store_layout_moments_flips_and_labels(imagenet_root, imagenet_dir, models, one_thread):
    _, files, labels = imagenet_dir
    store = os.path.join(imagenet_root, 'train')
    assert sorted(os.listdir(imagenet_root)) == ['train']
    assert sorted(os.listdir(store)) == ['info.json', 'manifest.json', 'shard_00000', 'shard_00001', 'shard_00002']
    for shard, n in (('shard_00000', 3), ('shard_00001', 3), ('shard_00002', 1)):
        assert sorted(os.listdir(os.path.join(store, shard))) == ['labels.npy', 'moments.npy', 'moments_flip.npy']
        moments = np.load(os.path.join(store, shard, 'moments.npy'))
        assert moments.shape == (n, 8, RES // 2, RES // 2) and moments.dtype == np.float32
        assert np.load(os.path.join(store, shard, 'labels.npy')).dtype == np.int64

    with open(os.path.join(store, 'info.json')) as f:
        info = json.load(f)
    assert {k: info[k] for k in ('format', 'kind', 'split', 'resolution', 'latent_shape', 'num_images', 'num_shards',
                                 'shard_size', 'num_classes', 'flip')} == dict(
        format=1, kind='imagenet', split='train', resolution=RES, latent_shape=[4, 8, 8], num_images=7, num_shards=3,
        shard_size=3, num_classes=3, flip=True)
    assert info['source'] == os.path.abspath(imagenet_dir[0]) and info['autoencoder'] == os.path.abspath(models[0])
    assert {k: info[k] for k in ('autoencoder_class', 'latent_channels', 'downsampling', 'scaling_factor',
                                 'shift_factor', 'stored')} == dict(
        autoencoder_class='AutoencoderKL', latent_channels=4, downsampling=2, scaling_factor=0.18215, shift_factor=0.0,
        stored='moments')

    stored = load_store(store, ['moments.npy', 'moments_flip.npy', 'labels.npy'])
    assert stored['labels.npy'].tolist() == labels == LABELS
    autoencoder = load_autoencoder(models[0])
    crops = center_crops(files)
    torch.testing.assert_close(torch.from_numpy(stored['moments.npy']), autoencoder.encode_features(crops),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(stored['moments_flip.npy']),
                               autoencoder.encode_features(crops.flip(3)), rtol=0, atol=1e-5)
    assert np.abs(stored['moments.npy'] - stored['moments_flip.npy']).max() > 1e-2  # the mirror is another image


def test_imagenet_features_dataset(imagenet_root):
    stored = load_store(os.path.join(imagenet_root, 'train'), ['moments.npy', 'moments_flip.npy', 'labels.npy'])
    ds = build_dataset(cfg(name='imagenet_features', path=imagenet_root, resolution=RES))
    assert isinstance(ds, ImageNetFeatures) and ds.stores_features
    assert len(ds) == 14 and ds.num_images == 7 and ds.num_classes == 3
    assert (ds.data_shape, ds.channels, ds.resolution) == ((4, 8, 8), 4, RES)
    assert ds.features_shape == (8, 8, 8) and ds.image_shape == (3, RES, RES)
    assert ds.labels.tolist() == LABELS * 2
    assert ds.fid_stats == f'assets/fid_stats/fid_stats_imagenet{RES}_guided_diffusion.npz'
    for index in (0, 4, 6):
        moments, label = ds[index]
        assert moments.dtype == torch.float32 and moments.shape == (8, 8, 8) and type(label) is int
        assert torch.equal(moments, torch.from_numpy(stored['moments.npy'][index])) and label == LABELS[index]
        flipped, flipped_label = ds[7 + index]
        assert torch.equal(flipped, torch.from_numpy(stored['moments_flip.npy'][index])) and flipped_label == label
    assert torch.equal(ds[-1][0], ds[13][0])
    with pytest.raises(IndexError):
        ds[14]

    blob = pickle.dumps(ds)  # DataLoader workers: the memory maps must not travel
    assert len(blob) < 20000
    assert torch.equal(pickle.loads(blob)[12][0], ds[12][0])
    assert build_dataset(cfg(name='imagenet_features', path=imagenet_root, fid_stats='mine.npz')).fid_stats == \
        'mine.npz'


def test_a_deterministic_autoencoder_stores_its_codes(imagenet_dir, models, tmp_path, one_thread):
    dc = save_tiny_autoencoder(tmp_path / 'dc', make=tiny_dc_autoencoder)
    done = extract_imagenet(imagenet_dir, (dc,) + models[1:], tmp_path / 'features')
    assert done['images_encoded'] == 7
    store = tmp_path / 'features' / 'train'
    assert sorted(os.listdir(store / 'shard_00002')) == ['labels.npy', 'latents.npy', 'latents_flip.npy']
    info = json.loads((store / 'info.json').read_text())
    assert (info['latent_shape'], info['stored'], info['downsampling'], info['autoencoder_class']) == (
        [8, 4, 4], 'latents', 4, 'AutoencoderDC')

    ds = ImageNetFeatures(str(tmp_path / 'features'))
    assert ds.latent_format == LatentFormat('AutoencoderDC', 8, 4, 0.4, 0.0, 'latents', str(store))
    assert (ds.data_shape, ds.features_shape, ds.resolution) == ((8, 4, 4), (8, 4, 4), RES)
    crops = center_crops(imagenet_dir[1])
    codes = load_autoencoder(dc).encode_features(crops)
    stored = torch.stack([ds[i][0] for i in range(14)])
    torch.testing.assert_close(stored[:7], codes, rtol=0, atol=1e-5)
    torch.testing.assert_close(stored[7:], load_autoencoder(dc).encode_features(crops.flip(3)), rtol=0, atol=1e-5)
    # Training input: the code itself, scaled; no noise drawn.
    torch.testing.assert_close(latents_from_features(stored[:7], ds.latent_format), 0.4 * codes, rtol=0, atol=1e-5)


def test_a_store_written_before_the_format_was_recorded_reads_as_stable_diffusion_moments(imagenet_root, tmp_path):
    old = tmp_path / 'old'
    shutil.copytree(imagenet_root, old)
    info = json.loads((old / 'train' / 'info.json').read_text())
    for key in ('autoencoder_class', 'latent_channels', 'downsampling', 'scaling_factor', 'shift_factor', 'stored'):
        del info[key]
    (old / 'train' / 'info.json').write_text(json.dumps(info))
    ds, new = ImageNetFeatures(str(old)), ImageNetFeatures(imagenet_root)
    assert ds.latent_format == LatentFormat('AutoencoderKL', 4, 2, 0.18215, 0.0, 'moments', str(old / 'train'))
    assert torch.equal(ds[9][0], new[9][0]) and ds[9][1] == new[9][1]


def test_stores_give_repa_the_source_image_of_each_item_mirrored_with_it(imagenet_root, imagenet_dir, mscoco_root,
                                                                          coco_dir, tmp_path):
    store = ImageNetFeatures(imagenet_root)
    with_images = store.with_source_images()
    crops = center_crops(imagenet_dir[1])       # what the autoencoder encoded
    assert len(with_images) == 14 and with_images.num_classes == 3 and with_images.data_shape == (4, 8, 8)
    for index in (0, 5, 7, 12):
        moments, label, image = with_images[index]
        assert torch.equal(moments, store[index][0]) and label == store[index][1]
        expected = crops[index % 7].flip(-1) if index >= 7 else crops[index]   # the mirrored crop of a mirror item
        assert torch.equal(image, expected)
    moved = tmp_path / 'moved'
    shutil.copytree(imagenet_dir[0], moved)
    assert torch.equal(store.with_source_images(str(moved))[3][2], crops[3])   # config.dataset.source_path
    assert torch.equal(pickle.loads(pickle.dumps(with_images))[8][2], crops[1].flip(-1))   # DataLoader workers
    os.remove(next(moved.glob('n03/*')))
    assert 'other classes or another order' in one_line_error(store.with_source_images, str(moved))
    assert 'config.dataset.source_path' in one_line_error(store.with_source_images, str(tmp_path / 'gone'))

    captions = MSCOCOFeatures(mscoco_root).with_source_images()
    source = MSCOCO(coco_dir, 'train', RES)
    for index in (0, len(captions) - 1):
        assert torch.equal(captions[index][2], source[captions.image_index(index)][0])


def test_noflip_stores_no_mirrors(imagenet_dir, models, tmp_path, one_thread):
    extract_imagenet(imagenet_dir, models, tmp_path, flip=False, shard_size=4, batch_size=3)
    assert sorted(os.listdir(tmp_path / 'train' / 'shard_00001')) == ['labels.npy', 'moments.npy']
    ds = ImageNetFeatures(str(tmp_path))
    assert len(ds) == 7 and not ds.flip and ds.labels.tolist() == LABELS


def test_interrupted_extraction_resumes_and_equals_a_clean_run(imagenet_root, imagenet_dir, models, tmp_path,
                                                               monkeypatch, one_thread):
    encoded, original = [], FrozenAutoencoder.encode_features
    fail_at_call = [None]

    def counting(self, images):
        if len(encoded) == fail_at_call[0]:
            raise RuntimeError('killed')
        encoded.append(len(images))
        return original(self, images)
    monkeypatch.setattr(FrozenAutoencoder, 'encode_features', counting)

    # Calls (images, mirrors) per batch of 2: shard 0 takes 4 calls; the 7th is in shard 1's second batch.
    fail_at_call[0] = 6
    with pytest.raises(RuntimeError, match='killed'):
        extract_imagenet(imagenet_dir, models, tmp_path)
    store = tmp_path / 'train'
    assert sorted(os.listdir(store)) == ['manifest.json', 'shard_00000', 'shard_00001.tmp']
    assert sum(encoded) == 2 * 3 + 2 * 2
    message = one_line_error(ImageNetFeatures, str(tmp_path))
    assert 'incomplete' in message and f'--path={os.path.abspath(imagenet_dir[0])}' in message
    assert f'--out={tmp_path}' in message and f'--resolution={RES}' in message

    first_shard = os.stat(store / 'shard_00000' / 'moments.npy').st_mtime_ns
    encoded.clear()
    fail_at_call[0] = None
    done = extract_imagenet(imagenet_dir, models, tmp_path)
    assert sum(encoded) == 2 * (3 + 1)  # shards 1 and 2 only, each image and its mirror
    assert done['shards_written'] == 2 and done['images_encoded'] == 4
    assert os.stat(store / 'shard_00000' / 'moments.npy').st_mtime_ns == first_shard
    assert sorted(os.listdir(store)) == sorted(os.listdir(os.path.join(imagenet_root, 'train')))
    names = ['moments.npy', 'moments_flip.npy', 'labels.npy']
    resumed, clean = load_store(store, names), load_store(os.path.join(imagenet_root, 'train'), names)
    for name in names:
        np.testing.assert_allclose(resumed[name], clean[name], rtol=0, atol=1e-5)

    encoded.clear()
    assert extract_imagenet(imagenet_dir, models, tmp_path)['shards_written'] == 0 and not encoded


def test_other_settings_than_the_manifest_are_refused(imagenet_root, imagenet_dir, models, tmp_path):
    before = sorted(os.listdir(os.path.join(imagenet_root, 'train')))
    message = one_line_error(extract_imagenet, imagenet_dir, models, imagenet_root, resolution=2 * RES)
    assert f'resolution {RES} there, {2 * RES} now' in message and 'another --out' in message
    other_vae = save_tiny_autoencoder(tmp_path / 'other_vae', seed=1)
    assert 'autoencoder' in one_line_error(extract_imagenet, imagenet_dir, models, imagenet_root,
                                           autoencoder=other_vae)
    assert 'flip True there, False now' in one_line_error(extract_imagenet, imagenet_dir, models, imagenet_root,
                                                          flip=False)
    assert sorted(os.listdir(os.path.join(imagenet_root, 'train'))) == before


# MS-COCO

def test_mscoco_images_are_sorted_by_id_and_need_captions(coco_dir):
    ds = build_dataset(cfg(name='mscoco', path=coco_dir, resolution=RES))
    assert isinstance(ds, MSCOCO) and len(ds) == 5 and ds.num_classes == 0
    assert ds.image_ids.tolist() == [7, 11, 19, 25, 42]
    assert ds.captions == [['a cat sat', 'cat dog cat', 'two cats'], ['a tabby cat'], ['the cat and the dog'],
                           ['sat', 'a dog sat'], ['a dog', 'dog sat on a mat']]
    assert ds.fid_stats == f'assets/fid_stats/fid_stats_mscoco{RES}_val.npz'
    image, label = ds[2]
    assert image.shape == (3, RES, RES) and label == -1
    torch.testing.assert_close(image, center_crops([os.path.join(coco_dir, 'train2014', 'COCO_train2014_'
                                                                 '000000000019.jpg')])[0])
    assert len(MSCOCO(coco_dir, 'val', RES)) == 2

    assert 'captions_train2014.json' in one_line_error(MSCOCO, os.path.join(coco_dir, 'nowhere'))
    assert "no split 'test'" in one_line_error(MSCOCO, coco_dir, 'test')


def test_mscoco_store_moments_contexts_and_captions(mscoco_root, coco_dir, models, one_thread):
    store = os.path.join(mscoco_root, 'train')
    assert sorted(os.listdir(mscoco_root)) == ['train', 'val']
    assert sorted(os.listdir(store)) == ['info.json', 'manifest.json', 'shard_00000', 'shard_00001', 'shard_00002']
    assert sorted(os.listdir(os.path.join(store, 'shard_00000'))) == ['caption_offsets.npy', 'captions.json',
                                                                      'contexts.npy', 'moments.npy']
    with open(os.path.join(store, 'info.json')) as f:
        info = json.load(f)
    assert {k: info[k] for k in ('kind', 'split', 'num_images', 'num_shards', 'latent_shape', 'context_shape',
                                 'flip')} == dict(kind='mscoco', split='train', num_images=5, num_shards=3,
                                                  latent_shape=[4, 8, 8], context_shape=[77, TEXT_HIDDEN_SIZE],
                                                  flip=False)
    assert info['text_encoder'] == os.path.abspath(models[1])

    images = MSCOCO(coco_dir, 'train', RES)
    encoder, autoencoder = load_text_encoder(models[1]), load_autoencoder(models[0])
    moments = []
    for shard, first, count in ((0, 0, 2), (1, 2, 2), (2, 4, 1)):
        folder = os.path.join(store, f'shard_{shard:05d}')
        captions = images.captions[first:first + count]
        with open(os.path.join(folder, 'captions.json')) as f:
            assert json.load(f) == captions
        offsets = np.load(os.path.join(folder, 'caption_offsets.npy'))
        assert offsets.dtype == np.int64 and offsets.tolist() == np.cumsum([0] + [len(c) for c in captions]).tolist()
        contexts = np.load(os.path.join(folder, 'contexts.npy'))
        assert contexts.dtype == np.float32 and contexts.shape == (offsets[-1], 77, TEXT_HIDDEN_SIZE)
        torch.testing.assert_close(torch.from_numpy(contexts), encoder.encode(sum(captions, [])), rtol=0, atol=1e-5)
        moments.append(np.load(os.path.join(folder, 'moments.npy')))
    torch.testing.assert_close(torch.from_numpy(np.concatenate(moments)),
                               autoencoder.encode_features(center_crops(images.files)), rtol=0, atol=1e-5)


def test_mscoco_features_dataset_has_one_item_per_caption(mscoco_root, coco_dir, models, one_thread):
    ds = build_dataset(cfg(name='mscoco_features', path=mscoco_root))
    assert isinstance(ds, MSCOCOFeatures) and ds.stores_features
    assert len(ds) == 9 and ds.num_images == 5 and ds.num_classes == 0 and ds.labels.tolist() == [-1] * 9
    assert (ds.data_shape, ds.features_shape, ds.context_shape) == ((4, 8, 8), (8, 8, 8), (77, TEXT_HIDDEN_SIZE))
    assert ds.fid_stats == f'assets/fid_stats/fid_stats_mscoco{RES}_val.npz'
    images = MSCOCO(coco_dir, 'train', RES)
    caption_image = [i for i, captions in enumerate(images.captions) for _ in captions]
    assert [ds.image_index(k) for k in range(9)] == caption_image == [0, 0, 0, 1, 2, 3, 3, 4, 4]
    stored = load_store(ds.store, ['moments.npy', 'contexts.npy'])
    for k in range(9):
        moments, context = ds[k]
        assert moments.dtype == context.dtype == torch.float32 and context.shape == (77, TEXT_HIDDEN_SIZE)
        assert torch.equal(moments, torch.from_numpy(stored['moments.npy'][caption_image[k]]))
        assert torch.equal(context, torch.from_numpy(stored['contexts.npy'][k]))
    encoder = load_text_encoder(models[1])
    torch.testing.assert_close(ds[5][1], encoder.encode(['sat'])[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(ds[8][1], encoder.encode(['dog sat on a mat'])[0], rtol=0, atol=1e-5)
    assert torch.equal(pickle.loads(pickle.dumps(ds))[7][1], ds[7][1])

    val = build_dataset(cfg(name='mscoco_features', path=mscoco_root), split='val')
    assert len(val) == 3 and val.num_images == 2 and [val.image_index(k) for k in range(3)] == [0, 0, 1]
    torch.testing.assert_close(val[0][1], encoder.encode(['cat'])[0], rtol=0, atol=1e-5)


def test_empty_context_and_test_prompts(mscoco_root, models, tmp_path, one_thread):
    ds = MSCOCOFeatures(mscoco_root, 'val')
    assert 'scripts/extract_empty_feature.py' in one_line_error(ds.empty_context)
    assert 'scripts/extract_test_prompt_feature.py' in one_line_error(ds.test_prompts)

    encoder = load_text_encoder(models[1])
    reset_accelerate()
    path = extract.extract_empty_context(mscoco_root, models[1])
    assert path == os.path.join(mscoco_root, 'empty_context.npy')
    assert torch.equal(ds.empty_context(), encoder.encode([''])[0])

    reset_accelerate()
    extract.extract_test_prompts(mscoco_root, text_encoder=models[1])
    prompts, contexts = ds.test_prompts()
    assert prompts == list(extract.DEFAULT_TEST_PROMPTS) and len(prompts) == 10
    assert contexts.shape == (10, 77, TEXT_HIDDEN_SIZE)
    torch.testing.assert_close(contexts, encoder.encode(prompts), rtol=0, atol=1e-5)

    mine = tmp_path / 'prompts.txt'
    mine.write_text('a dog sat\n\n  two cats  \n')
    reset_accelerate()
    extract.extract_test_prompts(mscoco_root, str(mine), models[1], batch_size=1)
    prompts, contexts = ds.test_prompts()
    assert prompts == ['a dog sat', 'two cats']
    torch.testing.assert_close(contexts, encoder.encode(prompts), rtol=0, atol=1e-5)
    assert 'prompt file not found' in one_line_error(extract.extract_test_prompts, mscoco_root,
                                                     str(tmp_path / 'none.txt'), models[1])


def test_missing_wrong_and_incomplete_stores_are_one_line_each(tmp_path, imagenet_root, mscoco_root):
    message = one_line_error(ImageNetFeatures, str(tmp_path / 'nowhere'))
    assert 'no imagenet features' in message and 'python scripts/extract_imagenet_feature.py' in message
    assert f'--out={tmp_path / "nowhere"}' in message
    message = one_line_error(MSCOCOFeatures, str(tmp_path / 'nowhere'), 'val')
    assert 'python scripts/extract_mscoco_feature.py' in message and '--split=val' in message
    assert "'imagenet'" in one_line_error(MSCOCOFeatures, imagenet_root)
    assert 'config.dataset.resolution is 256' in one_line_error(ImageNetFeatures, imagenet_root, resolution=256)
    assert "no split 'val'" in one_line_error(ImageNetFeatures, imagenet_root, 'val')

    copy = tmp_path / 'copy'
    shutil.copytree(mscoco_root, copy)
    os.remove(copy / 'val' / 'shard_00000' / 'contexts.npy')
    ds = MSCOCOFeatures(str(copy), 'val')
    assert 'contexts.npy is missing' in one_line_error(ds.__getitem__, 0)
    os.remove(copy / 'val' / 'info.json')
    message = one_line_error(MSCOCOFeatures, str(copy), 'val')
    assert 'incomplete' in message and '--split=val' in message


# The command lines

def start_script(name, *args):
    # One thread per process: four of them share the cores of a busy CI machine.
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.Popen([sys.executable, os.path.join('scripts', name), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process):
    """(exit status, stderr) of a started script."""
    _, stderr = process.communicate(timeout=300)
    return process.returncode, stderr


def test_scripts_end_to_end(imagenet_dir, coco_dir, imagenet_root, models, tmp_path):
    imagenet, mscoco, prompts = tmp_path / 'imagenet', tmp_path / 'mscoco', tmp_path / 'prompts.txt'
    prompts.write_text('a cat\na dog\n')
    # Independent runs, started together: most of each one's time is importing torch, diffusers and transformers.
    runs = [
        start_script('extract_imagenet_feature.py', f'--path={imagenet_dir[0]}', f'--out={imagenet}',
                     f'--resolution={RES}', f'--autoencoder={models[0]}', '--noflip', '--shard_size=4',
                     '--batch_size=3', '--num_workers=0'),
        start_script('extract_mscoco_feature.py', f'--path={coco_dir}', '--split=val', f'--out={mscoco}',
                     f'--resolution={RES}', f'--autoencoder={models[0]}', f'--text_encoder={models[1]}',
                     '--num_workers=0'),
        start_script('extract_empty_feature.py', f'--out={mscoco}', f'--text_encoder={models[1]}'),
        start_script('extract_test_prompt_feature.py', f'--out={mscoco}', f'--prompts={prompts}',
                     f'--text_encoder={models[1]}'),
    ]
    for status, stderr in [finish(run) for run in runs]:
        assert status == 0, stderr

    ds, clean = ImageNetFeatures(str(imagenet)), ImageNetFeatures(imagenet_root)
    assert len(ds) == 7 and ds.num_shards == 2
    torch.testing.assert_close(torch.stack([ds[i][0] for i in range(7)]),
                               torch.stack([clean[i][0] for i in range(7)]), rtol=0, atol=1e-5)
    ds = MSCOCOFeatures(str(mscoco), 'val')
    assert len(ds) == 3 and ds.empty_context().shape == (77, TEXT_HIDDEN_SIZE)
    assert ds.test_prompts()[0] == ['a cat', 'a dog']


def test_a_missing_autoencoder_is_one_error_line_and_status_2(imagenet_dir, tmp_path, capsys):
    """What the scripts do with the loaders' errors (they call through libs.cli.run)."""
    reset_accelerate()
    with pytest.raises(SystemExit) as info:
        run(extract.extract_imagenet, imagenet_dir[0], str(tmp_path), RES, str(tmp_path / 'missing.pth'))
    assert info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.count('\n') == 1 and stderr.startswith('error: autoencoder not found at ')
    assert not os.path.exists(tmp_path / 'train' / 'shard_00000.tmp')
