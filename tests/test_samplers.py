"""Samplers on Gaussian data, where the noise predictor and the probability-flow ODE have closed forms.

x_0 ~ N(m, diag(s^2)): eps*(x, t) = sigma (x - alpha m) / (alpha^2 s^2 + sigma^2), and along ODE trajectories
(x_t - alpha_t m) / sqrt(alpha_t^2 s^2 + sigma_t^2) is constant. The samplers take their grids as arguments
(tests/test_grids.py checks the grid builders). The DDPM posterior step (libs/diffusion/ddpm.py) is checked against
the Gaussian conditional of the joint q(x_p, x_n | x_0), computed here without the DDPM formulas.
"""
import math

import ml_collections
import numpy as np
import pytest
import torch

from libs.diffusion.ddpm import posterior_step
from libs.diffusion.samplers import (SAMPLERS, build_sampler, ddpm_ancestral, ddpm_steps, dpm_solver, euler_grid,
                                     euler_maruyama, singlestep_grid, singlestep_orders, time_grid)
from libs.diffusion.samplers.dpm_solver import final_step_order
from libs.diffusion.samplers.unipc import unipc
from libs.diffusion.schedules import DiscreteSchedule, VPSDE
from libs.errors import UserError
from libs.rng import generator_noise

F64 = torch.float64


pytestmark = pytest.mark.usefixtures('one_thread')


class Gaussian:
    """Exact noise predictor and ODE solution for x_0 ~ N(m, diag(s^2)) under `schedule`; x is (B, D) with m and s
    of shape (D,) or scalars, or any (B, ...) with scalar m and s. Also used by scripts/plot_solver_convergence.py and
    tests/test_solver_accuracy.py."""

    def __init__(self, schedule, m, s):
        self.schedule = schedule
        self.m = torch.as_tensor(m, dtype=F64)
        self.s = torch.as_tensor(s, dtype=F64)
        self.calls = 0

    def _scales(self, t, x):
        t = torch.as_tensor(t, dtype=F64)
        shape = (-1,) + (1,) * (x.ndim - 1)
        return self.schedule.alpha(t).reshape(shape), self.schedule.sigma(t).reshape(shape)

    def eps(self, x, t):
        self.calls += 1
        alpha, sigma = self._scales(t, x)
        return sigma * (x - alpha * self.m) / (alpha ** 2 * self.s ** 2 + sigma ** 2)

    def velocity(self, x, t):
        """dx_t / dt = alpha' E[x_0 | x] + sigma' E[eps | x], what SiT's samplers take."""
        self.calls += 1
        alpha, sigma = self._scales(t, x)
        shape = (-1,) + (1,) * (x.ndim - 1)
        t = torch.as_tensor(t, dtype=F64)
        d_alpha, d_sigma = self.schedule.d_alpha_dt(t).reshape(shape), self.schedule.d_sigma_dt(t).reshape(shape)
        r = (x - alpha * self.m) / (alpha ** 2 * self.s ** 2 + sigma ** 2)
        return d_alpha * self.m + (alpha * d_alpha * self.s ** 2 + sigma * d_sigma) * r

    def ode_solution(self, x_start, t_start, t_end):
        a0, s0 = self._scales(t_start, x_start)
        a1, s1 = self._scales(t_end, x_start)
        z = (x_start - a0 * self.m) / torch.sqrt(a0 ** 2 * self.s ** 2 + s0 ** 2)
        return a1 * self.m + torch.sqrt(a1 ** 2 * self.s ** 2 + s1 ** 2) * z


def fitted_slope(steps, errors):
    """Order of convergence: minus the least-squares slope of log(error) against log(steps)."""
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0]


def x_start(n=16, d=4, seed=0):
    return torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(seed))


def rms(x):
    return x.pow(2).mean().sqrt().item()


def solve(eps_fn, schedule, x, steps, order=2, method='multistep', algorithm_type='dpmsolver++',
          skip_type='logSNR', t_start=1.0, t_end=None, **options):
    """DPM-Solver with `steps` evaluations from t_start to t_end (None: schedule.t_min) on the `skip_type` grid,
    the grid built as the presets build it (grids.time_grid; dpm_solver.singlestep_grid for singlestep)."""
    t_end = schedule.t_min if t_end is None else t_end
    if method == 'singlestep':
        boundaries, orders = singlestep_grid(schedule, steps, order, t_start, t_end, skip_type)
        return dpm_solver(eps_fn, schedule, x, boundaries, order=order, method=method, algorithm_type=algorithm_type,
                          orders=orders, **options)
    return dpm_solver(eps_fn, schedule, x, time_grid(schedule, steps, t_start, t_end, skip_type), order=order,
                      method=method, algorithm_type=algorithm_type, **options)


