"""EDM (libs/diffusion/edm.py), Heun and DDIM on Gaussian data, where the exact denoiser and ODE solution are known.

x_0 ~ N(m, v I): in EDM's coordinates y = x_0 + s n the exact denoiser is D*(y; s) = m + v / (v + s^2) (y - m), and
the minimum of E |D - x_0|^2 per dimension is v s^2 / (v + s^2).
"""
import math

import ml_collections
import pytest
import torch

from libs.diffusion import build_framework
from libs.diffusion.edm import PRECONDITIONINGS, EDMFramework, EDMPrecond
from libs.diffusion.samplers import build_sampler, ddim, ddpm_ancestral, ddpm_steps, dpm_solver, heun, karras_grid
from libs.diffusion.samplers.heun import heun_evaluations
from libs.diffusion.schedules import VPSDE, DiscreteSchedule, KarrasSchedule
from libs.errors import UserError
from libs.rng import SampleRandom
from test_samplers import Gaussian, fitted_slope, rms, x_start

F64 = torch.float64
M, V = 0.3, 0.2 ** 2

pytestmark = pytest.mark.usefixtures('one_thread')


def sigma_of_c_noise(precond, c_noise):
    """The noise level a backbone can read back from its time input c_noise."""
    if precond.kind == 'edm':
        return torch.exp(4.0 * c_noise)
    if precond.kind == 've':
        return 2.0 * torch.exp(c_noise)
    return VPSDE().ve_sigma(c_noise / 999.0)


class ExactF(torch.nn.Module):
    """The F that makes c_skip y + c_out F the exact denoiser of N(M, V), from the backbone's inputs alone."""

    condition, output = 'none', 'image'

    def __init__(self, precond):
        super().__init__()
        self.precond = precond

    def forward(self, net_in, c_noise):
        s = sigma_of_c_noise(self.precond, c_noise)
        col = (-1,) + (1,) * (net_in.ndim - 1)
        y = net_in / self.precond.c_in(s).view(col)
        exact = M + V / (V + s.view(col) ** 2) * (y - M)
        return (exact - self.precond.c_skip(s).view(col) * y) / self.precond.c_out(s).view(col)


@pytest.mark.parametrize('kind', PRECONDITIONINGS)
def test_preconditioning_reproduces_the_exact_denoiser(kind):
    precond = EDMPrecond(kind, sigma_data=0.5)
    framework = EDMFramework(precond)
    denoiser = framework.denoiser(ExactF(precond))
    s = torch.logspace(-2.5, 1.8, 12, dtype=F64)
    t = framework.schedule.t_from_ve_sigma(s)
    y = M + math.sqrt(V) * torch.randn(12, 1, 3, 3, dtype=F64) + s.view(-1, 1, 1, 1) * torch.randn(12, 1, 3, 3,
                                                                                                    dtype=F64)
    exact = M + V / (V + s.view(-1, 1, 1, 1) ** 2) * (y - M)
    torch.testing.assert_close(denoiser.denoise(y, s), exact, rtol=1e-9, atol=1e-9)
    x = y * framework.schedule.alpha(t).view(-1, 1, 1, 1)   # the VP state the samplers carry
    torch.testing.assert_close(denoiser.data(x, t), exact, rtol=1e-9, atol=1e-9)
    eps = Gaussian(framework.schedule, M, math.sqrt(V)).eps(x, t)
    torch.testing.assert_close(denoiser.noise(x, t), eps, rtol=1e-7, atol=1e-7 * eps.abs().max().item())
    velocity = Gaussian(framework.schedule, M, math.sqrt(V)).velocity(x, t)  # what SiT's samplers consume
    torch.testing.assert_close(denoiser.velocity(x, t), velocity, rtol=1e-7, atol=1e-7 * velocity.abs().max().item())
    # every column of Table 1 weighs the F regression by lambda c_out^2 = 1
    torch.testing.assert_close(precond.loss_weight(s) * precond.c_out(s) ** 2, torch.ones_like(s))


