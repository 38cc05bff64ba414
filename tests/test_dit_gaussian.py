"""DiT in the Gaussian framework: the learned variance (its loss term against a hand-computed Gaussian KL and
decoder, its range), the ancestral sampler over it on a respaced chain, the eps half for every other sampler, DiT's
time and guidance conventions, the one-line errors, training in pixel and latent space, and the XL/2 config."""
import json
import math
import os

import ml_collections
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import reset_accelerate
from libs.config import load_config_file
from libs.diffusion import build_framework
from libs.diffusion.conditioning import build_conditioning
from libs.diffusion.ddpm import learned_log_variance, posterior_step
from libs.diffusion.gaussian import GaussianFramework
from libs.diffusion.samplers import build_sampler, ddpm_ancestral, ddpm_ancestral_learned, ddpm_steps
from libs.diffusion.schedules import VPSDE, DiscreteSchedule
from libs.errors import UserError
from libs.nets import build_nnet, count_parameters
from libs.nets.dit import DiT
from libs.training.loop import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_DIT = dict(hidden_size=32, depth=2, num_heads=2)


def cfg(**kwargs):
    return ml_collections.ConfigDict(kwargs)


class FakeNet(torch.nn.Module):
    """A backbone of the protocol whose output is ``fn(x, model_time, y)``; records the model times it sees."""

    condition = 'labels'
    num_classes = 11
    classifies = False

    def __init__(self, fn, channels=1, learned_variance=True):
        super().__init__()
        self.fn = fn
        self.output = 'image+variance' if learned_variance else 'image'
        self.input_shape = (channels, 4, 4)
        self.times = []

    def forward(self, x, t, y=None):
        self.times.append(t.detach().clone())
        return self.fn(x, t, y)


def noise_source(seed):
    generator = torch.Generator().manual_seed(seed)
    return lambda x: torch.randn(x.shape, generator=generator, dtype=x.dtype)


# ------------------------------------------------------------------------------------------- the variance's math
def test_frac_one_and_zero_give_beta_and_beta_tilde():
    beta, beta_tilde = 0.02, 0.013
    v = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64)
    log_var = learned_log_variance(v, math.log(beta), math.log(beta_tilde))
    torch.testing.assert_close(torch.exp(log_var), torch.tensor([beta, beta_tilde, math.sqrt(beta * beta_tilde)],
                                                                  dtype=torch.float64), rtol=1e-12, atol=0)


def phi(z):
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def test_the_vlb_term_is_the_hand_computed_gaussian_kl_and_decoder_in_bits():
    schedule = DiscreteSchedule.linear(N=10, beta_start=0.01, beta_end=0.2)
    framework = GaussianFramework(schedule, 'noise', learned_variance=True)
    betas = schedule.betas.tolist()
    abar = [1.0] + schedule.alphas_cumprod.tolist()
    torch.manual_seed(0)
    x0 = torch.randint(20, 236, (2, 1, 2, 2)).double() / 127.5 - 1.0             # inner levels of the 8-bit grid
    eps, eps_hat = torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2) * 0.5
    v = torch.rand(2, 1, 2, 2) * 2 - 1
    n = [5, 1]
    t = torch.tensor(n, dtype=torch.float32) / 10
    x_t = torch.stack([math.sqrt(abar[k]) * x0[i] + math.sqrt(1 - abar[k]) * eps[i] for i, k in enumerate(n)])
    got = framework.vlb_term(eps_hat, v, x0, x_t, t)

    expected = []
    for i, k in enumerate(n):
        bits = []
        for x, xt, e, vv in zip(x0[i].flatten().tolist(), x_t[i].flatten().tolist(), eps_hat[i].flatten().tolist(),
                                v[i].flatten().tolist()):
            x0_hat = (xt - math.sqrt(1 - abar[k]) * e) / math.sqrt(abar[k])
            c0 = math.sqrt(abar[k - 1]) * betas[k - 1] / (1 - abar[k])
            ct = math.sqrt(1 - betas[k - 1]) * (1 - abar[k - 1]) / (1 - abar[k])
            tilde = (1 - abar[k - 1]) * betas[k - 1] / (1 - abar[k]) if k > 1 else \
                (1 - abar[1]) * betas[1] / (1 - abar[2])                            # clipped at n = 1
            frac = (vv + 1) / 2
            var_p = math.exp(frac * math.log(betas[k - 1]) + (1 - frac) * math.log(tilde))
            mu_p = c0 * x0_hat + ct * xt
            if k > 1:
                mu_q = c0 * x + ct * xt
                nats = 0.5 * (math.log(var_p / tilde) + tilde / var_p + (mu_q - mu_p) ** 2 / var_p - 1)
            else:
                s = math.sqrt(var_p)
                nats = -math.log(phi((x + 1 / 255 - mu_p) / s) - phi((x - 1 / 255 - mu_p) / s))
            bits.append(nats / math.log(2))
        expected.append(sum(bits) / len(bits))
    torch.testing.assert_close(got.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=0)