def dpm_errors(problem, steps_list, t_end, **options):
    """RMS error against the exact ODE solution, relative to the RMS of that solution."""
    x = x_start(d=problem.m.numel())
    exact = problem.ode_solution(x, 1.0, t_end)
    errors = []
    for steps in steps_list:
        out = solve(problem.eps, problem.schedule, x, steps, t_end=t_end, **options)
        errors.append(rms(out - exact) / rms(exact))
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
    # relative to the RMS of the exact solution (0.93); measured at the largest step count: 0.023, 2.5e-4, 6e-8
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
            solve(problem.eps, problem.schedule, x, steps, order=order, method=method,
                  algorithm_type=algorithm_type, denoise_to_zero=denoise_to_zero)
            assert problem.calls == steps + denoise_to_zero


def test_singlestep_orders():
    assert singlestep_orders(50, 3) == [3] * 16 + [2]
    assert singlestep_orders(49, 3) == [3] * 16 + [1]
    assert singlestep_orders(48, 3) == [3] * 16
    assert singlestep_orders(7, 2) == [2, 2, 2, 1]
    assert singlestep_orders(2, 3) == [2]
    assert singlestep_orders(4, 1) == [1] * 4


def test_singlestep_takes_its_segments_and_orders_from_the_arguments():
    # The grid is an argument: a hand-made grid with hand-made orders spends sum(orders) evaluations, and the
    # presets' grid (singlestep_grid) gives the same result whether its orders are passed or left to the default.
    problem = Gaussian(VPSDE(), m=0.2, s=0.7)
    x = x_start(n=3, d=2)
    problem.calls = 0
    dpm_solver(problem.eps, problem.schedule, x, [1.0, 0.5, 0.2, 0.01], order=3, method='singlestep',
               algorithm_type='dpmsolver', orders=[1, 3, 2])
    assert problem.calls == 6
    boundaries, orders = singlestep_grid(problem.schedule, 12, 3, 1.0, 1e-3, 'logSNR')
    assert orders == [3] * 4 and len(boundaries) == 5
    out = dpm_solver(problem.eps, problem.schedule, x, boundaries, order=3, method='singlestep', orders=orders)
    torch.testing.assert_close(out, dpm_solver(problem.eps, problem.schedule, x, boundaries, order=3,
                                               method='singlestep'), rtol=0, atol=0)
    for orders in ([3, 3, 3], [3, 3, 5, 1], [3, 3, -1, 1]):  # one order per segment, each 1, 2 or 3
        with pytest.raises(UserError, match=r'needs one order in \(1, 2, 3\) per segment'):
            dpm_solver(problem.eps, problem.schedule, x, boundaries, order=3, method='singlestep', orders=orders)


def test_first_order_step_is_ddim_and_denoise_to_zero_is_tweedie():
    schedule = VPSDE()
    problem = Gaussian(schedule, m=0.3, s=0.7)
    x = x_start(d=1)
    t0, t1 = torch.tensor([0.8], dtype=F64), torch.tensor([0.2], dtype=F64)
    a0, s0, a1, s1 = schedule.alpha(t0), schedule.sigma(t0), schedule.alpha(t1), schedule.sigma(t1)
    eps = problem.eps(x, t0)
    ddim = a1 * (x - s0 * eps) / a0 + s1 * eps
    scale = ddim.abs().max().item()
    for algorithm_type in ('dpmsolver', 'dpmsolver++'):
        out = dpm_solver(problem.eps, schedule, x, [0.8, 0.2], order=1, algorithm_type=algorithm_type)
        torch.testing.assert_close(out, ddim, rtol=1e-12, atol=1e-12 * scale)
    out = dpm_solver(problem.eps, schedule, x, [0.8, 0.2], order=1, denoise_to_zero=True)
    posterior_mean = 0.3 + a1 * 0.49 * (ddim - a1 * 0.3) / (a1 ** 2 * 0.49 + s1 ** 2)
    torch.testing.assert_close(out, posterior_mean, rtol=1e-12, atol=1e-12 * posterior_mean.abs().max().item())


