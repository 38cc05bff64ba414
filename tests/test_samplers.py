"""Samplers on Gaussian data, where the noise predictor and the probability-flow ODE have closed forms.

x_0 ~ N(m, diag(s^2)): eps*(x, t) = sigma (x - alpha m) / (alpha^2 s^2 + sigma^2), and along ODE trajectories
(x_t - alpha_t m) / sqrt(alpha_t^2 s^2 + sigma_t^2) is constant.
"""
import math

import ml_collections
import numpy as np
import pytest
import torch

from libs.errors import UserError
from libs.samplers import SAMPLERS, build_sampler, ddpm_ancestral, dpm_solver, euler_maruyama, singlestep_orders
from libs.samplers.ancestral import step_grid
from libs.schedules import DiscreteSchedule, VPSDE

F64 = torch.float64


pytestmark = pytest.mark.usefixtures('one_thread')


class Gaussian:
    """Exact noise predictor and ODE solution for x_0 ~ N(m, diag(s^2)) under `schedule`."""

    def __init__(self, schedule, m, s):
        self.schedule = schedule
        self.m = torch.as_tensor(m, dtype=F64)
        self.s = torch.as_tensor(s, dtype=F64)
        self.calls = 0

    def _scales(self, t):
        t = torch.as_tensor(t, dtype=F64)
        return self.schedule.alpha(t).reshape(-1, 1), self.schedule.sigma(t).reshape(-1, 1)

    def eps(self, x, t):
        self.calls += 1
        alpha, sigma = self._scales(t)
        return sigma * (x - alpha * self.m) / (alpha ** 2 * self.s ** 2 + sigma ** 2)

    def ode_solution(self, x_start, t_start, t_end):
        a0, s0 = self._scales(t_start)
        a1, s1 = self._scales(t_end)
        z = (x_start - a0 * self.m) / torch.sqrt(a0 ** 2 * self.s ** 2 + s0 ** 2)
        return a1 * self.m + torch.sqrt(a1 ** 2 * self.s ** 2 + s1 ** 2) * z


def fitted_slope(steps, errors):
    """Order of convergence: minus the least-squares slope of log(error) against log(steps)."""
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0]


def x_start(n=16, d=4, seed=0):
    return torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(seed))


def dpm_errors(problem, steps_list, t_end, **options):
    x = x_start(d=problem.m.numel())
    exact = problem.ode_solution(x, 1.0, t_end)
    errors = []
    for steps in steps_list:
        out = dpm_solver(problem.eps, problem.schedule, x, steps, t_end=t_end, **options)
        errors.append((out - exact).pow(2).mean().sqrt().item())
    return errors


# Step counts in the asymptotic range of each order (multiples of 6, so that singlestep orders 2 and 3 use only
# full-order segments).
STEPS = {1: [12, 24, 48, 96], 2: [24, 48, 96, 192], 3: [48, 96, 192, 384]}
CONFIGS = [(order, method, algorithm_type) for order in (1, 2, 3) for method in ('singlestep', 'multistep')
           for algorithm_type in ('dpmsolver', 'dpmsolver++')]


# Per-dimension means and standard deviations of the Gaussian data (also used by scripts/plot_solver_convergence.py).
MEANS, STDS = [0.5, -0.3, 0.2, 0.0], [0.05, 0.2, 0.8, 1.5]


@pytest.mark.parametrize('order,method,algorithm_type', CONFIGS)
def test_dpm_solver_order_of_convergence(order, method, algorithm_type):
    # From t = 1 to t = 0.3 (lambda from -5.0 to -0.2), where the predictions still change at the end point,
    # the measured order matches the nominal one (see test_dpm_solver_order_down_to_small_t for t_end = 1e-3).
    problem = Gaussian(VPSDE(), m=MEANS, s=STDS)
    errors = dpm_errors(problem, STEPS[order], 0.3, order=order, method=method, algorithm_type=algorithm_type)
    assert abs(fitted_slope(STEPS[order], errors) - order) < 0.25, errors


