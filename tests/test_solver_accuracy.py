"""Accuracy of the registered samplers at few network evaluations (issue 10), on Gaussian data in closed form.

The problem: x_0 ~ N(0.5, 0.3^2) in every dimension under the VP SDE (beta 0.1 -> 20), x_T = torch.randn(4096, 1, 2,
2) with seed 0, solved from t = 1 to the preset's end (t_end = 1e-4; the Euler preset ends at t = 0) with the exact
noise predictor, in float64. The error is the RMS error of the endpoint against the exact probability-flow map
(tests/test_samplers.py's Gaussian). `scripts/plot_solver_convergence.py --figure accuracy` prints and plots the same
numbers; docs/solvers.md ("Few-step accuracy") has them with the reasons for the final-order rule.
"""
import math

import ml_collections
import pytest
import torch

from libs.diffusion.samplers import DPM_SOLVER_T_END, SAMPLERS, build_sampler, time_grid
from libs.diffusion.samplers.unipc import unipc
from libs.diffusion.schedules import VPSDE
from libs.errors import UserError
from libs.rng import generator_noise
from test_samplers import Gaussian

F64 = torch.float64
MEAN, STD = 0.5, 0.3
NFES = (5, 10, 20, 50)
# Where each preset's sampler ends when it is not at DPM_SOLVER_T_END (the Euler grids' last step goes to t = 0; SiT's
# Heun, which evaluates at its end, stops at the schedule's t_min on a VP schedule, whose velocity is infinite at 0).
END_TIMES = {'euler_maruyama_ode': 0.0, 'flow_euler': 0.0, 'flow_heun': VPSDE.t_min}
# The order-3 overrides of the presets that are not third order already (multistep DPM-Solver / DPM-Solver++).
ORDER3_OVERRIDES = {'dpm_solver': {'method': 'multistep', 'order': 3}, 'dpm_solver++': {'order': 3}}
# Issue 10's goal: the best configuration at 10 NFE has at most this error (half the release's DPM-Solver-3's).
BEST_AT_10 = 6.8e-3

pytestmark = pytest.mark.usefixtures('one_thread')


def accuracy_problem(samples=4096):
    """(problem, x_T): the Gaussian data and the first `samples` of the 4096 starting points."""
    x = torch.randn(4096, 1, 2, 2, generator=torch.Generator().manual_seed(0)).to(F64)
    return Gaussian(VPSDE(), MEAN, STD), x[:samples]


def deterministic_presets(problem, x):
    """The names in SAMPLERS whose sampler on the VP SDE does not depend on its noise (the ddpm_ancestral presets,
    which need a discrete schedule, are left out, and the adaptive flow_dopri5, whose evaluations are not a given
    number: tests/test_flow.py checks it against its tolerances)."""
    names = []
    for name in SAMPLERS:
        try:
            sampler = build_sampler(ml_collections.ConfigDict({'algorithm': name, 'sample_steps': 8}), problem.schedule)
        except UserError as error:
            assert 'discrete schedule' in str(error), (name, error)
            continue
        if sampler.adaptive:
            continue
        model_fn = model_function(problem, sampler)
        first = sampler(model_fn, x[:8], noise=generator_noise(torch.Generator().manual_seed(1)))
        second = sampler(model_fn, x[:8], noise=generator_noise(torch.Generator().manual_seed(2)))
        if torch.equal(first, second):
            names.append(name)
    return names


def model_function(problem, sampler):
    """The exact noise predictor, or the exact velocity for SiT's samplers."""
    return problem.velocity if sampler.consumes == 'velocity' else problem.eps


def configurations(problem, x):
    """{label: config.sample overrides}: every deterministic preset and the order-3 overrides."""
    configs = {name: {'algorithm': name} for name in deterministic_presets(problem, x)}
    for name, override in ORDER3_OVERRIDES.items():
        configs[f'{name} ' + ' '.join(f'{k}={v}' for k, v in override.items())] = dict(override, algorithm=name)
    return configs


