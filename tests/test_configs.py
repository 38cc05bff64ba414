"""Every config file resolves, and the paper's configs build networks with the released parameter counts."""
import glob
import json
import os

import pytest
import torch

from libs.config import load_config_file
from libs.diffusion import build_framework
from libs.nets import build_nnet, count_parameters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(ROOT, 'tests', 'data', 'uvit_official_state_dicts.json')
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                 if not os.path.basename(p).startswith('_'))  # _name.py: shared recipes, not configs


@pytest.mark.parametrize('path', CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_config_resolves_and_builds(path):
    config = load_config_file(path)
    with torch.device('meta'):
        nnet = build_nnet(config.nnet)
    assert count_parameters(nnet) > 0
    assert config.train.batch_size > 0 and config.sample.sample_steps > 0
    framework = build_framework(config)
    framework.check_backbone(nnet)
    assert callable(framework.build_sampler(config.sample))


@pytest.mark.parametrize('name', ['cifar10_uvit_small', 'celeba64_uvit_small', 'imagenet64_uvit_mid',
                                  'imagenet64_uvit_large', 'imagenet256_uvit_large', 'imagenet256_uvit_huge',
                                  'imagenet512_uvit_large', 'imagenet512_uvit_huge', 'mscoco_uvit_small'])
def test_paper_configs_have_the_released_networks(name):
    with open(REFERENCE) as f:
        released = json.load(f)[name]
    config = load_config_file(os.path.join(ROOT, 'configs', f'{name}.py'))
    with torch.device('meta'):
        nnet = build_nnet(config.nnet)
    assert count_parameters(nnet) == released['n_params']
    assert {k: list(v.shape) for k, v in nnet.state_dict().items()} == released['keys']
    for key, value in released['nnet'].items():
        assert config.nnet[key] == value, key


# The U-ViT release's README trains each paper config with one script: train.py (pixels) and train_ldm.py (U-ViT-L
# latents) on the continuous VP SDE, train_ldm_discrete.py (U-ViT-H latents) and train_t2i_discrete.py on the discrete
# Stable Diffusion schedule, whose network sees the step n in 1..1000. Its checkpoints sample right only on theirs.
RELEASE_SCHEDULES = {'cifar10_uvit_small': ('vpsde', 999), 'celeba64_uvit_small': ('vpsde', 999),
                     'imagenet64_uvit_mid': ('vpsde', 999), 'imagenet64_uvit_large': ('vpsde', 999),
                     'imagenet256_uvit_large': ('vpsde', 999), 'imagenet512_uvit_large': ('vpsde', 999),
                     'imagenet256_uvit_huge': ('stable_diffusion', 1000),
                     'imagenet512_uvit_huge': ('stable_diffusion', 1000),
                     'mscoco_uvit_small': ('stable_diffusion', 1000)}


@pytest.mark.parametrize('name', sorted(RELEASE_SCHEDULES))
def test_paper_configs_train_and_sample_on_the_releases_schedules(name):
    from libs.diffusion.schedules import DiscreteSchedule
    schedule, time_scale = RELEASE_SCHEDULES[name]
    config = load_config_file(os.path.join(ROOT, 'configs', f'{name}.py'))
    assert config.schedule.name == schedule
    framework = build_framework(config)
    t = torch.tensor([0.25, 1.0], dtype=torch.float64)
    assert framework.model_time(t).tolist() == pytest.approx((time_scale * t).tolist())
    if schedule == 'stable_diffusion':  # alphas_cumprod of linspace(sqrt 0.00085, sqrt 0.012, 1000)^2 at t = n / N
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        assert isinstance(framework.schedule, DiscreteSchedule)
        expected = torch.cumprod(1 - betas, 0)[[249, 999]].sqrt()
        assert framework.schedule.alpha(t).tolist() == pytest.approx(expected.tolist(), rel=1e-9)


# DDAE's release (config/*.yaml): parameters of its UNet, epochs x 50,000 / batch steps, warm-up epochs, EMA
DDAE = {
    'cifar10_ddpm_unet': (35_746_307, 'gaussian', 128, 2000, 13, 0.9999, 0.1, 0.0, 'out_6', 11),
    'cifar10_edm_unet': (35_746_307, 'edm', 128, 2000, 200, 0.9993, 0.13, 0.0, 'out_7', 4),
    'cifar10_ddpm_ddpmpp': (56_524_291, 'gaussian', 64, 2000, 13, 0.9999, 0.1, 0.0, 'out_6', 11),
    'cifar10_edm_ddpmpp': (56_524_291, 'edm', 64, 2000, 200, 0.9993, 0.13, 0.0, 'out_7', 4),
    'cifar10_edm_ddpmpp_aug': (56_525_443, 'edm', 64, 4000, 200, 0.9993, 0.13, 0.12, 'out_7', 4),
}


@pytest.mark.parametrize('name', sorted(DDAE))
def test_ddae_configs_have_the_releases_networks_and_hyperparameters(name):
    params, framework, batch, epochs, warm, ema, dropout, augment, layer, level = DDAE[name]
    config = load_config_file(os.path.join(ROOT, 'configs', f'{name}.py'))
    with torch.device('meta'):
        nnet = build_nnet(config.nnet)
    assert count_parameters(nnet) == params
    assert config.framework == framework and config.train.batch_size == batch
    steps_per_epoch = 50_000 / batch
    assert config.train.n_steps == round(epochs * steps_per_epoch)
    assert config.lr_scheduler.warmup_steps == round(warm * steps_per_epoch)
    assert config.lr_scheduler.name == 'customized'
    assert (config.optimizer.name, config.optimizer.lr, config.optimizer.weight_decay) == ('adam', 1e-4, 0.0)
    assert config.train.ema_rate == ema and config.train.grad_clip == 1.0 and config.dataset.random_flip
    assert config.nnet.dropout == dropout and config.edm.augment_prob == augment
    assert (config.probe.layers, config.probe.level, config.probe.epochs, config.probe.lr) == (layer, level, 15, 1e-3)
    assert layer in nnet.feature_layers()
    if framework == 'edm':
        assert (config.sample.algorithm, config.sample.sample_steps) == ('heun', 35)
        assert (config.edm.p_mean, config.edm.p_std, config.edm.sigma_data) == (-1.2, 1.2, 0.5)
    else:
        assert (config.sample.algorithm, config.sample.sample_steps, config.sample.eta) == ('ddim', 100, 0.0)
        assert build_framework(config).schedule.model_time(torch.tensor(0.5)).item() == 0.5   # DDAE's n / N


def test_sit_xl_2_is_dit_xl_2_trained_as_a_flow():
    """SiT's release: DiT-XL/2's network and 2C head (675,129,632 parameters, the variance half dropped), the linear
    path, velocity prediction, DiT's optimiser and EMA, its SDE sampler with 250 evaluations."""
    config = load_config_file(os.path.join(ROOT, 'configs', 'imagenet256_sit_xl2.py'))
    with torch.device('meta'):
        nnet = build_nnet(config.nnet)
    assert count_parameters(nnet) == 675_129_632 and nnet.output == 'image+variance'
    framework = build_framework(config)
    framework.check_backbone(nnet)
    assert (framework.prediction, framework.drop_variance, framework.loss_weight) == ('velocity', True, '')
    assert type(framework.schedule).__name__ == 'LinearPath' and framework.schedule.train_range == (0.0, 1.0)
    assert framework.schedule.model_time(torch.tensor(0.0)).item() == 1.0    # SiT's time: 1 at the data
    assert (config.optimizer.name, config.optimizer.lr, config.optimizer.weight_decay) == ('adamw', 1e-4, 0.0)
    assert (config.train.batch_size, config.train.ema_rate, config.nnet.class_dropout_prob) == (256, 0.9999, 0.1)
    assert (config.sample.algorithm, config.sample.sample_steps, config.sample.diffusion_form,
            config.sample.last_step, config.sample.last_step_size) == ('flow_sde', 250, 'sigma', 'Mean', 0.04)
    assert framework.build_sampler(config.sample).consumes == 'velocity'


def test_sit_xl_2_with_repa_is_repas_release():
    """REPA's SiT-XL/2: a C head (675,111,184 parameters: SiT's 675,129,632 less the variance half of the final layer,
    1152 x 16 + 16), REPA's time t, block 8 of 28 aligned to DINOv2-B/14's 768-wide tokens on the 16 x 16 grid (224 px)
    through a 1152-2048-2048-768 projector of 8,131,328 parameters; its SDE sampler with cfg 1.8 on every channel,
    only where REPA's t <= 0.7."""
    from libs.diffusion.guidance import guidance_interval
    from libs.latent.vision_encoders import DINOV2_B14
    from libs.nets.protocol import check_token_depth
    from libs.training.repa import projector_mlp
    config = load_config_file(os.path.join(ROOT, 'configs', 'imagenet256_sit_xl2_repa.py'))
    with torch.device('meta'):
        nnet = build_nnet(config.nnet)
        projector = projector_mlp(nnet.token_dim, config.repa.projector_dim, DINOV2_B14['hidden_size'])
    assert count_parameters(nnet) == 675_111_184 and nnet.output == 'image'
    assert count_parameters(projector) == 8_131_328
    assert check_token_depth(nnet, config.repa.depth) == 8 and nnet.token_blocks() == 28
    assert tuple(nnet.token_grid) == (16, 16) and 16 * DINOV2_B14['patch_size'] == 224
    assert (config.repa.weight, config.repa.encoder) == (0.5, 'dinov2')
    framework = build_framework(config)
    framework.check_backbone(nnet)
    assert (framework.prediction, framework.drop_variance) == ('velocity', False)
    t = torch.tensor([0.0, 0.3, 1.0])
    assert torch.equal(framework.schedule.model_time(t), t)      # REPA's t: 0 at the data, 1 at the noise
    assert (config.train.grad_clip, config.train.batch_size, config.optimizer.lr) == (1.0, 256, 1e-4)
    assert (config.sample.algorithm, config.sample.sample_steps, config.sample.scale,
            config.sample.guided_channels) == ('flow_sde', 250, 0.8, 0)
    lo, hi = guidance_interval(config.sample)
    # guided where 0 < sigma / alpha <= hi, that is REPA's 0 < t <= 0.7, t = 0.7 included
    sigma_over_alpha = framework.schedule.ve_sigma(torch.tensor([0.7, 0.7 + 1e-6], dtype=torch.float64))
    assert lo == 0 and sigma_over_alpha[0] <= hi < sigma_over_alpha[1]
    assert framework.build_sampler(config.sample).consumes == 'velocity'