def test_unipc_order_one_is_ddim_and_unip_2_is_dpm_solver_2m():
    # UniP-1 (no corrector) is DDIM; UniP-2 with B(h) = e^h - 1 is the papers' DPM-Solver(++)-2M update, which
    # dpm_solver's multistep order 2 uses. Both on a non-uniform grid, to float64 precision.
    problem = Gaussian(VPSDE(), m=MEANS, s=STDS)
    x = x_start()
    grid = time_grid(problem.schedule, 12, 1.0, 1e-3, 'time_quadratic')
    for algorithm_type in ('dpmsolver', 'dpmsolver++'):
        for order, variant in ((1, 'bh1'), (1, 'bh2'), (2, 'bh2')):
            out = unipc(problem.eps, problem.schedule, x, grid, order=order, variant=variant,
                        algorithm_type=algorithm_type, corrector=False)
            expected = dpm_solver(problem.eps, problem.schedule, x, grid, order=order, algorithm_type=algorithm_type)
            torch.testing.assert_close(out, expected, rtol=1e-13, atol=1e-13 * expected.abs().max().item())
        # the corrector changes the result (it makes UniPC-1 second order), except on one step, which has none
        corrected = unipc(problem.eps, problem.schedule, x, grid, order=1, algorithm_type=algorithm_type)
        assert rms(corrected - expected) > 1e-4 * rms(expected)
        one_step = unipc(problem.eps, problem.schedule, x, [0.8, 0.2], order=3, algorithm_type=algorithm_type)
        ddim = dpm_solver(problem.eps, problem.schedule, x, [0.8, 0.2], order=1, algorithm_type=algorithm_type)
        torch.testing.assert_close(one_step, ddim, rtol=1e-13, atol=1e-13 * ddim.abs().max().item())


def test_lower_order_final_rule():
    # Below 10 steps, order 3 ends 3, 2, 1 and order 2 keeps its order (docs/solvers.md, "Few-step accuracy").
    assert [final_step_order(i, 5, 3) for i in range(5)] == [3, 3, 3, 2, 1]
    assert [final_step_order(i, 9, 3) for i in range(9)][-3:] == [3, 2, 1]
    assert [final_step_order(i, 5, 2) for i in range(5)] == [2] * 5
    assert [final_step_order(i, 10, 3) for i in range(10)] == [3] * 10
    # ... for DPM-Solver and UniPC alike: a 5-step order-3 solve differs from one with lower_order_final=False
    problem = Gaussian(VPSDE(), m=0.5, s=0.3)
    x = x_start(n=4, d=1)
    grid = time_grid(problem.schedule, 5, 1.0, 1e-3, 'logSNR')
    for solver in (dpm_solver, unipc):
        lowered = solver(problem.eps, problem.schedule, x, grid, order=3)
        assert not torch.allclose(lowered, solver(problem.eps, problem.schedule, x, grid, order=3,
                                                  lower_order_final=False))
        kept = solver(problem.eps, problem.schedule, x, grid, order=2)
        torch.testing.assert_close(kept, solver(problem.eps, problem.schedule, x, grid, order=2,
                                                lower_order_final=False), rtol=0, atol=0)


def test_unipc_corrector_costs_no_evaluation():
    problem = Gaussian(VPSDE(), m=0.0, s=1.0)
    x = x_start(n=2, d=3)
    for order in (1, 2, 3, 4):
        for corrector in (True, False):
            for steps in list(range(1, 9)) + [30]:
                problem.calls = 0
                unipc(problem.eps, problem.schedule, x, time_grid(problem.schedule, steps, 1.0, 1e-3, 'logSNR'),
                      order=order, corrector=corrector)
                assert problem.calls == steps


