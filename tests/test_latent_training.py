"""Latent and text-to-image models end to end, with tiny autoencoders (Stable Diffusion's AutoencoderKL, DC-AE's
AutoencoderDC) and a tiny CLIP built here: extract features -> train (train_ldm.py / train_t2i_discrete.py and the
shared Trainer) -> guided sampling -> decode -> FID JSON; plus the condition objects (label / text dropout, the "no
condition" of guidance), the latent geometry and the one-line errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import AutoencoderDC
from PIL import Image

from conftest import reset_accelerate
from forking import run_script as run_forked
from libs.diffusion.conditioning import ClassLabels, TextContexts, Unconditional
from libs.config import load_config_file
from libs.data import build_dataset, data_spec
from libs.data.latent_format import LatentFormat
from libs.diffusion.gaussian import GaussianFramework
from libs.diffusion.schedules import VPSDE
from libs.errors import UserError
from libs.evaluation import run_eval_mode
from libs.evaluation.harness import EvalRun, draw_samples
from libs.latent.extract import extract_empty_context, extract_imagenet, extract_mscoco, extract_test_prompts
from libs.latent.spaces import LatentSpace, latent_format
from libs.rng import SampleRandom
from libs.training.loop import Trainer
from tiny_models import TEXT_HIDDEN_SIZE, save_tiny_autoencoder, save_tiny_text_encoder, tiny_dc_autoencoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RES = 16        # images; the tiny autoencoder halves them: latents (4, 8, 8); the tiny DC-AE quarters them: (8, 4, 4)
TINY_NET = dict(img_size=RES // 2, patch_size=2, in_chans=4, embed_dim=32, depth=2, num_heads=2)
# Each DC-AE config with a tiny network of its backbone at patch size 1 on the tiny DC-AE's (8, 4, 4) latents.
TINY_DC_NETS = {
    'imagenet512_uvit_huge_dcae.py': dict(img_size=RES // 4, patch_size=1, in_chans=8, embed_dim=32, depth=2,
                                          num_heads=2, num_classes=3),
    'imagenet512_dit_xl1_dcae.py': dict(input_size=RES // 4, patch_size=1, in_channels=8, hidden_size=32, depth=2,
                                        num_heads=2, num_classes=2),
}


def write_image(path, rng, tint):
    pixels = np.clip(rng.normal(128, 40, (RES, RES, 3)) + tint, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope='module')
def assets(tmp_path_factory, random_weights):
    """Tiny weights, an ImageNet-style class folder tree and an MS-COCO-style tree, their extracted features, and
    FID reference statistics of the images (with the random Inception)."""
    base = tmp_path_factory.mktemp('latent')
    rng = np.random.default_rng(0)
    a = {'ae': save_tiny_autoencoder(base / 'ae'),
         'clip': save_tiny_text_encoder(base / 'clip', max_position_embeddings=77),
         'inception': random_weights}
    images = []
    for label, wnid in enumerate(['n01', 'n02']):
        os.makedirs(base / 'imagenet' / wnid)
        for i in range(6):
            write_image(base / 'imagenet' / wnid / f'{i}.png', rng, (60, -60)[label])
            images.append(base / 'imagenet' / wnid / f'{i}.png')
    a['imagenet'] = str(base / 'imagenet_features')
    a['imagenet_images'] = str(base / 'imagenet')
    extract_imagenet(str(base / 'imagenet'), a['imagenet'], resolution=RES, autoencoder=a['ae'], batch_size=4,
                     shard_size=5, num_workers=0)

    coco = base / 'coco'
    os.makedirs(coco / 'annotations')
    words = ['cat', 'dog', 'sat']
    for split, n in (('train', 6), ('val', 3)):
        os.makedirs(coco / f'{split}2014')
        records, annotations = [], []
        for i in range(n):
            name = f'COCO_{split}2014_{i:012d}.jpg'
            write_image(coco / f'{split}2014' / name, rng, 0)
            records.append({'id': i, 'file_name': name})
            annotations += [{'image_id': i, 'caption': f'a {words[i % 3]} {words[(i + c) % 3]}'} for c in range(2)]
        (coco / 'annotations' / f'captions_{split}2014.json').write_text(
            json.dumps({'images': records, 'annotations': annotations}))
    a['coco'] = str(base / 'mscoco_features')
    for split in ('train', 'val'):
        extract_mscoco(str(coco), a['coco'], split=split, resolution=RES, autoencoder=a['ae'],
                       text_encoder=a['clip'], batch_size=4, shard_size=4, num_workers=0)
    extract_empty_context(a['coco'], text_encoder=a['clip'])
    prompts = base / 'prompts.txt'
    prompts.write_text('a cat sat\na dog\n')
    a['prompts'] = str(prompts)
    extract_test_prompts(a['coco'], str(prompts), text_encoder=a['clip'])

    from libs.metrics import fid
    features = fid.InceptionFeatures(fid.load_inception(random_weights))
    real = torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1).float() / 127.5 - 1
                        for p in images])
    a['stats'] = str(base / 'stats.npz')
    fid.save_stats(a['stats'], *fid.activation_statistics(features(real)))
    reset_accelerate()
    return a


def tiny_config(a, config_file, net=TINY_NET, **train):
    """A paper config with the tiny network ``net`` and the files of ``assets``; checkpoints with a 4-sample FID
    (each FID costs seconds: a 2048-dimensional matrix square root)."""
    config = load_config_file(os.path.join(ROOT, 'configs', config_file))
    config.nnet.update(net)
    config.autoencoder.pretrained_path = a['ae']
    config.log_with = 'none'
    config.train.update({**dict(batch_size=4, log_interval=1, num_workers=0, grid_size=4, final_eval=False),
                         **train})
    config.lr_scheduler.warmup_steps = 1
    config.eval.update(ref_stats=a['stats'], inception_path=a['inception'], train_n_samples=4,
                       train_sample_steps=3)
    config.sample.update(n_samples=4, mini_batch_size=4, sample_steps=3)
    return config


def imagenet_config(a, **train):
    config = tiny_config(a, 'imagenet256_uvit_large.py', **{**dict(n_steps=4, save_interval=4, eval_interval=4),
                                                              **train})
    config.nnet.num_classes = 3                          # 2 classes + the "no class" label
    config.dataset.path = a['imagenet']
    return config


def mscoco_config(a, **train):
    config = tiny_config(a, 'mscoco_uvit_small.py', **{**dict(n_steps=2, save_interval=2, eval_interval=2), **train})
    config.nnet.clip_dim = TEXT_HIDDEN_SIZE
    config.text_encoder.pretrained_path = a['clip']
    config.dataset.path = a['coco']
    return config


pytestmark = pytest.mark.usefixtures('fresh_accelerate_state')


# ------------------------------------------------------------------------------------------------ small parts
def test_latents_are_drawn_from_the_stored_moments_or_taken_from_stored_codes():
    space = LatentSpace('', LatentFormat('AutoencoderKL', 4, 2, 0.5), 'cpu')
    mean = torch.randn(1, 4, 8, 8)
    certain = torch.cat([mean, torch.full_like(mean, -60.0)], dim=1)      # variance ~0: the latent is 0.5 * mean
    assert torch.allclose(space.training_input(certain), 0.5 * mean, atol=1e-6)
    wide = torch.cat([torch.zeros(2000, 4, 1, 1), torch.full((2000, 4, 1, 1), np.log(4.0))], dim=1)
    draws = space.training_input(wide)                                    # std 2, times 0.5 -> std 1
    assert abs(draws.std().item() - 1.0) < 0.05 and abs(draws.mean().item()) < 0.05
    with pytest.raises(UserError, match='config.autoencoder.pretrained_path'):
        space.decode(torch.zeros(1, 4, 8, 8))

    shifted = LatentSpace('', LatentFormat('AutoencoderKL', 4, 8, 1.5, shift=0.25), 'cpu')  # SD3's kind
    assert torch.allclose(shifted.training_input(certain), 1.5 * (mean - 0.25), atol=1e-5)
    codes = LatentSpace('', LatentFormat('AutoencoderDC', 4, 32, 0.3, stored='latents'), 'cpu')
    assert torch.equal(codes.training_input(mean), 0.3 * mean)         # deterministic: no noise drawn


def test_condition_dropout_and_the_unconditional_counterparts():
    torch.manual_seed(0)
    labels = ClassLabels(num_classes=1000, null_label=1000)
    y = torch.randint(0, 1000, (20000,))
    dropped = labels.training_condition(y, 0.15)['y'] == 1000
    assert abs(dropped.float().mean().item() - 0.15) < 0.01
    assert (labels.null({'y': y[:3]})['y'] == 1000).all()

    empty = torch.randn(77, 8)
    text = TextContexts(empty)
    context = torch.randn(4000, 77, 8)
    out = text.training_condition(context, 0.1)['context']
    is_empty = (out == empty).flatten(1).all(1)
    kept = (out == context).flatten(1).all(1)
    assert (is_empty | kept).all() and abs(is_empty.float().mean().item() - 0.1) < 0.02
    assert torch.equal(text.null({'context': context[:2]})['context'], empty.expand(2, 77, 8))


def test_the_condition_of_labelled_test_images_and_one_that_tells_nothing():
    """What the likelihood modes and the feature probes ask of each kind of conditioning."""
    y = torch.tensor([3, 1])
    assert Unconditional().labelled(y) == {} and Unconditional().uninformative(2, 'cpu') == {}
    labels = ClassLabels(num_classes=10, null_label=10)
    assert labels.labelled(y)['y'] is y
    assert torch.equal(labels.uninformative(3, 'cpu')['y'], torch.tensor([10, 10, 10]))
    with pytest.raises(UserError, match='needs the "no class" label'):
        ClassLabels(num_classes=10).uninformative(3, 'cpu')
    with pytest.raises(UserError, match='not text-conditional ones$'):
        TextContexts(torch.zeros(77, 8)).labelled(y)
    with pytest.raises(UserError, match='not text-conditional ones$'):
        TextContexts(torch.zeros(77, 8)).uninformative(2, 'cpu')


def test_text_guidance_is_one_batched_call_of_cond_plus_scale_times_the_difference():
    empty = torch.randn(77, 8)
    calls = []

    class Noise:
        def noise(self, x, t, context):
            calls.append(x.shape[0])
            return x * context.mean(dim=(1, 2)).view(-1, 1, 1, 1)

    context = torch.randn(3, 77, 8)
    x = torch.randn(3, 4, 2, 2)
    cond = {'context': context}
    eps = GaussianFramework(VPSDE()).guided(Noise(), cond, TextContexts(empty).null(cond), 0.4)(x, 0.5)
    cond, uncond = x * context.mean(dim=(1, 2)).view(-1, 1, 1, 1), x * empty.mean()
    assert torch.allclose(eps, cond + 0.4 * (cond - uncond), atol=1e-6)
    assert calls == [6]


# ------------------------------------------------------------------------------------------- training + eval
def test_class_conditional_latent_training_samples_decodes_and_scores(assets, tmp_path, monkeypatch):
    config = imagenet_config(assets, p_uncond=0.15)
    Trainer(config, str(tmp_path)).fit()
    grid = Image.open(tmp_path / 'samples' / '4.png')
    assert grid.size[0] >= 2 * RES                       # decoded images, not 8x8 latents
    ckpt = tmp_path / 'ckpts' / '4.ckpt'
    record = json.loads((ckpt / 'eval_sample_imagenet_features_n4_fid_dpm_solver_nfe3_scale0.4_ema.json').read_text())
    settings = record['settings']
    assert record['fid'] > 0 and settings['guidance_scale'] == 0.4
    assert settings['reference_statistics'] == assets['stats']

    reset_accelerate()
    config.sample.update(sample_steps=2, scale=1.5, path=str(tmp_path / 'pngs'))
    result = run_eval_mode(config, 'sample', str(ckpt))
    record = json.loads((ckpt / 'eval_sample_imagenet_features_n4_fid_dpm_solver_nfe2_scale1.5_ema.json')
                        .read_text())
    assert record['fid'] == result['fid'] and record['settings']['guidance_scale'] == 1.5
    assert Image.open(tmp_path / 'pngs' / '000003.png').size == (RES, RES)


    # one autoencoder load per evaluation, however many sampling passes it makes (gen: config.sample, then the
    # ancestral sampler over the whole chain)
    import libs.latent.autoencoder
    loads = []
    load = libs.latent.autoencoder.load_autoencoder
    monkeypatch.setattr(libs.latent.autoencoder, 'load_autoencoder', lambda *a, **k: loads.append(a) or load(*a, **k))
    reset_accelerate()
    run = EvalRun.load(config, str(ckpt / 'nnet_ema.pth'))
    first, second = config.sample, config.sample.copy_and_resolve_references()
    second.update(algorithm='euler_maruyama_sde', sample_steps=2)
    for sample_cfg in (first, second):
        assert run.generate(sample_cfg, None) == {}
    assert len(loads) == 1 and run.conditioning() is run.conditioning()


def test_latent_resume_is_exact(assets, tmp_path):
    # (with scores at the checkpoints too: test_objectives checks that scoring leaves the training RNG alone)
    def config(**train):
        c = imagenet_config(assets, save_interval=2, eval_interval=100, **train)
        c.eval.ref_stats = str(tmp_path / 'absent.npz')
        return c
    Trainer(config(), str(tmp_path / 'straight')).fit()
    reset_accelerate()
    Trainer(config(n_steps=2), str(tmp_path / 'resumed')).fit()
    reset_accelerate()
    Trainer(config(), str(tmp_path / 'resumed')).fit()
    for name in ('nnet.pth', 'nnet_ema.pth'):
        a = torch.load(tmp_path / 'straight' / 'ckpts' / '4.ckpt' / name, weights_only=True)
        b = torch.load(tmp_path / 'resumed' / 'ckpts' / '4.ckpt' / name, weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_repa_on_latents_sees_the_source_images_flipped_with_their_latents(assets, tmp_path, monkeypatch):
    from transformers import Dinov2Config, Dinov2Model

    from libs.training import repa
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                             patch_size=2, image_size=8)).save_pretrained(tmp_path / 'dinov2')
    config = imagenet_config(assets)
    config.dataset.random_flip = True
    config.repa.update(weight=0.5, depth=1, encoder='dinov2', encoder_path=str(tmp_path / 'dinov2'), projector_dim=8)
    seen = []
    target = repa.Repa.target
    monkeypatch.setattr(repa.Repa, 'target', lambda self, images: seen.append(images) or target(self, images))
    trainer = Trainer(config, str(tmp_path / 'run'))
    data = trainer.batches()
    for _ in range(2):
        metrics = trainer.train_step(data)
    assert metrics['loss'] == pytest.approx(metrics['diffusion_loss'] + 0.5 * metrics['repa_loss'], rel=1e-5)
    folder = os.path.join(os.path.dirname(assets['imagenet']), 'imagenet')
    sources = torch.stack([torch.from_numpy(np.array(Image.open(os.path.join(folder, wnid, name)))).permute(2, 0, 1)
                           for wnid in sorted(os.listdir(folder)) for name in sorted(os.listdir(folder + '/' + wnid))])
    sources = torch.cat([sources, sources.flip(-1)]).float() / 127.5 - 1
    assert len(seen) == 2 and all(image.shape == (3, RES, RES) for batch in seen for image in batch)
    assert all((sources == image).flatten(1).all(1).any() for batch in seen for image in batch)
    # the loader's random flip mirrors each image with its latent: moments of zero variance give latents 0.18215 mean
    mean = torch.randn(64, 4, 8, 8)
    moments = torch.cat([mean, torch.full_like(mean, -60.0)], dim=1)
    images = torch.randn(64, 3, RES, RES)
    x, _, _, given = trainer.prepare_batch((moments, torch.zeros(64, dtype=torch.int64), images))
    mirrored = torch.isclose(x, 0.18215 * mean.flip(-1), atol=1e-6).flatten(1).all(1)
    assert torch.isclose(x[~mirrored], 0.18215 * mean[~mirrored], atol=1e-6).all()
    assert torch.equal(given[mirrored], images[mirrored].flip(-1)) and torch.equal(given[~mirrored], images[~mirrored])
    assert 10 < mirrored.sum() < 54


def test_text_to_image_training_with_test_prompt_grids_and_validation_caption_fid(assets, tmp_path):
    config = mscoco_config(assets)
    Trainer(config, str(tmp_path)).fit()
    assert Image.open(tmp_path / 'samples' / '2.png').size[0] >= 2 * RES
    ckpt = tmp_path / 'ckpts' / '2.ckpt'
    record = json.loads((ckpt / 'eval_sample_mscoco_features_n4_fid_dpm_solver_nfe3_scale1_ema.json').read_text())
    assert record['fid'] > 0 and record['settings']['guidance_scale'] == 1.0


def test_latent_training_without_the_autoencoder_warns_once_and_trains(assets, tmp_path, caplog):
    config = imagenet_config(assets, n_steps=2, eval_interval=1)
    config.autoencoder.pretrained_path = ''
    with caplog.at_level('WARNING'):
        Trainer(config, str(tmp_path)).fit()
    warnings = [r.getMessage() for r in caplog.records if 'config.autoencoder.pretrained_path' in r.getMessage()]
    assert len([w for w in warnings if w.startswith('no sample grids')]) == 1
    assert (tmp_path / 'ckpts' / '2.ckpt' / 'nnet_ema.pth').is_file()


# ----------------------------------------------------------------------------------------- DC-AE's latents
@pytest.fixture(scope='module')
def dc_assets(assets, tmp_path_factory):
    """The tiny DC-AE and its store of the ImageNet-style tree (codes (8, 4, 4), flips)."""
    base = tmp_path_factory.mktemp('dc')
    dc = {'ae': save_tiny_autoencoder(base / 'ae', make=tiny_dc_autoencoder), 'store': str(base / 'features')}
    extract_imagenet(assets['imagenet_images'], dc['store'], resolution=RES, autoencoder=dc['ae'], batch_size=6,
                     shard_size=12, num_workers=0)
    reset_accelerate()
    return dc


def dc_config(a, dc, config_file):
    config = tiny_config(a, config_file, TINY_DC_NETS[config_file], n_steps=2, save_interval=2, eval_interval=2)
    config.autoencoder.update(pretrained_path=dc['ae'], scale_factor=0.0)   # the store's (and folder's) 0.4
    config.dataset.path = dc['store']
    config.eval.train_n_samples = 0
    config.mixed_precision = 'no'                                           # DC-AE's bf16 is slow on a CPU
    return config


def test_dc_ae_latents_train_sample_and_decode(assets, dc_assets, tmp_path):
    config = dc_config(assets, dc_assets, 'imagenet512_uvit_huge_dcae.py')
    trainer = Trainer(config, str(tmp_path))
    assert trainer.spec.latent_format.stored == 'latents' and trainer.spec.resolution == RES
    assert trainer.spec.fid_stats == f'assets/fid_stats/fid_stats_imagenet{RES}_guided_diffusion.npz'
    trainer.fit()
    assert Image.open(tmp_path / 'samples' / '2.png').size[0] >= 2 * RES   # decoded images, not 4x4 codes

    # Evaluation takes the geometry from the autoencoder's folder, and decodes as diffusers' Sana pipeline does.
    reset_accelerate()
    config.sample.sample_steps = 2
    run = EvalRun.load(config, str(tmp_path / 'ckpts' / '2.ckpt'))
    assert run.spec.latent_format == LatentFormat('AutoencoderDC', 8, 4, 0.4, 0.0, 'latents', dc_assets['ae'])
    assert run.spec.data_shape == (8, 4, 4) and run.spec.resolution == RES
    random = SampleRandom(config.seed, range(3), run.device)
    samples, _ = draw_samples(run.framework, run.denoiser(), run.framework.build_sampler(config.sample),
                              run.spec.data_shape, run.conditioning(), random, config.sample.scale)
    images = run.space().decode(samples)
    with torch.no_grad():
        expected = AutoencoderDC.from_pretrained(dc_assets['ae']).decode(samples / 0.4).sample.clamp(-1, 1)
    assert images.shape == (3, 3, RES, RES) and samples.abs().max() > 0.1
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-5)


def test_dit_trains_on_dc_ae_latents_at_patch_size_1(assets, dc_assets, tmp_path):
    config = dc_config(assets, dc_assets, 'imagenet512_dit_xl1_dcae.py')
    Trainer(config, str(tmp_path)).fit()
    assert Image.open(tmp_path / 'samples' / '2.png').size[0] >= 2 * RES
    weights = torch.load(tmp_path / 'ckpts' / '2.ckpt' / 'nnet_ema.pth', weights_only=True)
    assert weights['final_layer.linear.weight'].shape[0] == 2 * 8                # eps and variance, 8 channels


def test_latent_geometry_comes_from_the_autoencoder_and_a_mismatch_is_one_line(assets, dc_assets, tmp_path):
    config = dc_config(assets, dc_assets, 'imagenet512_uvit_huge_dcae.py')
    store = build_dataset(config.dataset)
    fmt = latent_format(config, store)
    assert fmt == LatentFormat('AutoencoderDC', 8, 4, 0.4, 0.0, 'latents', store.store)
    assert latent_format(config) == LatentFormat('AutoencoderDC', 8, 4, 0.4, 0.0, 'latents', dc_assets['ae'])
    config.autoencoder.scale_factor = 0.2889                                # a config's scale wins
    assert latent_format(config, store).scale == latent_format(config).scale == 0.2889
    assert data_spec(config.dataset, (8, 4, 4), fmt).resolution == RES

    def one_line(call, *args):
        with pytest.raises(UserError) as info:
            call(*args)
        assert '\n' not in str(info.value)
        return str(info.value)

    message = one_line(data_spec, config.dataset, (4, 8, 8), fmt)           # a 4-channel network on DC-AE codes
    assert '4-channel latents (config.nnet)' in message and store.store in message and 'gives 8' in message
    config.dataset.resolution = 2 * RES
    message = one_line(data_spec, config.dataset, (8, 4, 4), fmt)
    assert f'config.dataset.resolution is {2 * RES}' in message and f'{RES}x{RES} images' in message
    del config.dataset['resolution']
    config.autoencoder.pretrained_path = assets['ae']                      # the KL autoencoder, not the store's
    message = one_line(latent_format, config, store)
    assert store.store in message and assets['ae'] in message and 'AutoencoderDC' in message

    # Evaluation reads no store: the checkpoint's network against the configured autoencoder folder.
    reset_accelerate()
    message = one_line(run_eval_mode, config, 'sample', str(tmp_path / 'never_read.ckpt'))
    assert '8-channel latents (config.nnet)' in message and assets['ae'] in message and 'gives 4' in message


# ---------------------------------------------------------------------------------------------- the scripts
def run_script(script, *args, fork=True):
    """``python script *args`` in a forked child of this process (tests/forking.py: the command line without the
    seconds of importing torch, diffusers and transformers again), or with ``fork=False`` in a fresh interpreter:
    each script here runs once as one."""
    if fork:
        return run_forked(os.path.join(ROOT, script), list(args), cwd=ROOT)
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, capture_output=True,
                          text=True)


def overrides(config_file, a, net):
    out = [f'--config={os.path.join(ROOT, "configs", config_file)}', f'--config.autoencoder.pretrained_path={a["ae"]}',
           '--config.log_with=none', '--config.train.num_workers=0', '--config.train.batch_size=4',
           '--config.train.n_steps=2', '--config.train.save_interval=2', '--config.train.final_eval=False',
           '--config.train.eval_interval=2', '--config.train.grid_size=2', '--config.eval.train_sample_steps=2']
    return out + [f'--config.nnet.{k}={v}' for k, v in {**TINY_NET, **net}.items()]


def test_the_scripts_train_evaluate_and_sample_from_prompts(assets, tmp_path):
    ldm = overrides('imagenet256_uvit_large.py', assets, {'num_classes': 3}) + [
        f'--config.dataset.path={assets["imagenet"]}']
    result = run_script('train_ldm.py', *ldm, f'--workdir={tmp_path / "ldm"}')
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / 'ldm' / 'samples' / '2.png').is_file()
    result = run_script('eval_ldm.py', *ldm, f'--nnet_path={tmp_path / "ldm" / "ckpts" / "2.ckpt"}',
                        f'--config.eval.ref_stats={assets["stats"]}',
                        f'--config.eval.inception_path={assets["inception"]}',
                        '--config.sample.n_samples=2', '--config.sample.mini_batch_size=2',
                        '--config.sample.sample_steps=2', fork=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'fid=' in result.stdout
    assert (tmp_path / 'ldm' / 'ckpts' / '2.ckpt' /
            'eval_sample_imagenet_features_n2_fid_dpm_solver_nfe2_scale0.4_ema.json').is_file()

    t2i = overrides('mscoco_uvit_small.py', assets, {'clip_dim': TEXT_HIDDEN_SIZE}) + [
        f'--config.dataset.path={assets["coco"]}', f'--config.text_encoder.pretrained_path={assets["clip"]}']
    result = run_script('train_t2i_discrete.py', *t2i, f'--workdir={tmp_path / "t2i"}', fork=False)
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_script('scripts/sample_t2i.py', *t2i, f'--nnet_path={tmp_path / "t2i" / "ckpts" / "2.ckpt"}',
                        f'--prompts={assets["prompts"]}', '--n_per_prompt=3', f'--out={tmp_path / "mine"}',
                        '--config.sample.sample_steps=2', fork=False)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((tmp_path / 'mine' / 'prompts.json').read_text())
    assert [p['prompt'] for p in record['prompts']] == ['a cat sat', 'a dog']
    assert Image.open(tmp_path / 'mine' / '000005.png').size == (RES, RES)
    assert (tmp_path / 'mine' / 'grid.png').is_file()


@pytest.mark.parametrize('script,config_file,extra,message', [
    ('train.py', 'imagenet256_uvit_large.py', [],
     'error: train.py is for pixel models, but this config is a latent one: run it with train_ldm.py'),
    ('train_ldm.py', 'mscoco_uvit_small.py', [],  # the one train_ldm.py run in a fresh interpreter (fork=, below)
     'error: train_ldm.py is for latent models, but this config is a text one: run it with train_t2i_discrete.py'),
    # the network is built before the autoencoder is asked for: a tiny one (U-ViT-L/2 takes seconds to initialise)
    ('eval_ldm.py', 'imagenet256_uvit_large.py', ['--nnet_path=absent.pth', '--config.autoencoder.pretrained_path=',
                                                  '--config.dataset.path={imagenet}',
                                                  *[f'--config.nnet.{k}={v}' for k, v in TINY_NET.items()]],
     'error: decoding latents needs the autoencoder: set config.autoencoder.pretrained_path'),
    ('train_ldm.py', 'imagenet256_uvit_large.py', ['--config.dataset.path=/nonexistent/features'],
     'error: no imagenet features at /nonexistent/features/train: extract them with'),
])
def test_bad_input_is_one_line(assets, script, config_file, extra, message):
    extra = [arg.format(**assets) for arg in extra]
    result = run_script(script, f'--config={os.path.join(ROOT, "configs", config_file)}', *extra,
                        fork=(script, config_file) != ('train_ldm.py', 'mscoco_uvit_small.py'))
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(message), result.stderr[-2000:]