def test_the_hybrid_loss_is_mse_plus_lambda_n_vlb_and_the_vlb_trains_only_the_variance():
    schedule = DiscreteSchedule.linear(N=10, beta_start=0.01, beta_end=0.2)
    framework = GaussianFramework(schedule, 'noise', learned_variance=True, vlb_lambda=0.05)
    torch.manual_seed(1)
    x0, noise = torch.rand(3, 1, 2, 2) * 2 - 1, torch.randn(3, 1, 2, 2)
    t = torch.tensor([0.3, 0.7, 1.0])
    x_t = x0 + noise   # any state: the loss is a function of (output, x0, noise, x_t, t)
    output = torch.randn(3, 2, 2, 2, requires_grad=True)
    loss = framework.loss_of_output(output, x0, noise, x_t, t)
    mse = (output[:, :1] - noise).pow(2).flatten(1).mean(1)
    vlb = framework.vlb_term(output[:, :1], output[:, 1:], x0, x_t, t)
    torch.testing.assert_close(loss, mse + 0.05 * 10 * vlb)
    loss.sum().backward()
    torch.testing.assert_close(output.grad[:, :1], 2 * (output[:, :1] - noise).detach() / 4)   # the mse's alone
    assert output.grad[:, 1:].abs().sum() > 0


# ------------------------------------------------------------------------------------------------- the samplers
def test_the_learned_sampler_at_the_ends_of_the_range_is_the_fixed_variance_sampler_draw_for_draw():
    schedule = DiscreteSchedule.linear(N=20, beta_start=0.01, beta_end=0.3)
    eps_fn = lambda x, t: 0.4 * x * t.view(-1, 1, 1, 1) + 0.1    # noqa: E731
    x_T = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    for v, variance in ((-1.0, 'beta_tilde'), (1.0, 'beta')):
        def model_fn(x, t):
            return torch.cat([eps_fn(x, t), torch.full_like(x, v)], dim=1)
        fixed = ddpm_ancestral(eps_fn, schedule, x_T, variance=variance, noise=noise_source(3))
        learned = ddpm_ancestral_learned(model_fn, schedule, x_T, noise=noise_source(3))
        torch.testing.assert_close(learned, fixed, rtol=1e-12, atol=1e-12)
    sampler = build_sampler(cfg(algorithm='ddpm_ancestral_learned', sample_steps=20), schedule)
    assert sampler.consumes == 'noise+variance' and sampler.guided_channels == 0
    model_fn = lambda x, t: torch.cat([eps_fn(x, t), -torch.ones_like(x)], dim=1)   # noqa: E731
    torch.testing.assert_close(sampler(model_fn, x_T, noise=noise_source(4)),
                               ddpm_ancestral(eps_fn, schedule, x_T, variance='beta_tilde', noise=noise_source(4)))