@pytest.mark.parametrize('order,method,algorithm_type', CONFIGS)
def test_dpm_solver_order_down_to_small_t(order, method, algorithm_type):
    # The realistic range t = 1 -> 1e-3 (lambda up to 4.6) needs more steps before order 3 is asymptotic: over
    # 48..384 steps the multistep solvers measure ~3.6-4.0 (their h^3 error term is nearly a boundary term in
    # lambda, and the predictions hardly change near both ends) and DPM-Solver++(3S) ~2.7; over 96..768 all are 3.
    problem = Gaussian(VPSDE(), m=MEANS, s=STDS)
    steps_list = [96, 192, 384, 768] if order == 3 else STEPS[order]
    errors = dpm_errors(problem, steps_list, 1e-3, order=order, method=method, algorithm_type=algorithm_type)
    assert abs(fitted_slope(steps_list, errors) - order) < 0.3, errors
    assert errors[-1] < {1: 3e-2, 2: 5e-4, 3: 1e-7}[order], errors


@pytest.mark.parametrize('skip_type', ['time_uniform', 'time_quadratic'])
@pytest.mark.parametrize('order,method,algorithm_type', [(2, 'multistep', 'dpmsolver++'),
                                                         (3, 'singlestep', 'dpmsolver')])
def test_dpm_solver_other_time_grids(skip_type, order, method, algorithm_type):
    problem = Gaussian(VPSDE(), m=0.5, s=0.5)
    errors = dpm_errors(problem, STEPS[order], 0.3, order=order, method=method, algorithm_type=algorithm_type,
                        skip_type=skip_type)
    assert abs(fitted_slope(STEPS[order], errors) - order) < 0.3, errors


@pytest.mark.parametrize('order,method', [(2, 'multistep'), (3, 'singlestep'), (3, 'multistep')])
def test_dpm_solver_on_discrete_schedule(order, method):
    # lambda(t) of a discrete schedule is only piecewise smooth in t, but the solvers step in lambda.
    problem = Gaussian(DiscreteSchedule.cosine(), m=0.5, s=0.5)
    errors = dpm_errors(problem, STEPS[order], 0.3, order=order, method=method, algorithm_type='dpmsolver++')
    assert abs(fitted_slope(STEPS[order], errors) - order) < 0.3, errors


@pytest.mark.parametrize('order,method,algorithm_type', CONFIGS)
def test_number_of_evaluations_equals_steps(order, method, algorithm_type):
    problem = Gaussian(VPSDE(), m=0.0, s=1.0)
    x = x_start(n=2, d=3)
    for steps in list(range(1, 13)) + [50]:
        for denoise_to_zero in (False, True):
            problem.calls = 0
            dpm_solver(problem.eps, problem.schedule, x, steps, order=order, method=method,
                       algorithm_type=algorithm_type, denoise_to_zero=denoise_to_zero)
            assert problem.calls == steps + denoise_to_zero


def test_singlestep_orders():
    assert singlestep_orders(50, 3) == [3] * 16 + [2]
    assert singlestep_orders(49, 3) == [3] * 16 + [1]
    assert singlestep_orders(48, 3) == [3] * 16
    assert singlestep_orders(7, 2) == [2, 2, 2, 1]
    assert singlestep_orders(2, 3) == [2]
    assert singlestep_orders(4, 1) == [1] * 4


def test_first_order_step_is_ddim_and_denoise_to_zero_is_tweedie():
    schedule = VPSDE()
    problem = Gaussian(schedule, m=0.3, s=0.7)
    x = x_start(d=1)
    t0, t1 = torch.tensor([0.8], dtype=F64), torch.tensor([0.2], dtype=F64)
    a0, s0, a1, s1 = schedule.alpha(t0), schedule.sigma(t0), schedule.alpha(t1), schedule.sigma(t1)
    eps = problem.eps(x, t0)
    ddim = a1 * (x - s0 * eps) / a0 + s1 * eps
    for algorithm_type in ('dpmsolver', 'dpmsolver++'):
        out = dpm_solver(problem.eps, schedule, x, 1, order=1, algorithm_type=algorithm_type, t_start=0.8, t_end=0.2)
        torch.testing.assert_close(out, ddim, rtol=1e-12, atol=1e-12)
    out = dpm_solver(problem.eps, schedule, x, 1, order=1, t_start=0.8, t_end=0.2, denoise_to_zero=True)
    posterior_mean = 0.3 + a1 * 0.49 * (ddim - a1 * 0.3) / (a1 ** 2 * 0.49 + s1 ** 2)
    torch.testing.assert_close(out, posterior_mean, rtol=1e-12, atol=1e-12)