def test_unipc_options_and_preset():
    schedule = VPSDE()
    problem = Gaussian(schedule, m=0.2, s=0.6)
    x = x_start(n=4, d=2)
    grid = time_grid(schedule, 6, 1.0, 1e-3, 'logSNR')
    with pytest.raises(UserError, match='unknown UniPC variant .bh3.; known: bh1, bh2'):
        unipc(problem.eps, schedule, x, grid, variant='bh3')
    with pytest.raises(UserError, match='unknown UniPC algorithm_type'):
        unipc(problem.eps, schedule, x, grid, algorithm_type='dpmsolver+')
    for bad in (0, 1.5, True):
        with pytest.raises(UserError, match='UniPC order must be a positive integer'):
            unipc(problem.eps, schedule, x, grid, order=bad)
    with pytest.raises(UserError, match='decreasing grid of positive times'):
        unipc(problem.eps, schedule, x, [1.0, 0.5, 0.0])
    # the presets: order 3, data prediction, logSNR to 1e-4; bh2 or bh1; the overrides win
    for name, variant in (('unipc', 'bh2'), ('unipc_bh1', 'bh1')):
        out = build_sampler(ml_collections.ConfigDict({'algorithm': name, 'sample_steps': 7, 'order': 0,
                                                       'method': '', 'skip_type': ''}), schedule)(problem.eps, x)
        expected = unipc(problem.eps, schedule, x, time_grid(schedule, 7, 1.0, 1e-4, 'logSNR'), order=3,
                         variant=variant, algorithm_type='dpmsolver++')
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    cfg = {'algorithm': 'unipc', 'sample_steps': 9, 'order': 2, 'method': 'multistep', 'skip_type': 'time_uniform',
           't_end': 1e-3}
    out = build_sampler(ml_collections.ConfigDict(cfg), schedule)(problem.eps, x)
    expected = unipc(problem.eps, schedule, x, time_grid(schedule, 9, 1.0, 1e-3, 'time_uniform'), order=2)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    for bad, match in (({'method': 'singlestep'}, 'UniPC is multistep only'), ({'order': -2}, 'positive integer'),
                       ({'skip_type': 'uniform'}, 'unknown UniPC skip_type'), ({'t_end': 1.5}, 't_end')):
        with pytest.raises(UserError, match=match):
            build_sampler(ml_collections.ConfigDict(dict({'algorithm': 'unipc', 'sample_steps': 5}, **bad)), schedule)


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
        out = euler_maruyama(problem.eps, schedule, x, euler_grid(steps, t_end), ode=True)
        assert problem.calls == steps
        errors.append(rms(out - target) / rms(target))
    assert abs(fitted_slope(steps_list, errors) - 1.0) < 0.15, errors


@pytest.mark.parametrize('schedule', [VPSDE(), DiscreteSchedule.linear()], ids=repr)
def test_euler_maruyama_sde_samples_the_data_distribution(schedule):
    m, s = torch.tensor([0.5, -0.2], dtype=F64), torch.tensor([0.5, 1.2], dtype=F64)
    problem = Gaussian(schedule, m=m, s=s)
    generator = torch.Generator().manual_seed(0)
    n = 12000
    x = torch.randn(n, 2, dtype=F64, generator=generator)
    out = euler_maruyama(problem.eps, schedule, x, euler_grid(200, 1e-3), noise=generator_noise(generator))
    # Monte-Carlo error + discretisation bias at 200 steps, in units of s (measured deviations, both included: at
    # most 0.95% of s for the mean and 0.9% for the std)
    mean_tolerance = 4 * s / math.sqrt(n) + 0.02 * s
    std_tolerance = 4 * s / math.sqrt(2 * n) + 0.02 * s
    assert ((out.mean(0) - m).abs() < mean_tolerance).all(), out.mean(0)
    assert ((out.std(0) - s).abs() < std_tolerance).all(), out.std(0)
    # The same noise seed gives the same samples; another seed gives other samples.
    grid = euler_grid(10, 1e-3)

    def run(seed):
        noise = generator_noise(torch.Generator().manual_seed(seed))
        return euler_maruyama(problem.eps, schedule, x[:5], grid, noise=noise)

    torch.testing.assert_close(run(1), run(1), rtol=0, atol=0)
    assert rms(run(1) - run(2)) > 0.1 * rms(run(1))


def test_euler_grid_is_the_release_grid():
    # steps times uniform from 1 down to t_end, then 0 (the U-ViT release's torch.linspace grid)
    assert euler_grid(1, 1e-3) == [1.0, 0.0]
    grid = euler_grid(5, 0.2)
    assert grid[0] == 1.0 and grid[-2] == 0.2 and grid[-1] == 0.0 and len(grid) == 6
    np.testing.assert_allclose(grid[:-1], np.linspace(1.0, 0.2, 5), rtol=1e-15)
    assert grid[:-1] == torch.linspace(1.0, 0.2, 5, dtype=F64).tolist()
    for bad in (0, 2.5):
        with pytest.raises(UserError, match='positive integer'):
            euler_grid(bad, 1e-3)
    with pytest.raises(UserError, match='t_end'):
        euler_grid(10, 1.0)


