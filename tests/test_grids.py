"""Step grids (libs/diffusion/samplers/grids.py): the ends are exact, the times decrease, the spacing is uniform in
the grid's own variable (log-SNR, t or sqrt(t)), and the discrete chain's steps are the evenly spaced integers."""
import math

import numpy as np
import pytest
import torch

from libs.diffusion.samplers import TIME_GRIDS, ddpm_steps, singlestep_grid, time_grid
from libs.diffusion.samplers.grids import karras_grid, log_snr_grid, time_quadratic_grid, time_uniform_grid
from libs.diffusion.schedules import DiscreteSchedule, VPSDE
from libs.errors import UserError

F64 = torch.float64

# the variable each grid is uniform in, as a function of t
UNIFORM_IN = {
    'logSNR': lambda schedule, t: schedule.log_snr(torch.tensor(t, dtype=F64)).numpy(),
    'time_uniform': lambda schedule, t: np.asarray(t),
    'time_quadratic': lambda schedule, t: np.sqrt(t),
    'karras': lambda schedule, t: schedule.ve_sigma(torch.tensor(t, dtype=F64)).numpy() ** (1 / 7),
}


def test_the_registry_names_the_four_grids():
    assert TIME_GRIDS == {'logSNR': log_snr_grid, 'time_uniform': time_uniform_grid,
                          'time_quadratic': time_quadratic_grid, 'karras': karras_grid}


@pytest.mark.parametrize('skip_type', list(TIME_GRIDS))
@pytest.mark.parametrize('schedule', [VPSDE(), DiscreteSchedule.cosine()], ids=repr)
@pytest.mark.parametrize('n,t_start,t_end', [(1, 1.0, 1e-3), (7, 1.0, 1e-4), (50, 0.8, 0.3)])
def test_continuous_grids(skip_type, schedule, n, t_start, t_end):
    grid = time_grid(schedule, n, t_start, t_end, skip_type)
    assert isinstance(grid, list) and all(type(t) is float for t in grid)
    assert len(grid) == n + 1
    assert grid[0] == t_start and grid[-1] == t_end                      # bit-exact ends
    assert all(b < a for a, b in zip(grid[:-1], grid[1:]))               # strictly decreasing
    u = UNIFORM_IN[skip_type](schedule, grid)
    steps = np.diff(u)
    # equal steps of (u_end - u_start) / n, to rounding relative to the size of u
    expected = (u[-1] - u[0]) / n
    np.testing.assert_allclose(steps, expected, rtol=0, atol=1e-9 * np.abs(u).max())
    assert TIME_GRIDS[skip_type](schedule, n, t_start, t_end) == grid


def test_grids_against_closed_forms():
    # time_uniform and time_quadratic do not depend on the schedule; logSNR on the VP SDE inverts in closed form:
    # lambda(t) = -log(e^(I(t)) - 1) / 2 with I(t) = beta_min t + (beta_max - beta_min) t^2 / 2.
    assert time_grid(None, 4, 1.0, 0.2, 'time_uniform') == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2], rel=1e-15)
    assert time_grid(None, 2, 1.0, 0.25, 'time_quadratic') == pytest.approx([1.0, 0.5625, 0.25], rel=1e-15)
    vp = VPSDE()

    def log_snr(t):
        return -0.5 * math.log(math.expm1(vp.beta_min * t + 0.5 * (vp.beta_max - vp.beta_min) * t * t))

    def t_of(lam):   # the positive root of the quadratic I(t) = log(1 + e^(-2 lambda))
        a, b, c = 0.5 * (vp.beta_max - vp.beta_min), vp.beta_min, -math.log1p(math.exp(-2 * lam))
        return (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)

    lam = np.linspace(log_snr(1.0), log_snr(1e-3), 6)
    assert time_grid(vp, 5, 1.0, 1e-3, 'logSNR') == pytest.approx([t_of(v) for v in lam], rel=1e-9)


def test_unknown_grid():
    with pytest.raises(UserError, match="unknown step grid 'uniform'; known: logSNR, time_uniform, time_quadratic"):
        time_grid(VPSDE(), 10, 1.0, 1e-3, 'uniform')


@pytest.mark.parametrize('skip_type', list(TIME_GRIDS))
def test_singlestep_grid(skip_type):
    schedule = VPSDE()
    boundaries, orders = singlestep_grid(schedule, 11, 3, 1.0, 1e-3, skip_type)
    assert orders == [3, 3, 3, 2]
    if skip_type == 'logSNR':
        # segments uniform in lambda
        assert boundaries == time_grid(schedule, 4, 1.0, 1e-3, 'logSNR')
    else:
        # the segment ends are points 0, 3, 6, 9, 11 of the 11-step grid
        inner = time_grid(schedule, 11, 1.0, 1e-3, skip_type)
        assert boundaries == [inner[i] for i in (0, 3, 6, 9, 11)]


def test_ddpm_steps():
    assert ddpm_steps(1000, 1000) == list(range(1000, 0, -1))
    assert ddpm_steps(1000, 4) == [1000, 667, 334, 1]
    assert ddpm_steps(10, 1) == [10]
    assert ddpm_steps(10, 2) == [10, 1]
    # evenly spaced: round(1 + k (N - 1) / (K - 1)), decreasing (K - 1 odd here, so that no point is a rounding tie)
    for num_steps, steps in ((1000, 50), (1000, 8), (100, 34), (4000, 250)):
        grid = ddpm_steps(num_steps, steps)
        expected = [int(np.round(1 + k * (num_steps - 1) / (steps - 1))) for k in range(steps)][::-1]
        assert grid == expected and len(set(grid)) == steps
    for bad in (0, 11, 2.0, True):
        with pytest.raises(UserError, match=r'takes 1\.\.10 steps'):
            ddpm_steps(10, bad)
