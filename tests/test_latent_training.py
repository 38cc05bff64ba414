"""Latent and text-to-image U-ViT end to end, with a tiny autoencoder and a tiny CLIP built here: extract features ->
train (train_ldm.py / train_t2i_discrete.py and the shared Trainer) -> guided sampling -> decode -> FID JSON; plus
the condition objects (label / text dropout, the "no condition" of guidance) and the one-line errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import reset_accelerate
from libs.diffusion.conditioning import ClassLabels, TextContexts, Unconditional
from libs.config import load_config_file
from libs.diffusion.gaussian import GaussianFramework
from libs.diffusion.schedules import VPSDE
from libs.errors import UserError
from libs.evaluation import run_eval_mode
from libs.evaluation.harness import EvalRun
from libs.latent.extract import extract_empty_context, extract_imagenet, extract_mscoco, extract_test_prompts
from libs.latent.spaces import LatentSpace
from libs.training.loop import Trainer
from tiny_models import TEXT_HIDDEN_SIZE, save_tiny_autoencoder, save_tiny_text_encoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RES = 16        # images; the tiny autoencoder halves them: latents (4, 8, 8)
TINY_NET = dict(img_size=RES // 2, patch_size=2, in_chans=4, embed_dim=32, depth=2, num_heads=2)


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


def tiny_config(a, config_file, **train):
    """A paper config with the tiny network and the files of ``assets``; checkpoints with a 4-sample FID (each FID
    costs seconds: a 2048-dimensional matrix square root)."""
    config = load_config_file(os.path.join(ROOT, 'configs', config_file))
    config.nnet.update(TINY_NET)
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
def test_latents_are_drawn_from_the_stored_moments():
    space = LatentSpace('', 0.5, 'cpu')
    mean = torch.randn(1, 4, 8, 8)
    certain = torch.cat([mean, torch.full_like(mean, -60.0)], dim=1)      # variance ~0: the latent is 0.5 * mean
    assert torch.allclose(space.training_input(certain), 0.5 * mean, atol=1e-6)
    wide = torch.cat([torch.zeros(2000, 4, 1, 1), torch.full((2000, 4, 1, 1), np.log(4.0))], dim=1)
    draws = space.training_input(wide)                                    # std 2, times 0.5 -> std 1
    assert abs(draws.std().item() - 1.0) < 0.05 and abs(draws.mean().item()) < 0.05
    with pytest.raises(Exception, match='config.autoencoder.pretrained_path'):
        space.decode(torch.zeros(1, 4, 8, 8))


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


# ---------------------------------------------------------------------------------------------- the scripts
def run_script(script, *args):
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
                        f'--config.eval.ref_stats={assets["stats"]}', f'--config.eval.inception_path={assets["inception"]}',
                        '--config.sample.n_samples=2', '--config.sample.mini_batch_size=2',
                        '--config.sample.sample_steps=2')
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'fid=' in result.stdout
    assert (tmp_path / 'ldm' / 'ckpts' / '2.ckpt' /
            'eval_sample_imagenet_features_n2_fid_dpm_solver_nfe2_scale0.4_ema.json').is_file()

    t2i = overrides('mscoco_uvit_small.py', assets, {'clip_dim': TEXT_HIDDEN_SIZE}) + [
        f'--config.dataset.path={assets["coco"]}', f'--config.text_encoder.pretrained_path={assets["clip"]}']
    result = run_script('train_t2i_discrete.py', *t2i, f'--workdir={tmp_path / "t2i"}')
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_script('scripts/sample_t2i.py', *t2i, f'--nnet_path={tmp_path / "t2i" / "ckpts" / "2.ckpt"}',
                        f'--prompts={assets["prompts"]}', '--n_per_prompt=3', f'--out={tmp_path / "mine"}',
                        '--config.sample.sample_steps=2')
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((tmp_path / 'mine' / 'prompts.json').read_text())
    assert [p['prompt'] for p in record['prompts']] == ['a cat sat', 'a dog']
    assert Image.open(tmp_path / 'mine' / '000005.png').size == (RES, RES)
    assert (tmp_path / 'mine' / 'grid.png').is_file()


@pytest.mark.parametrize('script,config_file,extra,message', [
    ('train.py', 'imagenet256_uvit_large.py', [],
     'error: train.py is for pixel models, but this config is a latent one: run it with train_ldm.py'),
    ('train_ldm.py', 'mscoco_uvit_small.py', [],
     'error: train_ldm.py is for latent models, but this config is a text one: run it with train_t2i_discrete.py'),
    ('eval_ldm.py', 'imagenet256_uvit_large.py', ['--nnet_path=absent.pth', '--config.autoencoder.pretrained_path=',
                                                  '--config.dataset.path={imagenet}'],
     'error: decoding latents needs the Stable Diffusion autoencoder'),
    ('train_ldm.py', 'imagenet256_uvit_large.py', ['--config.dataset.path=/nonexistent/features'],
     'error: no imagenet features at /nonexistent/features/train: extract them with'),
])
def test_bad_input_is_one_line(assets, script, config_file, extra, message):
    extra = [arg.format(**assets) for arg in extra]
    result = run_script(script, f'--config={os.path.join(ROOT, "configs", config_file)}', *extra)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(message), result.stderr[-2000:]