def test_build_sampler_presets():
    schedule = VPSDE()
    problem = Gaussian(schedule, m=0.2, s=0.6)
    x = x_start(n=4, d=2)

    # order 0, method '', skip_type '', t_end 0: the preset's defaults (the sentinels of libs/config.py).
    cfg = ml_collections.ConfigDict({'algorithm': 'dpm_solver', 'sample_steps': 50, 'mini_batch_size': 4,
                                     'order': 0, 'method': '', 'skip_type': '', 't_end': 0.0})
    out = build_sampler(cfg, schedule)(problem.eps, x)
    expected = solve(problem.eps, schedule, x, 50, order=3, method='singlestep', algorithm_type='dpmsolver',
                     skip_type='logSNR', t_end=1e-4)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)

    cfg = ml_collections.ConfigDict({'algorithm': 'dpm_solver++', 'sample_steps': 20, 'order': 3,
                                     'skip_type': 'time_uniform', 't_end': 1e-3})
    out = build_sampler(cfg, schedule)(problem.eps, x)
    expected = solve(problem.eps, schedule, x, 20, order=3, method='multistep', algorithm_type='dpmsolver++',
                     skip_type='time_uniform', t_end=1e-3)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)

    # A discrete schedule ends at 1/N by default.
    discrete = DiscreteSchedule.linear()
    out = build_sampler(ml_collections.ConfigDict({'algorithm': 'dpm_solver++', 'sample_steps': 10}),
                        discrete)(problem.eps, x)
    expected = solve(problem.eps, discrete, x, 10, t_end=1e-3)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)

    out = build_sampler(ml_collections.ConfigDict({'algorithm': 'euler_maruyama_ode', 'sample_steps': 7,
                                                   't_end': 0.0, 'order': 0}), schedule)(problem.eps, x)
    torch.testing.assert_close(out, euler_maruyama(problem.eps, schedule, x, euler_grid(7, 1e-3), ode=True),
                               rtol=0, atol=0)

    sde = build_sampler(ml_collections.ConfigDict({'algorithm': 'euler_maruyama_sde', 'sample_steps': 7}), schedule)
    torch.manual_seed(0)
    out = sde(problem.eps, x)
    torch.manual_seed(0)
    torch.testing.assert_close(out, euler_maruyama(problem.eps, schedule, x, euler_grid(7, 1e-3)), rtol=0, atol=0)
    # the sampler's noise argument reaches the stochastic sampler
    out = sde(problem.eps, x, noise=generator_noise(torch.Generator().manual_seed(4)))
    expected = euler_maruyama(problem.eps, schedule, x, euler_grid(7, 1e-3),
                              noise=generator_noise(torch.Generator().manual_seed(4)))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_build_sampler_errors():
    schedule = VPSDE()
    assert set(SAMPLERS) == {'dpm_solver', 'dpm_solver++', 'euler_maruyama_sde', 'euler_maruyama_ode', 'unipc',
                             'unipc_bh1', 'ddpm_ancestral', 'ddpm_ancestral_beta_tilde', 'ddpm_ancestral_learned',
                             'ddim', 'heun', 'flow_euler', 'flow_heun', 'flow_sde', 'flow_dopri5'}
    with pytest.raises(UserError, match='known: dpm_solver, dpm_solver\\+\\+, euler_maruyama_sde'):
        build_sampler(ml_collections.ConfigDict({'algorithm': 'plms', 'sample_steps': 10}), schedule)
    with pytest.raises(UserError, match='sample_steps'):
        build_sampler(ml_collections.ConfigDict({'algorithm': 'dpm_solver'}), schedule)
    with pytest.raises(UserError, match='known: 1, 2, 3'):
        build_sampler(ml_collections.ConfigDict({'algorithm': 'dpm_solver', 'sample_steps': 10, 'order': 4}),
                      schedule)
    with pytest.raises(UserError, match='skip_type'):
        build_sampler(ml_collections.ConfigDict({'algorithm': 'dpm_solver', 'sample_steps': 10,
                                                 'skip_type': 'uniform'}), schedule)
    with pytest.raises(UserError, match='t_end'):
        build_sampler(ml_collections.ConfigDict({'algorithm': 'dpm_solver++', 'sample_steps': 5, 't_end': 2.0}),
                      schedule)
    # the grid itself: a grid past t_start (the old t_end=2.0), or one that reaches t = 0, is refused
    for bad_grid in ([1.0, 1.5, 2.0], [1.0, 0.5, 0.0]):
        with pytest.raises(UserError, match='decreasing grid of positive times'):
            dpm_solver(lambda x, t: x, schedule, torch.zeros(1, 1), bad_grid)
    # ... and the grid builders refuse what cannot be a grid
    for n, t_start, t_end in ((5, 1.0, 2.0), (0, 1.0, 1e-3), (5, 1.0, -0.1)):
        with pytest.raises(UserError, match='a step grid needs n >= 1 steps'):
            time_grid(schedule, n, t_start, t_end, 'time_uniform')
    with pytest.raises(UserError, match='Euler-Maruyama needs a decreasing grid'):
        euler_maruyama(lambda x, t: x, schedule, torch.zeros(1, 1), [1.0, 0.5, 0.7, 0.0])
    discrete = DiscreteSchedule.linear(10)
    for bad_steps in ([0], [2000, 1], [1, 5], [5, 5, 1]):
        with pytest.raises(UserError, match=r'decreasing grid of steps in 1\.\.10'):
            ddpm_ancestral(lambda x, t: x, discrete, torch.zeros(1, 1), bad_steps)
    with pytest.raises(UserError, match='needs a discrete schedule'):
        ddpm_ancestral(lambda x, t: x, schedule, torch.zeros(1, 1), [1])


