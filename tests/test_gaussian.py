"""The Gaussian framework (libs/diffusion/gaussian.py): the Denoiser's conversions, L_simple
(``GaussianFramework.loss``) against its closed form for Gaussian data, and the framework's other pieces
(corruption, loss of an output, prior, guidance, sampling) against their definitions."""
import math

import ml_collections
import numpy as np
import pytest
import torch
from scipy import integrate

from libs.config import d
from libs.diffusion import build_framework
from libs.diffusion.framework import Framework
from libs.diffusion.gaussian import CONFIG_PREDICTIONS, Denoiser, GaussianFramework, noised, squared_error
from libs.diffusion.samplers import dpm_solver, time_grid
from libs.diffusion.schedules import DiscreteSchedule, VPSDE
from libs.errors import UserError
from libs.rng import SampleRandom


pytestmark = pytest.mark.usefixtures('one_thread')


def assert_close(actual, expected, rtol):
    """Elementwise |actual - expected| <= rtol (|expected| + max |expected|): relative, with an absolute floor that
    scales with the magnitudes compared (so rounding near zero entries of a large tensor does not fail it)."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


class RecordingNet(torch.nn.Module):
    """A fake backbone: out = sin(x) + model_time / 1000, in `dtype`; records the model times it saw."""

    def __init__(self, dtype=None):
        super().__init__()
        self.dtype = dtype
        self.times = []

    def forward(self, x, timesteps, y=None):
        self.times.append(timesteps.clone())
        out = torch.sin(x) + timesteps.view(-1, *([1] * (x.ndim - 1))) / 1000
        return out if self.dtype is None else out.to(self.dtype)


class ExactGaussianNet(torch.nn.Module):
    """The optimal network for x_0 ~ N(m, s^2 I): E[eps | x_t] or E[x_0 | x_t], called with model times."""

    def __init__(self, schedule, m, s, prediction, time_scale):
        super().__init__()
        self.schedule, self.m, self.s, self.prediction, self.time_scale = schedule, m, s, prediction, time_scale

    def forward(self, x, timesteps):
        t = timesteps / self.time_scale
        shape = (-1,) + (1,) * (x.ndim - 1)
        alpha, sigma = self.schedule.alpha(t).view(shape), self.schedule.sigma(t).view(shape)
        residual = (x - alpha * self.m) / (alpha ** 2 * self.s ** 2 + sigma ** 2)
        eps, x0 = sigma * residual, self.m + alpha * self.s ** 2 * residual
        return {'noise': eps, 'x0': x0, 'v': alpha * eps - sigma * x0}[self.prediction]


@pytest.mark.parametrize('prediction', ['noise', 'x0', 'v'])
@pytest.mark.parametrize('schedule', [VPSDE(), DiscreteSchedule.cosine(N=100)], ids=repr)
def test_denoiser_conversions(prediction, schedule):
    net = RecordingNet()
    denoiser = Denoiser(net, schedule, prediction=prediction)
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    t = torch.tensor([0.05, 0.3, 0.7, 1.0], dtype=torch.float64)
    eps, x0 = denoiser.noise(x, t), denoiser.data(x, t)
    alpha, sigma = schedule.alpha(t).view(-1, 1, 1, 1), schedule.sigma(t).view(-1, 1, 1, 1)
    assert_close(alpha * x0 + sigma * eps, x, rtol=1e-12)
    out = torch.sin(x) + schedule.model_time(t).view(-1, 1, 1, 1) / 1000
    assert_close({'noise': eps, 'x0': x0, 'v': alpha * eps - sigma * x0}[prediction], out, rtol=1e-12)
    assert_close(net.times[0], schedule.model_time(t), rtol=1e-12)


def test_denoiser_time_conventions_and_dtypes():
    net = RecordingNet(dtype=torch.float16)
    denoiser = Denoiser(net, VPSDE())
    x = torch.randn(3, 1, 2, 2)
    out = denoiser.noise(x, 0.5)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert_close(net.times[-1], torch.full((3,), 499.5), rtol=1e-6)
    assert Denoiser(net, VPSDE(), prediction='x0').data(x, 0.5).dtype == torch.float32

    discrete = Denoiser(RecordingNet(), DiscreteSchedule.linear(N=1000))
    discrete.noise(x, torch.tensor([0.001, 0.5, 1.0]))
    assert_close(discrete.nnet.times[-1], torch.tensor([1.0, 500.0, 1000.0]), rtol=1e-6)

    with pytest.raises(UserError, match="known: noise, x0, v, velocity, score"):
        Denoiser(net, VPSDE(), prediction='eps')


def expected_l_simple(schedule, s, prediction):
    """E_t of the per-dimension posterior variance: Var[eps | x_t], Var[x_0 | x_t] or Var[v | x_t] (given x_t,
    v = (alpha x_t - x_0) / sigma, so the last is Var[x_0 | x_t] / sigma^2)."""
    def variance(t):
        t = torch.tensor(t, dtype=torch.float64)
        a2, s2 = schedule.alpha(t).item() ** 2, schedule.sigma(t).item() ** 2
        numerator = {'noise': a2 * s ** 2, 'x0': s ** 2 * s2, 'v': s ** 2}[prediction]
        return numerator / (a2 * s ** 2 + s2)

    if isinstance(schedule, DiscreteSchedule):
        return float(np.mean([variance(n / schedule.num_steps) for n in range(1, schedule.num_steps + 1)]))
    return integrate.quad(variance, 0.0, 1.0, epsabs=1e-10, limit=200)[0]


@pytest.mark.parametrize('prediction', ['noise', 'x0', 'v'])
@pytest.mark.parametrize('schedule,time_scale', [(VPSDE(), 999.0), (DiscreteSchedule.linear(N=200), 200.0)],
                         ids=['vpsde', 'ddpm200'])
def test_l_simple_of_the_exact_denoiser(schedule, time_scale, prediction):
    m, s = 0.3, 0.6
    framework = GaussianFramework(schedule, prediction)
    generator = torch.Generator().manual_seed(0)
    n = 8192
    x0 = m + s * torch.randn(n, 1, 2, 2, generator=generator)
    loss = framework.loss(ExactGaussianNet(schedule, m, s, prediction, time_scale), x0, generator=generator)
    assert loss.shape == (n,) and loss.dtype == torch.float32
    expected = expected_l_simple(schedule, s, prediction)
    standard_error = loss.std().item() / math.sqrt(n)
    assert abs(loss.mean().item() - expected) < 4 * standard_error, (loss.mean().item(), expected)


def test_l_simple_random_numbers_and_precision():
    schedule = DiscreteSchedule.linear(N=50)
    framework = GaussianFramework(schedule, 'noise')
    net = RecordingNet(dtype=torch.float16)
    x0 = torch.randn(6, 1, 2, 2)
    torch.manual_seed(5)
    first = framework.loss(net, x0, cond={'y': None})
    torch.manual_seed(5)
    assert torch.equal(first, framework.loss(net, x0))
    assert first.dtype == torch.float32
    with_generator = framework.loss(net, x0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(with_generator, framework.loss(net, x0, generator=torch.Generator().manual_seed(1)))
    # The network saw the integer training steps N t of the times drawn first from the RNG, then eps.
    generator = torch.Generator().manual_seed(1)
    t = schedule.sample_train_t(6, 'cpu', generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    steps = net.times[-1]
    assert torch.equal(steps, schedule.model_time(t))
    assert_close(steps, steps.round(), rtol=1e-5)
    assert steps.min() >= 1 and steps.max() <= 50
    # and the loss is the float32 mean squared error of its float16 output against that eps
    x_t = schedule.alpha(t).view(-1, 1, 1, 1) * x0 + schedule.sigma(t).view(-1, 1, 1, 1) * eps
    out = (torch.sin(x_t) + steps.view(-1, 1, 1, 1) / 1000).half().float()
    assert_close(with_generator, (out - eps).square().flatten(1).mean(1), rtol=1e-6)


@pytest.mark.parametrize('prediction', ['noise', 'x0', 'v'])
def test_the_loss_is_corrupt_then_the_loss_of_the_denoiser_output(prediction):
    schedule = DiscreteSchedule.cosine(N=100)
    framework = GaussianFramework(schedule, prediction)
    net = RecordingNet()
    x0 = torch.randn(5, 2, 3, 3, dtype=torch.float64)
    loss = framework.loss(net, x0, cond={'y': None}, generator=torch.Generator().manual_seed(2))

    t, noise, x_t = framework.corrupt(x0, generator=torch.Generator().manual_seed(2))
    same = noised(schedule, x0, generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(a, b) for a, b in zip((t, noise, x_t), same))
    assert_close(x_t, schedule.alpha(t).view(-1, 1, 1, 1) * x0 + schedule.sigma(t).view(-1, 1, 1, 1) * noise,
                 rtol=1e-12)
    output = framework.denoiser(net).output(x_t, t)
    alpha, sigma = schedule.alpha(t).view(-1, 1, 1, 1), schedule.sigma(t).view(-1, 1, 1, 1)
    target = {'noise': noise, 'x0': x0, 'v': alpha * noise - sigma * x0}[prediction]
    assert torch.equal(loss, framework.loss_of_output(output, x0, noise, x_t, t))
    assert_close(loss, squared_error(output, target), rtol=1e-12)
    assert_close(loss, (output - target).square().flatten(1).mean(1).float(), rtol=1e-6)
    # the interface's generic loss (backbone called with model_time) gives the same numbers
    assert_close(Framework.loss(framework, net, x0, generator=torch.Generator().manual_seed(2)), loss, rtol=1e-6)
    assert_close(framework.model_time(t), schedule.model_time(t), rtol=1e-12)


def test_min_snr_weighting_is_min_snr_gamma_times_the_x0_error_in_every_parameterisation():
    schedule = DiscreteSchedule.cosine(N=100)
    gamma = 5.0
    x0 = torch.randn(64, 1, 2, 2, dtype=torch.float64)
    t, noise, x_t = noised(schedule, x0, generator=torch.Generator().manual_seed(3))
    x0_hat = x0 + 0.1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    alpha, sigma = schedule.alpha(t).view(-1, 1, 1, 1), schedule.sigma(t).view(-1, 1, 1, 1)
    # the same estimate written as each parameterisation's output
    outputs = {'x0': x0_hat, 'noise': (x_t - alpha * x0_hat) / sigma, 'v': (alpha * x_t - x0_hat) / sigma}
    snr = (alpha / sigma).flatten() ** 2
    expected = torch.clamp(snr, max=gamma) * (x0_hat - x0).square().flatten(1).mean(1)
    assert snr.min() < 1 < gamma < snr.max()  # both sides of the cap are exercised
    for prediction, output in outputs.items():
        weighted = GaussianFramework(schedule, prediction, min_snr_gamma=gamma).loss_of_output(output, x0, noise,
                                                                                                x_t, t)
        assert_close(weighted.double(), expected, rtol=1e-5)
        plain = GaussianFramework(schedule, prediction).loss_of_output(output, x0, noise, x_t, t)
        assert torch.equal(plain, squared_error(output, {'x0': x0, 'noise': noise,
                                                         'v': alpha * noise - sigma * x0}[prediction]))
    assert build_framework(d(pred='x0_pred', min_snr_gamma=2.0, schedule=d(name='vpsde'))).min_snr_gamma == 2.0
    with pytest.raises(UserError, match='min_snr_gamma must be >= 0'):
        GaussianFramework(schedule, 'x0', min_snr_gamma=-1.0)


def test_the_framework_from_config_and_its_backbone_check():
    framework = build_framework(d(pred='x0_pred', schedule=d(name='cosine', N=100)))
    assert isinstance(framework, GaussianFramework) and framework.prediction == 'x0'
    assert isinstance(framework.schedule, DiscreteSchedule) and framework.schedule.num_steps == 100
    assert CONFIG_PREDICTIONS == {'noise_pred': 'noise', 'x0_pred': 'x0', 'v_pred': 'v', 'velocity': 'velocity',
                                  'score': 'score'}
    assert build_framework(d(pred='v_pred', schedule=d(name='vpsde'))).prediction == 'v'
    denoiser = framework.denoiser(RecordingNet())
    assert (denoiser.schedule, denoiser.prediction) == (framework.schedule, 'x0')
    with pytest.raises(UserError, match="config.pred must be one of noise_pred, x0_pred, v_pred, velocity, score, "
                                        "got 'eps_pred'"):
        GaussianFramework.from_config(d(pred='eps_pred', schedule=d(name='vpsde')))
    with pytest.raises(UserError, match="unknown config.framework 'flow_matching'"):
        build_framework(d(framework='flow_matching', pred='noise_pred', schedule=d(name='vpsde')))
    with pytest.raises(UserError, match='known: noise, x0, v, velocity, score'):
        GaussianFramework(VPSDE(), 'eps')

    class Declared(RecordingNet):
        output = 'image'

    class Logits(RecordingNet):
        output = 'logits'

    framework.check_backbone(Declared())
    with pytest.raises(UserError, match="output is shaped like its input .*Logits declares 'logits'"):
        framework.check_backbone(Logits())


class LabelledNoise(torch.nn.Module):
    """A fake class-conditional eps network: eps = x (1 + y / 10) + model_time / 1000."""

    def forward(self, x, timesteps, y):
        return x * (1 + y.to(x.dtype).view(-1, 1) / 10) + timesteps.view(-1, 1) / 1000


def test_prior_guidance_and_sample():
    schedule = VPSDE()
    framework = GaussianFramework(schedule, 'noise')
    denoiser = framework.denoiser(LabelledNoise())
    random = SampleRandom(seed=3, indices=[0, 5])
    prior = framework.prior((3,), random)
    expected = torch.stack([torch.randn(3, generator=g) for g in SampleRandom(3, [0, 5]).generators])
    assert torch.equal(prior, expected)

    y, null = torch.tensor([2, 4]), torch.tensor([10, 10])
    x, t = torch.randn(2, 3), torch.tensor([0.3, 0.8])
    guided = framework.guided(denoiser, {'y': y}, {'y': null}, scale=1.5)
    eps_c, eps_u = denoiser.noise(x, t, y=y), denoiser.noise(x, t, y=null)
    assert_close(guided(x, t), eps_c + 1.5 * (eps_c - eps_u), rtol=1e-6)
    assert_close(framework.guided(denoiser, {'y': y})(x, t), eps_c, rtol=1e-6)

    sampler = framework.build_sampler(ml_collections.ConfigDict({'algorithm': 'dpm_solver++', 'sample_steps': 4}))
    samples = framework.sample(denoiser, sampler, (3,), {'y': y}, SampleRandom(3, [0, 5]), {'y': null}, 1.5)
    expected = dpm_solver(guided, schedule, prior, time_grid(schedule, 4, 1.0, 1e-4, 'logSNR'))
    assert_close(samples, expected, rtol=1e-6)