def test_table_one_coefficients():
    s = torch.tensor([0.1, 1.0, 10.0], dtype=F64)
    edm, vp, ve = (EDMPrecond(kind, 0.5) for kind in ('edm', 'vp', 've'))
    torch.testing.assert_close(edm.c_skip(s), 0.25 / (s ** 2 + 0.25))
    torch.testing.assert_close(edm.c_out(s), 0.5 * s / torch.sqrt(s ** 2 + 0.25))
    torch.testing.assert_close(edm.c_in(s), 1 / torch.sqrt(s ** 2 + 0.25))
    torch.testing.assert_close(edm.c_noise(s), torch.log(s) / 4)
    torch.testing.assert_close(ve.c_noise(s), torch.log(s / 2))
    torch.testing.assert_close(vp.c_out(s), -s)
    # VP: c_noise = 999 t with sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)
    t = vp.c_noise(s) / 999
    torch.testing.assert_close(torch.sqrt(torch.expm1(0.5 * 19.9 * t ** 2 + 0.1 * t)), s)
    with pytest.raises(UserError, match="unknown EDM preconditioning 'karras'"):
        EDMPrecond('karras')


@pytest.mark.parametrize('kind', PRECONDITIONINGS)
def test_loss_at_the_exact_denoiser_is_its_closed_form(kind):
    """lambda(s) |D* - x_0|^2 averages lambda v s^2 / (v + s^2) at a fixed s; an F off by 0.1 adds
    lambda c_out^2 0.1^2 = 0.01."""
    precond = EDMPrecond(kind, 0.5)
    framework = EDMFramework(precond)
    s = torch.full((20000,), 0.7, dtype=F64)
    t = framework.schedule.t_from_ve_sigma(s)
    generator = torch.Generator().manual_seed(0)
    x0 = M + math.sqrt(V) * torch.randn(20000, 1, 2, 2, dtype=F64, generator=generator)
    eps = torch.randn(x0.shape, dtype=F64, generator=generator)
    x_t = framework.schedule.alpha(t).view(-1, 1, 1, 1) * (x0 + 0.7 * eps)
    net = ExactF(precond)
    output = framework.denoiser(net).output(x_t, t)
    loss = framework.loss_of_output(output, x0, eps, x_t, t).double().mean().item()
    expected = precond.loss_weight(torch.tensor(0.7, dtype=F64)).item() * V * 0.49 / (V + 0.49)
    assert loss == pytest.approx(expected, rel=0.03)
    worse = framework.loss_of_output(output + 0.1, x0, eps, x_t, t).double().mean().item()
    assert worse - loss == pytest.approx(0.01, rel=1e-3)


def test_training_noise_levels_follow_each_column():
    generator = torch.Generator().manual_seed(1)
    n = 40000
    log_s = torch.log(EDMPrecond('edm').sample_train_sigma(n, 'cpu', -1.2, 1.2, generator)).double()
    assert log_s.mean().item() == pytest.approx(-1.2, abs=0.03) and log_s.std().item() == pytest.approx(1.2, abs=0.03)
    log_s = torch.log(EDMPrecond('ve').sample_train_sigma(n, 'cpu', -1.2, 1.2, generator)).double()
    assert log_s.min().item() >= math.log(0.02) - 1e-6 and log_s.max().item() <= math.log(100) + 1e-5
    assert log_s.mean().item() == pytest.approx(0.5 * (math.log(0.02) + math.log(100)), abs=0.05)
    t = VPSDE().t_from_ve_sigma(EDMPrecond('vp').sample_train_sigma(n, 'cpu', -1.2, 1.2, generator).double())
    assert t.mean().item() == pytest.approx(0.5, abs=0.01) and t.min().item() >= 1e-5 - 1e-7


