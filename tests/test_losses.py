"""The Denoiser's conversions and l_simple against its closed form for Gaussian data."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate

from libs.denoiser import Denoiser
from libs.errors import UserError
from libs.losses import l_simple
from libs.schedules import DiscreteSchedule, VPSDE


pytestmark = pytest.mark.usefixtures('one_thread')


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
        if self.prediction == 'noise':
            return sigma * residual
        return self.m + alpha * self.s ** 2 * residual


@pytest.mark.parametrize('prediction', ['noise', 'x0'])
@pytest.mark.parametrize('schedule', [VPSDE(), DiscreteSchedule.cosine(N=100)], ids=repr)
def test_denoiser_conversions(prediction, schedule):
    net = RecordingNet()
    denoiser = Denoiser(net, schedule, prediction=prediction)
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    t = torch.tensor([0.05, 0.3, 0.7, 1.0], dtype=torch.float64)
    eps, x0 = denoiser.noise(x, t), denoiser.data(x, t)
    alpha, sigma = schedule.alpha(t).view(-1, 1, 1, 1), schedule.sigma(t).view(-1, 1, 1, 1)
    torch.testing.assert_close(alpha * x0 + sigma * eps, x)
    out = torch.sin(x) + schedule.model_time(t).view(-1, 1, 1, 1) / 1000
    torch.testing.assert_close(eps if prediction == 'noise' else x0, out)
    torch.testing.assert_close(net.times[0], schedule.model_time(t))


def test_denoiser_time_conventions_and_dtypes():
    net = RecordingNet(dtype=torch.float16)
    denoiser = Denoiser(net, VPSDE())
    x = torch.randn(3, 1, 2, 2)
    out = denoiser.noise(x, 0.5)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(net.times[-1], torch.full((3,), 499.5))
    assert Denoiser(net, VPSDE(), prediction='x0').data(x, 0.5).dtype == torch.float32

    discrete = Denoiser(RecordingNet(), DiscreteSchedule.linear(N=1000))
    discrete.noise(x, torch.tensor([0.001, 0.5, 1.0]))
    torch.testing.assert_close(discrete.nnet.times[-1], torch.tensor([1.0, 500.0, 1000.0]))

    with pytest.raises(UserError, match="known: noise, x0"):
        Denoiser(net, VPSDE(), prediction='v')


def expected_l_simple(schedule, s, prediction):
    """E_t of the per-dimension posterior variance: Var[eps | x_t] or Var[x_0 | x_t]."""
    def variance(t):
        t = torch.tensor(t, dtype=torch.float64)
        a2, s2 = schedule.alpha(t).item() ** 2, schedule.sigma(t).item() ** 2
        return (a2 * s ** 2 if prediction == 'noise' else s ** 2 * s2) / (a2 * s ** 2 + s2)

    if isinstance(schedule, DiscreteSchedule):
        return float(np.mean([variance(n / schedule.num_steps) for n in range(1, schedule.num_steps + 1)]))
    return integrate.quad(variance, 0.0, 1.0, epsabs=1e-10, limit=200)[0]


@pytest.mark.parametrize('prediction', ['noise', 'x0'])
@pytest.mark.parametrize('schedule,time_scale', [(VPSDE(), 999.0), (DiscreteSchedule.linear(N=200), 200.0)],
                         ids=['vpsde', 'ddpm200'])
def test_l_simple_of_the_exact_denoiser(schedule, time_scale, prediction):
    m, s = 0.3, 0.6
    denoiser = Denoiser(ExactGaussianNet(schedule, m, s, prediction, time_scale), schedule, prediction=prediction)
    generator = torch.Generator().manual_seed(0)
    n = 8192
    x0 = m + s * torch.randn(n, 1, 2, 2, generator=generator)
    loss = l_simple(denoiser, x0, generator=generator)
    assert loss.shape == (n,) and loss.dtype == torch.float32
    expected = expected_l_simple(schedule, s, prediction)
    standard_error = loss.std().item() / math.sqrt(n)
    assert abs(loss.mean().item() - expected) < 4 * standard_error, (loss.mean().item(), expected)


def test_l_simple_random_numbers_and_precision():
    schedule = DiscreteSchedule.linear(N=50)
    denoiser = Denoiser(RecordingNet(dtype=torch.float16), schedule)
    x0 = torch.randn(6, 1, 2, 2)
    torch.manual_seed(5)
    first = l_simple(denoiser, x0, cond={'y': None})
    torch.manual_seed(5)
    assert torch.equal(first, l_simple(denoiser, x0))
    assert first.dtype == torch.float32
    with_generator = l_simple(denoiser, x0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(with_generator, l_simple(denoiser, x0, generator=torch.Generator().manual_seed(1)))
    # The network saw integer training steps 1..N.
    steps = torch.cat(denoiser.nnet.times)
    torch.testing.assert_close(steps, steps.round(), rtol=0, atol=1e-3)
    assert steps.min() >= 1 and steps.max() <= 50
