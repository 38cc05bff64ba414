"""Closed-form checks of the noise schedules."""
import math

import ml_collections
import numpy as np
import pytest
import torch

from libs.errors import UserError
from libs.diffusion.schedules import SCHEDULES, DiscreteSchedule, VPSDE, build_schedule

F64 = torch.float64


def assert_close(actual, expected, rtol):
    """Elementwise |actual - expected| <= rtol (|expected| + max |expected|): relative, with an absolute floor that
    scales with the magnitudes compared (log-SNR crosses zero)."""
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * expected.abs().max().item())


def all_schedules():
    return [VPSDE(), VPSDE(beta_min=0.5, beta_max=10.0), DiscreteSchedule.linear(),
            DiscreteSchedule.scaled_linear(), DiscreteSchedule.cosine(), DiscreteSchedule.linear(N=50)]


def test_vpsde_closed_form():
    schedule = VPSDE(beta_min=0.1, beta_max=20.0)
    t = torch.linspace(1e-5, 1.0, 101, dtype=F64)
    integral_beta = 0.1 * t + 0.5 * (20.0 - 0.1) * t ** 2  # int_0^t beta(s) ds
    alpha = torch.exp(-0.5 * integral_beta)
    sigma = torch.sqrt(-torch.expm1(-integral_beta))
    torch.testing.assert_close(schedule.alpha(t), alpha, rtol=1e-12, atol=0)
    torch.testing.assert_close(schedule.sigma(t), sigma, rtol=1e-12, atol=0)
    assert_close(schedule.log_snr(t), torch.log(alpha / sigma), rtol=1e-12)
    assert_close(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2, torch.ones_like(t), rtol=1e-12)
    assert schedule.model_time(torch.tensor(0.5)).item() == pytest.approx(499.5)


@pytest.mark.parametrize('schedule', all_schedules(), ids=repr)
def test_log_snr_inverse_round_trip(schedule):
    t = torch.linspace(schedule.t_min, 1.0, 997, dtype=F64)
    lam = schedule.log_snr(t)
    assert bool((lam[1:] < lam[:-1]).all()), 'log-SNR must be strictly decreasing'
    torch.testing.assert_close(schedule.t_from_log_snr(lam), t, rtol=1e-9, atol=1e-12 * t.abs().max().item())
    lam_grid = torch.linspace(lam[-1].item(), lam[0].item(), 101, dtype=F64)
    assert_close(schedule.log_snr(schedule.t_from_log_snr(lam_grid)), lam_grid, rtol=1e-9)