def test_euler_ode_is_first_order():
    schedule = VPSDE()
    problem = Gaussian(schedule, m=0.5, s=0.5)
    x = x_start()
    t_end = 1e-3
    # The grid ends with a drift step from t_end to 0 (as the release does): apply it to the exact x(t_end).
    exact = problem.ode_solution(x, 1.0, t_end)
    f, g2 = (v.item() for v in schedule.sde_coefficients(torch.tensor(t_end, dtype=F64)))
    sigma = schedule.sigma(torch.tensor(t_end, dtype=F64)).item()
    target = exact - t_end * (f * exact + 0.5 * g2 * problem.eps(exact, torch.full((16,), t_end, dtype=F64)) / sigma)
    steps_list = [20, 40, 80, 160]
    errors = []
    for steps in steps_list:
        problem.calls = 0
        out = euler_maruyama(problem.eps, schedule, x, steps, t_end=t_end, ode=True)
        assert problem.calls == steps
        errors.append((out - target).pow(2).mean().sqrt().item())
    assert abs(fitted_slope(steps_list, errors) - 1.0) < 0.15, errors


@pytest.mark.parametrize('schedule', [VPSDE(), DiscreteSchedule.linear()], ids=repr)
def test_euler_maruyama_sde_samples_the_data_distribution(schedule):
    m, s = torch.tensor([0.5, -0.2], dtype=F64), torch.tensor([0.5, 1.2], dtype=F64)
    problem = Gaussian(schedule, m=m, s=s)
    generator = torch.Generator().manual_seed(0)
    n = 12000
    x = torch.randn(n, 2, dtype=F64, generator=generator)
    out = euler_maruyama(problem.eps, schedule, x, 200, t_end=1e-3, generator=generator)
    mean_tolerance = 4 * s / math.sqrt(n) + 0.01  # Monte-Carlo error + discretisation bias at 200 steps
    std_tolerance = 4 * s / math.sqrt(2 * n) + 0.01
    assert ((out.mean(0) - m).abs() < mean_tolerance).all(), out.mean(0)
    assert ((out.std(0) - s).abs() < std_tolerance).all(), out.std(0)
    # The same generator seed gives the same samples.
    again = euler_maruyama(problem.eps, schedule, x[:5], 10, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again, euler_maruyama(problem.eps, schedule, x[:5], 10,
                                                     generator=torch.Generator().manual_seed(1)))


def test_build_sampler_presets():
    schedule = VPSDE()
    problem = Gaussian(schedule, m=0.2, s=0.6)
    x = x_start(n=4, d=2)

    # order 0, method '', skip_type '', t_end 0: the preset's defaults (the sentinels of libs/config.py).
    cfg = ml_collections.ConfigDict({'algorithm': 'dpm_solver', 'sample_steps': 50, 'mini_batch_size': 4,
                                     'order': 0, 'method': '', 'skip_type': '', 't_end': 0.0})
    out = build_sampler(cfg, schedule)(problem.eps, x)
    expected = dpm_solver(problem.eps, schedule, x, 50, order=3, method='singlestep', algorithm_type='dpmsolver',
                          skip_type='logSNR', t_end=1e-4)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)

    cfg = ml_collections.ConfigDict({'algorithm': 'dpm_solver++', 'sample_steps': 20, 'order': 3,
                                     'skip_type': 'time_uniform', 't_end': 1e-3})
    out = build_sampler(cfg, schedule)(problem.eps, x)
    expected = dpm_solver(problem.eps, schedule, x, 20, order=3, method='multistep', algorithm_type='dpmsolver++',
                          skip_type='time_uniform', t_end=1e-3)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)

    # A discrete schedule ends at 1/N by default.
    discrete = DiscreteSchedule.linear()
    out = build_sampler(ml_collections.ConfigDict({'algorithm': 'dpm_solver++', 'sample_steps': 10}),
                        discrete)(problem.eps, x)
    expected = dpm_solver(problem.eps, discrete, x, 10, t_end=1e-3)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)

    out = build_sampler(ml_collections.ConfigDict({'algorithm': 'euler_maruyama_ode', 'sample_steps': 7,
                                                   't_end': 0.0, 'order': 0}), schedule)(problem.eps, x)
    torch.testing.assert_close(out, euler_maruyama(problem.eps, schedule, x, 7, t_end=1e-3, ode=True))

    torch.manual_seed(0)
    out = build_sampler(ml_collections.ConfigDict({'algorithm': 'euler_maruyama_sde', 'sample_steps': 7}),
                        schedule)(problem.eps, x)
    torch.manual_seed(0)
    torch.testing.assert_close(out, euler_maruyama(problem.eps, schedule, x, 7, t_end=1e-3))