def test_float32_samples_and_time_dtype():
    schedule = VPSDE()
    seen = []

    def eps_fn(x, t):
        seen.append((t.dtype, t.shape))
        return torch.zeros_like(x)

    x = torch.randn(3, 2)
    for algorithm_type in ('dpmsolver', 'dpmsolver++'):
        out = solve(eps_fn, schedule, x, 4, order=3, algorithm_type=algorithm_type, method='singlestep')
        assert out.dtype == torch.float32
    assert euler_maruyama(eps_fn, schedule, x, euler_grid(3, 1e-3)).dtype == torch.float32
    assert set(seen) == {(torch.float32, (3,))}


def ancestral_moments(problem, steps, variance):
    """Mean and variance of the ancestral chain's output for Gaussian data, propagated exactly.

    With the exact predictor eps = k (x - alpha m), k = sigma / (alpha^2 s^2 + sigma^2), every step is the affine
    map x <- A x + b plus independent noise of variance v, so N(mu, var) goes to N(A mu + b, A^2 var + v). The step
    constants are libs/diffusion/ddpm.py's (checked against the joint Gaussian in test_posterior_step_*).
    """
    schedule = problem.schedule
    abar = schedule.alphas_cumprod.tolist()
    grid = ddpm_steps(schedule.num_steps, steps)
    mu, var = torch.zeros_like(problem.m), torch.ones_like(problem.m)
    for i, n in enumerate(grid):
        abar_n = abar[n - 1]
        step = posterior_step(abar_n, abar[grid[i + 1] - 1] if i + 1 < len(grid) else 1.0)
        alpha_t, sigma_t = math.sqrt(abar_n), math.sqrt(1 - abar_n)
        k = sigma_t / (alpha_t ** 2 * problem.s ** 2 + sigma_t ** 2)
        c = step.beta / sigma_t
        a_map = (1 - c * k) / math.sqrt(step.alpha)
        b_map = c * k * alpha_t * problem.m / math.sqrt(step.alpha)
        noise = step.variance(variance) if i + 1 < len(grid) else 0.0
        mu, var = a_map * mu + b_map, a_map ** 2 * var + noise
    return mu, var