@pytest.mark.parametrize('schedule', all_schedules(), ids=repr)
def test_sde_coefficients_are_derivative_of_log_alpha(schedule):
    # Central differences, away from the knots of the discrete schedules (log_alpha is piecewise linear there).
    n = getattr(schedule, 'num_steps', 1000)
    t = (torch.arange(3, n, max(n // 40, 1), dtype=F64) + 0.5) / n
    delta = 1e-3 / n
    numeric = (schedule.log_alpha(t + delta) - schedule.log_alpha(t - delta)) / (2 * delta)
    f, g2 = schedule.sde_coefficients(t)
    torch.testing.assert_close(f, numeric, rtol=1e-6, atol=1e-9 * numeric.abs().max().item())
    assert_close(g2, -2.0 * f, rtol=1e-12)
    if isinstance(schedule, VPSDE):
        beta = schedule.beta_min + t * (schedule.beta_max - schedule.beta_min)
        assert_close(g2, beta, rtol=1e-12)


def test_discrete_schedule_at_knots_is_sqrt_alphas_cumprod():
    betas = np.linspace(1e-4, 0.02, 1000)
    alphas_cumprod = np.cumprod(1.0 - betas)
    schedule = DiscreteSchedule.linear()
    t = torch.arange(1, 1001, dtype=F64) / 1000
    np.testing.assert_allclose(schedule.alpha(t).numpy(), np.sqrt(alphas_cumprod), rtol=1e-12)
    np.testing.assert_allclose(schedule.sigma(t).numpy(), np.sqrt(1.0 - alphas_cumprod), rtol=1e-10)
    np.testing.assert_allclose(schedule.model_time(t).numpy(), np.arange(1, 1001), rtol=1e-12)
    assert schedule.t_min == pytest.approx(1e-3)
    # Below t_1 the line to (0, log_alpha = 0): alpha stays <= 1 and reaches 1 at t = 0.
    assert schedule.alpha(torch.tensor(0.0, dtype=F64)).item() == pytest.approx(1.0, abs=1e-15)
    half = schedule.log_alpha(torch.tensor(0.5e-3, dtype=F64)).item()
    assert half == pytest.approx(0.25 * math.log(alphas_cumprod[0]), rel=1e-12)


def test_scaled_linear_and_cosine_betas():
    sd = DiscreteSchedule.scaled_linear()
    expected = np.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000) ** 2
    np.testing.assert_allclose(sd.betas.numpy(), expected, rtol=1e-12)
    assert sd.betas[0].item() == pytest.approx(0.00085) and sd.betas[-1].item() == pytest.approx(0.012)

    cosine = DiscreteSchedule.cosine(N=1000, s=0.008)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for n in (1, 10, 500, 900):
        assert cosine.alphas_cumprod[n - 1].item() == pytest.approx(f(n / 1000) / f(0.0), rel=1e-9)
    assert cosine.betas.max().item() == pytest.approx(0.999)


def test_dtype_and_device_rules():
    schedule = DiscreteSchedule.linear()
    for dtype in (torch.float32, F64):
        t = torch.rand(7, dtype=dtype)
        for method in (schedule.alpha, schedule.sigma, schedule.log_snr, schedule.log_alpha):
            assert method(t).dtype == dtype and method(t).shape == (7,)
    assert schedule.alpha(torch.rand(3, dtype=torch.float16)).dtype == torch.float32
    assert schedule.alpha(0.5).dtype == F64
    assert VPSDE().sigma(torch.tensor(0.5, dtype=torch.bfloat16)).dtype == torch.float32


def test_training_time_distributions():
    discrete = DiscreteSchedule.linear(N=4)
    t = discrete.sample_train_t(4000, 'cpu', generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32
    counts = torch.bincount((discrete.model_time(t).round()).long(), minlength=5)
    assert counts[0].item() == 0
    assert ((counts[1:].float() / 4000 - 0.25).abs() < 0.03).all()

    t = VPSDE().sample_train_t(4000, 'cpu', generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32
    assert abs(t.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / 4000)
    # uniform on [0, 1]: the Kolmogorov-Smirnov distance to t's CDF is within its 99.9% bound, 1.95 / sqrt(n)
    ordered = t.double().sort().values
    i = torch.arange(1, 4001, dtype=F64)
    ks = torch.maximum(i / 4000 - ordered, ordered - (i - 1) / 4000).max().item()
    assert ks < 1.95 / math.sqrt(4000), ks

    torch.manual_seed(3)
    first = VPSDE().sample_train_t(5, 'cpu')
    torch.manual_seed(3)
    assert torch.equal(first, VPSDE().sample_train_t(5, 'cpu'))


def test_build_schedule():
    assert isinstance(build_schedule(None), VPSDE)
    assert isinstance(build_schedule({'name': None}), VPSDE)
    vp = build_schedule(ml_collections.ConfigDict({'name': 'vpsde', 'beta_max': 10.0}))
    assert (vp.beta_min, vp.beta_max) == (0.1, 10.0)
    cosine = build_schedule({'name': 'cosine', 'N': 100})
    assert isinstance(cosine, DiscreteSchedule) and cosine.num_steps == 100
    assert set(SCHEDULES) == {'vpsde', 'ddpm_linear', 'stable_diffusion', 'cosine', 'karras', 'linear', 'gvp'}
    ddae = build_schedule({'name': 'ddpm_linear', 'time_scale': 1.0})   # DDAE's UNets see n / N
    assert ddae.model_time(torch.tensor(0.011)).item() == pytest.approx(0.011)
    assert build_schedule({'name': 'ddpm_linear'}).model_time(torch.tensor(0.011)).item() == pytest.approx(11.0)
    with pytest.raises(UserError, match='known schedules: cosine, ddpm_linear, gvp, karras, linear, stable_diffusion, '
                                        'vpsde'):
        build_schedule({'name': 'edm'})
    with pytest.raises(UserError, match='no option'):
        build_schedule({'name': 'ddpm_linear', 'beta_min': 0.1})
    with pytest.raises(UserError):
        DiscreteSchedule([0.5, 1.5])