def test_build_sampler_errors():
    schedule = VPSDE()
    assert set(SAMPLERS) == {'dpm_solver', 'dpm_solver++', 'euler_maruyama_sde', 'euler_maruyama_ode',
                             'ddpm_ancestral', 'ddpm_ancestral_beta_tilde'}
    with pytest.raises(UserError, match='known: dpm_solver, dpm_solver\\+\\+, euler_maruyama_sde'):
        build_sampler(ml_collections.ConfigDict({'algorithm': 'ddim', 'sample_steps': 10}), schedule)
    with pytest.raises(UserError, match='sample_steps'):
        build_sampler(ml_collections.ConfigDict({'algorithm': 'dpm_solver'}), schedule)
    with pytest.raises(UserError, match='known: 1, 2, 3'):
        build_sampler(ml_collections.ConfigDict({'algorithm': 'dpm_solver', 'sample_steps': 10, 'order': 4}),
                      schedule)
    with pytest.raises(UserError, match='skip_type'):
        build_sampler(ml_collections.ConfigDict({'algorithm': 'dpm_solver', 'sample_steps': 10,
                                                 'skip_type': 'uniform'}), schedule)
    with pytest.raises(UserError, match='t_end'):
        dpm_solver(lambda x, t: x, schedule, torch.zeros(1, 1), 5, t_end=2.0)


def test_float32_samples_and_time_dtype():
    schedule = VPSDE()
    seen = []

    def eps_fn(x, t):
        seen.append((t.dtype, t.shape))
        return torch.zeros_like(x)

    x = torch.randn(3, 2)
    for algorithm_type in ('dpmsolver', 'dpmsolver++'):
        out = dpm_solver(eps_fn, schedule, x, 4, order=3, algorithm_type=algorithm_type, method='singlestep')
        assert out.dtype == torch.float32
    assert euler_maruyama(eps_fn, schedule, x, 3).dtype == torch.float32
    assert set(seen) == {(torch.float32, (3,))}


def ancestral_moments(problem, steps, variance):
    """Mean and variance of the ancestral chain's output for Gaussian data, propagated exactly.

    With the exact predictor eps = k (x - alpha m), k = sigma / (alpha^2 s^2 + sigma^2), every step is the affine
    map x <- A x + b plus independent noise of variance v, so N(mu, var) goes to N(A mu + b, A^2 var + v).
    """
    schedule = problem.schedule
    big_n = schedule.num_steps
    abar = schedule.alphas_cumprod
    grid = step_grid(big_n, steps)
    mu, var = torch.zeros_like(problem.m), torch.ones_like(problem.m)
    for i, n in enumerate(grid):
        abar_n = abar[n - 1]
        abar_prev = abar[grid[i + 1] - 1] if i + 1 < len(grid) else torch.tensor(1.0, dtype=F64)
        alpha_step, beta_step = abar_n / abar_prev, 1 - abar_n / abar_prev
        alpha_t, sigma_t = abar_n.sqrt(), (1 - abar_n).sqrt()
        k = sigma_t / (alpha_t ** 2 * problem.s ** 2 + sigma_t ** 2)
        c = beta_step / sigma_t
        a_map = (1 - c * k) / alpha_step.sqrt()
        b_map = c * k * alpha_t * problem.m / alpha_step.sqrt()
        noise = 0.0
        if i + 1 < len(grid):
            noise = beta_step if variance == 'beta' else (1 - abar_prev) / (1 - abar_n) * beta_step
        mu, var = a_map * mu + b_map, a_map ** 2 * var + noise
    return mu, var