def test_respacing_keeps_the_abar_of_the_kept_steps_and_calls_the_network_at_their_own_times():
    # Nichol & Dhariwal's space_timesteps(1000, '250'): round(i * 999 / 249) accumulated, 0-based
    stride, position, kept = 999 / 249, 0.0, []
    for _ in range(250):
        kept.append(round(position) + 1)
        position += stride
    assert ddpm_steps(1000, 250)[::-1] == kept
    schedule = DiscreteSchedule.linear()
    abar = schedule.alphas_cumprod.tolist()
    grid = ddpm_steps(1000, 250)
    chain = [1.0]
    for n_p, n in zip([None] + grid[::-1][:-1], grid[::-1]):           # the respaced betas, from abar
        beta = posterior_step(abar[n - 1], 1.0 if n_p is None else abar[n_p - 1]).beta
        chain.append(chain[-1] * (1 - beta))
    np.testing.assert_allclose(chain[1:], [abar[n - 1] for n in grid[::-1]], rtol=1e-10)

    # one step of a two-step chain: eps = 0, v = 1 -> x / sqrt(alpha) + sqrt(beta) z with the respaced beta
    small = DiscreteSchedule.linear(N=10, beta_start=0.01, beta_end=0.2)
    times = []

    def model_fn(x, t):
        times.append(t[0].item() * 10)
        return torch.cat([torch.zeros_like(x), torch.ones_like(x)], dim=1)
    x_T = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    out = ddpm_ancestral_learned(model_fn, small, x_T, steps_grid=[10, 4], noise=noise_source(5))
    abar10, abar4 = small.alphas_cumprod[9].item(), small.alphas_cumprod[3].item()
    z = noise_source(5)(x_T)
    x4 = x_T / math.sqrt(abar10 / abar4) + math.sqrt(1 - abar10 / abar4) * z
    torch.testing.assert_close(out, x4 / math.sqrt(abar4), rtol=1e-12, atol=1e-12)   # the last step: no noise
    assert times == pytest.approx([10, 4])


@pytest.mark.parametrize('algorithm,steps', [('dpm_solver', 6), ('dpm_solver++', 5), ('unipc', 5), ('ddim', 5),
                                             ('heun', 5), ('ddpm_ancestral', 5)])
def test_the_other_samplers_see_only_the_eps_half(algorithm, steps):
    schedule = DiscreteSchedule.linear(N=100)
    eps = lambda x, t, y: 0.3 * x + 0.01 * t.view(-1, 1, 1, 1) + 0.1 * y.view(-1, 1, 1, 1)   # noqa: E731
    learned = FakeNet(lambda x, t, y: torch.cat([eps(x, t, y), torch.full_like(x, 1e6)], 1), channels=2)
    plain = FakeNet(eps, channels=2, learned_variance=False)
    sample_cfg = cfg(algorithm=algorithm, sample_steps=steps)
    results = []
    for net, flag in ((learned, True), (plain, False)):
        framework = GaussianFramework(schedule, 'noise', learned_variance=flag)
        framework.check_backbone(net)
        random = noise_source(6)
        random.randn = lambda shape, g=torch.Generator().manual_seed(7): torch.randn((2,) + shape, generator=g)
        cond, null = {'y': torch.tensor([1, 2])}, {'y': torch.tensor([10, 10])}
        results.append(framework.sample(framework.denoiser(net), framework.build_sampler(sample_cfg), (2, 4, 4),
                                        cond, random, null, 0.5))
    assert torch.equal(results[0], results[1])


# ------------------------------------------------------------------------------------------- DiT's conventions
def test_the_time_offset_gives_the_network_the_step_index_n_minus_one():
    spy = FakeNet(lambda x, t, y: torch.zeros_like(x), learned_variance=False)
    schedule = DiscreteSchedule.linear(N=10, time_offset=-1)
    denoiser = GaussianFramework(schedule).denoiser(spy)
    ddpm_ancestral(lambda x, t: denoiser.noise(x, t, y=torch.zeros(2, dtype=torch.long)), schedule,
                   torch.randn(2, 1, 4, 4), noise=noise_source(0))
    assert [t[0].item() for t in spy.times] == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    config = load_config_file(os.path.join(ROOT, 'configs', 'imagenet256_dit_xl2.py'))
    framework = build_framework(config)
    assert framework.model_time(torch.tensor([1 / 1000, 1.0], dtype=torch.float64)).tolist() == [0.0, 999.0]