def test_karras_schedule_grid_is_edms():
    schedule = KarrasSchedule()
    grid = karras_grid(schedule, 17, 1.0, schedule.t_min)
    levels = schedule.ve_sigma(torch.tensor(grid, dtype=F64))
    i = torch.arange(18, dtype=F64)
    edm = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(levels, edm, rtol=1e-12, atol=0)
    # on another schedule, the same noise levels
    vp_grid = karras_grid(VPSDE(), 17, 1.0, VPSDE().t_from_ve_sigma(torch.tensor(0.002, dtype=F64)).item())
    top = VPSDE().ve_sigma(torch.tensor(1.0, dtype=F64)) ** (1 / 7)
    expected = (top + i / 17 * (0.002 ** (1 / 7) - top)) ** 7
    torch.testing.assert_close(VPSDE().ve_sigma(torch.tensor(vp_grid, dtype=F64)), expected, rtol=1e-9, atol=0)


@pytest.mark.parametrize('schedule', [KarrasSchedule(), VPSDE()], ids=repr)
def test_heun_is_second_order(schedule):
    problem = Gaussian(schedule, m=0.4, s=0.3)
    x = x_start()
    t_end = max(schedule.t_min, 1e-3)
    exact = problem.ode_solution(x, 1.0, t_end)
    steps_list, errors = [8, 16, 32, 64], []
    for steps in steps_list:
        problem.calls = 0
        out = heun(problem.eps, schedule, x, karras_grid(schedule, steps, 1.0, t_end))
        assert problem.calls == heun_evaluations(steps)
        errors.append(rms(out - exact) / rms(exact))
    assert abs(fitted_slope(steps_list, errors) - 2.0) < 0.25, errors
    assert errors[-1] < 5e-3  # EDM's 18 levels: about 5e-2 on these data


def test_edm_framework_samples_the_data_distribution_with_heun():
    """Heun's preset, the exact F, the framework's prior: samples of N(M, V). At 35 evaluations (EDM's 18 levels)
    their std is 7% too high on these narrow data (std 0.2); at 99 (50 levels) within 1%."""
    framework = EDMFramework(EDMPrecond('edm'))
    net = ExactF(framework.precond)
    cfg = ml_collections.ConfigDict({'algorithm': 'heun', 'sample_steps': 99})
    sampler = framework.build_sampler(cfg)
    calls = []
    denoiser = framework.denoiser(net)

    def eps_fn(x, t):
        calls.append(1)
        return denoiser.noise(x, t)

    random = SampleRandom(0, range(4000), 'cpu')
    x_T = framework.prior((1, 2, 2), random).double()
    out = sampler(eps_fn, x_T, noise=random)
    assert len(calls) == 99
    assert out.mean().item() == pytest.approx(M, abs=0.01)
    assert out.std().item() == pytest.approx(math.sqrt(V), rel=0.03)


def test_heun_presets_count_evaluations_and_churn():
    schedule = KarrasSchedule()
    problem = Gaussian(schedule, m=0.0, s=0.5)
    x = x_start()
    for nfe in (1, 2, 10, 35):
        problem.calls = 0
        build_sampler(ml_collections.ConfigDict({'algorithm': 'heun', 'sample_steps': nfe}), schedule)(problem.eps, x)
        assert problem.calls == nfe
    # churn adds noise only between s_min and s_max, and changes the samples there
    det = build_sampler(ml_collections.ConfigDict({'algorithm': 'heun', 'sample_steps': 35}), schedule)
    churned = build_sampler(ml_collections.ConfigDict({'algorithm': 'heun', 'sample_steps': 35, 's_churn': 40.0,
                                                       's_min': 0.01, 's_max': 1.0, 's_noise': 1.007}), schedule)
    noise = torch.Generator().manual_seed(0)
    a = det(problem.eps, x)
    b = churned(problem.eps, x, noise=lambda y: torch.randn(y.shape, dtype=y.dtype, generator=noise))
    assert 0 < rms(a - b) < 0.5
    with pytest.raises(UserError, match='s_churn >= 0'):
        heun(problem.eps, schedule, x, [1.0, 0.5, 0.0], s_churn=-1)