@pytest.mark.parametrize('variance', ['beta', 'beta_tilde'])
def test_ddpm_ancestral_samples_the_data_distribution(variance):
    # Ho et al.'s 1000-step chain with the exact noise predictor of Gaussian data. The chain's output is Gaussian
    # with moments that follow exactly from the step formula (ancestral_moments); the samples must have those
    # moments (Monte-Carlo error), and those moments must be the data's: measured for sigma^2 = beta, std
    # off by at most 0.8%, means by 5e-6; for beta-tilde, which is too small a reverse variance, by 8% on the narrowest
    # dimension (s = 0.05: the final noise-free step to the posterior mean also loses part of its variance).
    problem = Gaussian(DiscreteSchedule.linear(), m=MEANS, s=STDS)
    generator = torch.Generator().manual_seed(0)
    n = 4000
    x = torch.randn(n, 4, dtype=F64, generator=generator)
    problem.calls = 0
    out = ddpm_ancestral(problem.eps, problem.schedule, x, variance=variance, generator=generator)
    assert problem.calls == 1000
    mu, var = ancestral_moments(problem, 1000, variance)
    std = var.sqrt()
    assert ((out.mean(0) - mu).abs() < 4 * std / math.sqrt(n)).all(), (out.mean(0), mu)
    assert ((out.std(0) / std - 1).abs() < 4 / math.sqrt(2 * n)).all(), (out.std(0), std)
    print(f'{variance}: chain mean - data mean {(mu - problem.m).tolist()}, chain std / data std '
          f'{(std / problem.s).tolist()}')
    assert ((mu - problem.m).abs() < 1e-3).all()
    tolerance = torch.tensor([0.01, 0.01, 0.01, 0.01] if variance == 'beta' else [0.09, 0.03, 0.01, 0.02], dtype=F64)
    assert ((std / problem.s - 1).abs() < tolerance).all(), std / problem.s


def test_ddpm_ancestral_respaced_and_through_the_registry():
    assert step_grid(1000, 1000) == list(range(1000, 0, -1))
    assert step_grid(1000, 4) == [1000, 667, 334, 1] and step_grid(10, 1) == [10]
    problem = Gaussian(DiscreteSchedule.cosine(), m=0.3, s=0.5)
    # 50 of the 1000 steps: the respaced chain still ends near the data (std within 5%).
    mu, var = ancestral_moments(problem, 50, 'beta')
    assert abs(float(mu) - 0.3) < 1e-3 and abs(float(var.sqrt()) / 0.5 - 1) < 0.05
    # The one-step chain is Tweedie's posterior mean E[x_0 | x_N], a near-constant.
    mu, var = ancestral_moments(problem, 1, 'beta')
    assert abs(float(var.sqrt())) < 0.5 * 0.01
    seen = []

    def eps_fn(x, t):
        seen.append(t)
        return problem.eps(x, t)

    x = x_start(n=6, d=1)
    cfg = ml_collections.ConfigDict({'algorithm': 'ddpm_ancestral_beta_tilde', 'sample_steps': 4})
    torch.manual_seed(3)
    out = build_sampler(cfg, problem.schedule)(eps_fn, x)
    torch.manual_seed(3)
    torch.testing.assert_close(out, ddpm_ancestral(problem.eps, problem.schedule, x, 4, variance='beta_tilde'))
    assert [float(t[0]) for t in seen] == [1.0, 0.667, 0.334, 0.001] and seen[0].dtype == F64
    with pytest.raises(UserError, match='needs a discrete schedule'):
        ddpm_ancestral(problem.eps, VPSDE(), x, 10)
    with pytest.raises(UserError, match='needs a discrete schedule'):
        build_sampler(ml_collections.ConfigDict({'algorithm': 'ddpm_ancestral', 'sample_steps': 10}), VPSDE())
    with pytest.raises(UserError, match=r'takes 1\.\.1000 steps'):
        build_sampler(ml_collections.ConfigDict({'algorithm': 'ddpm_ancestral', 'sample_steps': 2000}),
                      problem.schedule)