def joint_gaussian_posterior(abar_n, abar_p):
    """q(x_p | x_n, x_0) from the joint Gaussian of (x_p, x_n) given x_0, without the DDPM formulas:
    x_p = sqrt(abar_p) x_0 + sqrt(1 - abar_p) e, x_n = sqrt(abar_n / abar_p) x_p + sqrt(1 - abar_n / abar_p) e'.
    Returns (coefficient of x_0, coefficient of x_n, variance) of the conditional."""
    a = math.sqrt(abar_n / abar_p)
    mean = np.array([math.sqrt(abar_p), math.sqrt(abar_n)])                # E[x_p], E[x_n] per unit x_0
    cov = np.array([[1 - abar_p, a * (1 - abar_p)],
                    [a * (1 - abar_p), a * a * (1 - abar_p) + 1 - abar_n / abar_p]])
    gain = cov[0, 1] / cov[1, 1]
    return mean[0] - gain * mean[1], gain, cov[0, 0] - gain * cov[0, 1]


@pytest.mark.parametrize('abar_n,abar_p', [(0.5, 0.9), (4e-5, 0.3), (0.97, 0.999), (0.2, 0.2 / 0.98)])
def test_posterior_step_is_the_gaussian_conditional(abar_n, abar_p):
    step = posterior_step(abar_n, abar_p)
    x0_coef, xt_coef, variance = joint_gaussian_posterior(abar_n, abar_p)
    assert step.alpha == pytest.approx(abar_n / abar_p, rel=1e-14)
    assert step.beta == pytest.approx(1 - abar_n / abar_p, rel=1e-12)
    assert step.x0_coef == pytest.approx(x0_coef, rel=1e-9)
    assert step.posterior_variance == pytest.approx(variance, rel=1e-9)
    assert step.variance('beta_tilde') == step.posterior_variance and step.variance('beta') == step.beta


@pytest.mark.parametrize('variance', ['beta', 'beta_tilde'])
def test_an_ancestral_step_draws_from_the_posterior_at_the_predicted_x0(variance):
    # On the respaced grid 700 -> 300 -> 1, the sampler's x at its second evaluation is the joint-Gaussian posterior
    # mean at x0_hat = (x_700 - sqrt(1 - abar_700) eps) / sqrt(abar_700), plus sqrt(v) z with v = 1 - abar_700 /
    # abar_300 ('beta') or the conditional variance ('beta_tilde') and z the sampler's noise draw.
    schedule = DiscreteSchedule.linear()
    abar = schedule.alphas_cumprod.tolist()
    abar_n, abar_p = abar[699], abar[299]
    x = x_start(n=5, d=3)
    eps, z = x_start(n=5, d=3, seed=1), x_start(n=5, d=3, seed=2)
    seen = []

    def eps_fn(x_now, t):
        seen.append(x_now)
        return eps

    ddpm_ancestral(eps_fn, schedule, x, [700, 300, 1], variance=variance, noise=lambda like: z)
    x0_coef, xt_coef, posterior_variance = joint_gaussian_posterior(abar_n, abar_p)
    x0_hat = (x - math.sqrt(1 - abar_n) * eps) / math.sqrt(abar_n)
    v = 1 - abar_n / abar_p if variance == 'beta' else posterior_variance
    expected = x0_coef * x0_hat + xt_coef * x + math.sqrt(v) * z
    assert len(seen) == 3
    torch.testing.assert_close(seen[1], expected, rtol=1e-9, atol=1e-9 * expected.abs().max().item())


def test_posterior_step_of_the_chain():
    schedule = DiscreteSchedule.linear()
    betas, abar = schedule.betas.tolist(), schedule.alphas_cumprod.tolist()
    for n in (2, 10, 500, 1000):
        # one step of the N-step chain: beta is the schedule's beta_n, whether passed or derived from abar
        derived = posterior_step(abar[n - 1], abar[n - 2])
        assert derived.beta == pytest.approx(betas[n - 1], rel=1e-9)
        passed = posterior_step(abar[n - 1], abar[n - 2], betas[n - 1])
        assert passed.beta == betas[n - 1]
        assert passed.posterior_variance == pytest.approx((1 - abar[n - 2]) * betas[n - 1] / (1 - abar[n - 1]),
                                                          rel=1e-12)
    # the last step, to x_0 (abar_p = 1): the posterior is x_0 itself
    last = posterior_step(abar[0], 1.0)
    assert last.posterior_variance == 0.0 and last.x0_coef == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(UserError, match='known: beta, beta_tilde'):
        last.variance('learned')