def endpoint_error(problem, x, sample_cfg, nfe):
    """RMS error of the sampler's endpoint at `nfe` evaluations (config.sample_steps) against the exact map."""
    sampler = build_sampler(ml_collections.ConfigDict(dict(sample_cfg, sample_steps=nfe)), problem.schedule)
    end = END_TIMES.get(sample_cfg['algorithm'], DPM_SOLVER_T_END)
    out = sampler(model_function(problem, sampler), x)
    return (out - problem.ode_solution(x, 1.0, end)).pow(2).mean().sqrt().item()


@pytest.fixture(scope='module')
def errors():
    torch.set_num_threads(1)
    problem, x = accuracy_problem()
    return {label: [endpoint_error(problem, x, cfg, n) for n in NFES]
            for label, cfg in configurations(problem, x).items()}


def test_the_deterministic_presets_are_found():
    problem, x = accuracy_problem(64)
    names = deterministic_presets(problem, x)
    assert {'dpm_solver', 'dpm_solver++', 'euler_maruyama_ode', 'unipc', 'unipc_bh1'} <= set(names)
    assert 'euler_maruyama_sde' not in names and not any(n.startswith('ddpm_ancestral') for n in names)


def test_every_deterministic_preset_falls_monotonically_over_nfe(errors):
    # On main, DPM-Solver++(2M) measured 2.2e-2 at 5 NFE and 3.4e-2 at 10, its order-3 override 4.2e-3 and 2.1e-2.
    for label, errs in errors.items():
        assert all(later < earlier for earlier, later in zip(errs, errs[1:])), (label, dict(zip(NFES, errs)))


def test_the_best_configuration_at_10_nfe_halves_the_release_sampler(errors):
    at_10 = {label: errs[NFES.index(10)] for label, errs in errors.items()}
    best = min(at_10, key=at_10.get)
    assert at_10[best] <= BEST_AT_10, (best, at_10)
    assert at_10[best] <= 0.5 * at_10['dpm_solver'], (best, at_10)


@pytest.mark.parametrize('algorithm_type', ['dpmsolver++', 'dpmsolver'])
@pytest.mark.parametrize('order,variant', [(1, 'bh1'), (1, 'bh2'), (2, 'bh1'), (2, 'bh2'), (3, 'bh2')])
def test_unipc_converges_with_order_p_plus_1(order, variant, algorithm_type):
    # With its corrector, UniPC-p has order p + 1. The slope between 200 and 400 steps (h = 0.054 and 0.027 in
    # lambda; nothing is lowered at these step counts) measured within 0.1 of it; errors 1e-5 (p = 1) to 7e-9.
    problem, x = accuracy_problem(256)
    exact = problem.ode_solution(x, 1.0, DPM_SOLVER_T_END)
    errs = []
    for steps in (200, 400):
        grid = time_grid(problem.schedule, steps, 1.0, DPM_SOLVER_T_END, 'logSNR')
        out = unipc(problem.eps, problem.schedule, x, grid, order=order, variant=variant, algorithm_type=algorithm_type)
        errs.append((out - exact).pow(2).mean().sqrt().item())
    assert abs(math.log(errs[0] / errs[1]) / math.log(2) - (order + 1)) < 0.25, errs
    if order == 3:
        # UniP-3 alone measures ~3.9 here: like DPM-Solver-3M (docs/solvers.md), its h^3 error term is nearly a
        # boundary term in lambda on this range, so order 3 is asymptotic only at many more steps.
        return
    # ... and without the corrector, UniP-p has order p
    errs_p = []
    for steps in (200, 400):
        grid = time_grid(problem.schedule, steps, 1.0, DPM_SOLVER_T_END, 'logSNR')
        out = unipc(problem.eps, problem.schedule, x, grid, order=order, variant=variant, algorithm_type=algorithm_type,
                    corrector=False)
        errs_p.append((out - exact).pow(2).mean().sqrt().item())
    assert abs(math.log(errs_p[0] / errs_p[1]) / math.log(2) - order) < 0.25, errs_p