def test_guidance_of_three_of_four_channels_takes_the_fourth_and_the_variance_from_the_conditional_branch():
    def output(x, t, y):
        eps = x + y.view(-1, 1, 1, 1).float()                          # eps_c - eps_u = y - 10 on every channel
        return torch.cat([eps, 5 * eps], dim=1)                         # the variance also depends on y
    net = FakeNet(output, channels=4)
    framework = GaussianFramework(DiscreteSchedule.linear(N=10), learned_variance=True)
    denoiser = framework.denoiser(net)
    x, t = torch.zeros(2, 4, 4, 4), torch.full((2,), 0.5)
    cond, null = {'y': torch.tensor([1, 3])}, {'y': torch.tensor([10, 10])}
    scale = 0.5                                                         # DiT's cfg 1.5
    y = torch.tensor([1.0, 3.0]).view(-1, 1, 1, 1)
    dit = 10 + 1.5 * (y - 10)                                           # eps_u + s (eps_c - eps_u)
    eps = framework.guided(denoiser, cond, null, scale, channels=3)(x, t)
    torch.testing.assert_close(eps[:, :3], dit.expand(2, 3, 4, 4))
    torch.testing.assert_close(eps[:, 3:], y.expand(2, 1, 4, 4))
    both = framework.guided(denoiser, cond, null, scale, channels=3, consumes='noise+variance')(x, t)
    torch.testing.assert_close(both[:, :3], dit.expand(2, 3, 4, 4))
    torch.testing.assert_close(both[:, 3:], torch.cat([y, 5 * y.expand(2, 4, 1, 1)], 1).expand(2, 5, 4, 4))
    torch.testing.assert_close(denoiser.variance(x, t, **cond), 5 * y.expand(2, 4, 4, 4))

    # through framework.sample: sample.guided_channels reaches the model function the sampler integrates
    seen = []
    sampler = framework.build_sampler(cfg(algorithm='ddpm_ancestral_learned', sample_steps=1, guided_channels=3))
    real = sampler

    def spy_sampler(model_fn, x_T, noise=None):
        seen.append(model_fn(x_T, torch.full((2,), 1.0)))
        return real(model_fn, x_T, noise)
    spy_sampler.consumes, spy_sampler.guided_channels = sampler.consumes, sampler.guided_channels
    random = noise_source(1)
    random.randn = lambda shape: torch.zeros((2,) + shape)
    framework.sample(denoiser, spy_sampler, (4, 4, 4), cond, random, null, scale)
    torch.testing.assert_close(seen[0][:, :4], torch.cat([dit.expand(2, 3, 4, 4), y.expand(2, 1, 4, 4)], 1))


def test_mismatches_and_bad_options_are_one_line():
    learned = GaussianFramework(DiscreteSchedule.linear(N=10), learned_variance=True)
    plain = GaussianFramework(DiscreteSchedule.linear(N=10))
    small = dict(input_size=4, patch_size=2, in_channels=1, num_classes=10, **TINY_DIT)
    cases = [
        (lambda: learned.check_backbone(DiT(learn_sigma=False, **small)), 'config.learned_variance=True needs'),
        (lambda: plain.check_backbone(DiT(learn_sigma=True, **small)), "declares 'image\\+variance'"),
        (lambda: GaussianFramework(VPSDE(), learned_variance=True), 'needs a discrete schedule'),
        (lambda: build_sampler(cfg(algorithm='ddpm_ancestral_learned', sample_steps=5), VPSDE()),
         'needs a discrete schedule'),
        (lambda: build_sampler(cfg(algorithm='unipc', sample_steps=5, guided_channels=-1), VPSDE()),
         'guided_channels must be'),
        (lambda: plain.denoiser(DiT(learn_sigma=False, **small)).variance(torch.zeros(1, 1, 4, 4), 0.5,
                                                                          y=torch.zeros(1, dtype=torch.long)),
         'no learned variance'),
        (lambda: learned.sample(None, build_sampler(cfg(algorithm='ddim', sample_steps=2, guided_channels=5),
                                                    learned.schedule), (4, 4, 4), {}, None), 'more than the 4'),
    ]
    for fn, message in cases:
        with pytest.raises(UserError, match=message) as info:
            fn()
        assert '\n' not in str(info.value)