def test_ddim_eta_zero_is_first_order_dpm_solver_on_the_same_grid():
    schedule = DiscreteSchedule.linear()
    problem = Gaussian(schedule, m=0.3, s=0.7)
    x = x_start(d=2)
    grid = ddpm_steps(1000, 10)
    out = ddim(problem.eps, schedule, x, grid, eta=0.0)
    times = [n / 1000 for n in grid]
    at_last = dpm_solver(problem.eps, schedule, x, times, order=1, method='multistep', algorithm_type='dpmsolver')
    t1 = torch.tensor(times[-1], dtype=F64)
    x0 = (at_last - schedule.sigma(t1) * problem.eps(at_last, t1.expand(16))) / schedule.alpha(t1)
    torch.testing.assert_close(out, x0, rtol=1e-10, atol=1e-10)


def test_ddim_eta_one_is_the_ancestral_sampler_with_the_posterior_variance():
    """eta = 1 draws from q(x_p | x_n, x0) at the predicted x0, step for step, on any sub-sequence."""
    schedule = DiscreteSchedule.linear()
    problem = Gaussian(schedule, m=-0.2, s=0.5)
    x = x_start(d=3)
    grid = ddpm_steps(1000, 25)

    def draws():
        generator = torch.Generator().manual_seed(3)
        return lambda y: torch.randn(y.shape, dtype=y.dtype, generator=generator)

    out = ddim(problem.eps, schedule, x, grid, eta=1.0, noise=draws())
    ancestral = ddpm_ancestral(problem.eps, schedule, x, grid, variance='beta_tilde', noise=draws())
    torch.testing.assert_close(out, ancestral, rtol=1e-10, atol=1e-10)
    assert rms(out - ddim(problem.eps, schedule, x, grid, eta=0.5, noise=draws())) > 0.01


def test_deterministic_ddim_samples_the_data_distribution():
    schedule = DiscreteSchedule.linear()
    problem = Gaussian(schedule, m=-0.2, s=0.5)
    x = torch.randn(5000, 1, dtype=F64, generator=torch.Generator().manual_seed(3))
    cfg = ml_collections.ConfigDict({'algorithm': 'ddim', 'sample_steps': 200, 'eta': 0.0})
    out = build_sampler(cfg, schedule)(problem.eps, x)
    assert out.mean().item() == pytest.approx(-0.2, abs=0.02)
    assert out.std().item() == pytest.approx(0.5, rel=0.03)
    torch.testing.assert_close(out, ddim(problem.eps, schedule, x, ddpm_steps(1000, 200)))
    with pytest.raises(UserError, match='ddim needs a discrete schedule'):
        build_sampler(cfg, VPSDE())


def test_framework_from_config():
    from libs.config import d, resolve
    config = resolve(d(framework='edm', edm=d(precond='ve', sigma_min=0.01)))
    framework = build_framework(config)
    assert isinstance(framework, EDMFramework) and framework.precond.kind == 've'
    assert framework.schedule.sigma_min == 0.01 and framework.augment is None
    t = torch.tensor([0.5])
    assert framework.model_time(t).item() == pytest.approx(math.log(framework.schedule.ve_sigma(t).item() / 2))


def test_augmentation_needs_a_backbone_that_takes_its_labels():
    from libs.config import d, resolve
    from libs.nets import build_nnet
    config = resolve(d(framework='edm', edm=d(augment_prob=0.12)))
    framework = build_framework(config)
    uvit = build_nnet(d(name='uvit', img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=1, num_heads=1))
    with pytest.raises(UserError, match='gives the backbone 9 augmentation labels; UViT takes 0'):
        framework.check_backbone(uvit)
    unet = build_nnet(d(name='unet', image_shape=(1, 8, 8), n_channels=32, ch_mults=(1,), is_attn=(False,),
                        n_blocks=1, augment_dim=9))
    framework.check_backbone(unet)
    loss = framework.loss(unet, torch.rand(4, 1, 8, 8) * 2 - 1)
    assert loss.shape == (4,) and torch.isfinite(loss).all()