@pytest.mark.parametrize('variance', ['beta', 'beta_tilde'])
def test_ddpm_ancestral_samples_the_data_distribution(variance):
    # Ho et al.'s 1000-step chain with the exact noise predictor of Gaussian data. The chain's output is Gaussian
    # with moments that follow exactly from the step formula (ancestral_moments); the samples must have those
    # moments (Monte-Carlo error), and those moments must be the data's: measured for sigma^2 = beta, std
    # off by at most 0.8%, means by 5e-6 (7e-6 s); for beta-tilde, which is too small a reverse variance, by 8% on
    # the narrowest dimension (s = 0.05: the final noise-free step to the posterior mean also loses part of its
    # variance).
    problem = Gaussian(DiscreteSchedule.linear(), m=MEANS, s=STDS)
    generator = torch.Generator().manual_seed(0)
    n = 4000
    x = torch.randn(n, 4, dtype=F64, generator=generator)
    problem.calls = 0
    out = ddpm_ancestral(problem.eps, problem.schedule, x, variance=variance, noise=generator_noise(generator))
    assert problem.calls == 1000
    mu, var = ancestral_moments(problem, 1000, variance)
    std = var.sqrt()
    assert ((out.mean(0) - mu).abs() < 4 * std / math.sqrt(n)).all(), (out.mean(0), mu)
    assert ((out.std(0) / std - 1).abs() < 4 / math.sqrt(2 * n)).all(), (out.std(0), std)
    print(f'{variance}: chain mean - data mean {(mu - problem.m).tolist()}, chain std / data std '
          f'{(std / problem.s).tolist()}')
    assert ((mu - problem.m).abs() < 1e-3 * problem.s).all()   # measured: at most 7e-6 s
    tolerance = torch.tensor([0.01, 0.01, 0.01, 0.01] if variance == 'beta' else [0.09, 0.03, 0.01, 0.02], dtype=F64)
    assert ((std / problem.s - 1).abs() < tolerance).all(), std / problem.s


def test_ddpm_ancestral_respaced_and_through_the_registry():
    assert ddpm_steps(1000, 1000) == list(range(1000, 0, -1))
    assert ddpm_steps(1000, 4) == [1000, 667, 334, 1] and ddpm_steps(10, 1) == [10]
    problem = Gaussian(DiscreteSchedule.cosine(), m=0.3, s=0.5)
    # 50 of the 1000 steps: the respaced chain still ends near the data (std within 5%).
    mu, var = ancestral_moments(problem, 50, 'beta')
    assert abs(float(mu) - 0.3) < 2e-3 * 0.5 and abs(float(var.sqrt()) / 0.5 - 1) < 0.05
    # The one-step chain is Tweedie's posterior mean E[x_0 | x_N], a near-constant.
    mu, var = ancestral_moments(problem, 1, 'beta')
    assert float(var.sqrt()) < 0.5 * 0.01
    seen = []

    def eps_fn(x, t):
        seen.append(t)
        return problem.eps(x, t)

    x = x_start(n=6, d=1)
    cfg = ml_collections.ConfigDict({'algorithm': 'ddpm_ancestral_beta_tilde', 'sample_steps': 4})
    sampler = build_sampler(cfg, problem.schedule)
    torch.manual_seed(3)
    out = sampler(eps_fn, x)
    torch.manual_seed(3)
    expected = ddpm_ancestral(problem.eps, problem.schedule, x, ddpm_steps(1000, 4), variance='beta_tilde')
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert [float(t[0]) for t in seen] == [1.0, 0.667, 0.334, 0.001] and seen[0].dtype == F64
    # the sampler's noise argument reaches the chain
    out = sampler(problem.eps, x, noise=generator_noise(torch.Generator().manual_seed(8)))
    expected = ddpm_ancestral(problem.eps, problem.schedule, x, ddpm_steps(1000, 4), variance='beta_tilde',
                              noise=generator_noise(torch.Generator().manual_seed(8)))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    with pytest.raises(UserError, match='needs a discrete schedule'):
        ddpm_ancestral(problem.eps, VPSDE(), x)
    with pytest.raises(UserError, match='needs a discrete schedule'):
        build_sampler(ml_collections.ConfigDict({'algorithm': 'ddpm_ancestral', 'sample_steps': 10}), VPSDE())
    with pytest.raises(UserError, match=r'takes 1\.\.1000 steps'):
        build_sampler(ml_collections.ConfigDict({'algorithm': 'ddpm_ancestral', 'sample_steps': 2000}),
                      problem.schedule)