# --------------------------------------------------------------------------------------------------- configs
def test_the_xl2_config_builds_the_released_network_and_the_framework_accepts_it():
    config = load_config_file(os.path.join(ROOT, 'configs', 'imagenet256_dit_xl2.py'))
    with torch.device('meta'):
        nnet = build_nnet(config.nnet)
    assert count_parameters(nnet) == 675_129_632
    framework = build_framework(config)
    framework.check_backbone(nnet)
    assert framework.learned_variance and framework.schedule.num_steps == 1000
    assert (config.sample.algorithm, config.sample.sample_steps, config.sample.scale,
            config.sample.guided_channels, config.train.p_uncond) == ('ddpm_ancestral_learned', 250, 0.5, 3, 0.0)
    conditioning = build_conditioning(config, nnet, num_classes_data=1000)
    null = conditioning.null({'y': torch.zeros(2, dtype=torch.long)})['y']
    assert (null == nnet.num_classes - 1).all() and nnet.num_classes == 1001      # DiT's "no class" row


# ------------------------------------------------------------------------------------------------ training
def losses(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return {row['step']: row['loss'] for row in map(json.loads, f)}


pytestmark = pytest.mark.usefixtures('fresh_accelerate_state')


def test_digits_dit_loss_falls_over_30_steps(tmp_path):
    config = load_config_file(os.path.join(ROOT, 'configs', 'digits_dit.py'))
    config.nnet.update(TINY_DIT)
    config.log_with = 'none'
    config.train.update(n_steps=30, batch_size=64, log_interval=1, eval_interval=10 ** 9, save_interval=30,
                        final_eval=False, num_workers=0)
    config.lr_scheduler.warmup_steps = 2
    Trainer(config, str(tmp_path)).fit()
    history = losses(tmp_path)
    first = sum(history[s] for s in range(1, 6)) / 5
    last = sum(history[s] for s in range(26, 31)) / 5
    assert last < 0.8 * first, (first, last)
    assert (tmp_path / 'ckpts' / '30.ckpt' / 'nnet_ema.pth').is_file()


@pytest.fixture(scope='module')
def features(tmp_path_factory):
    """Latents (4, 8, 8) of 12 images in two classes, extracted with the tiny autoencoder."""
    from libs.latent.extract import extract_imagenet
    from tiny_models import save_tiny_autoencoder
    base = tmp_path_factory.mktemp('dit_latent')
    rng = np.random.default_rng(0)
    for label, wnid in enumerate(['n01', 'n02']):
        os.makedirs(base / 'imagenet' / wnid)
        for i in range(6):
            pixels = np.clip(rng.normal(128, 40, (16, 16, 3)) + (60, -60)[label], 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(base / 'imagenet' / wnid / f'{i}.png')
    ae = save_tiny_autoencoder(base / 'ae')
    extract_imagenet(str(base / 'imagenet'), str(base / 'features'), resolution=16, autoencoder=ae, batch_size=4,
                     shard_size=6, num_workers=0)
    reset_accelerate()
    return {'ae': ae, 'features': str(base / 'features')}


def test_a_tiny_dit_trains_and_samples_in_latent_space(features, tmp_path):
    config = load_config_file(os.path.join(ROOT, 'configs', 'imagenet256_dit_xl2.py'))
    config.nnet.update(input_size=8, num_classes=2, **TINY_DIT)
    config.autoencoder.pretrained_path = features['ae']
    config.dataset.path = features['features']
    config.log_with = 'none'
    config.train.update(n_steps=4, batch_size=4, log_interval=1, eval_interval=4, save_interval=4, grid_size=4,
                        num_workers=0, final_eval=False)
    config.eval.update(train_n_samples=0, train_algorithm='ddpm_ancestral_learned', train_sample_steps=3)
    Trainer(config, str(tmp_path)).fit()
    history = losses(tmp_path)
    assert sorted(history) == [1, 2, 3, 4] and all(math.isfinite(v) for v in history.values())
    assert Image.open(tmp_path / 'samples' / '4.png').size[0] >= 2 * 16    # decoded images, not 8x8 latents
    assert (tmp_path / 'ckpts' / '4.ckpt' / 'nnet_ema.pth').is_file()
