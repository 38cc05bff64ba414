"""Step grids: the times (or discrete steps) a sampler visits, built apart from the samplers that take them.

Continuous grids are decreasing Python floats from ``t_start`` to ``t_end`` (n + 1 points for n steps), computed
in float64 on the CPU, with both ends exact:

- ``logSNR``: uniform in lambda(t) = log(alpha / sigma) (DPM-Solver's default);
- ``time_uniform``: uniform in t;
- ``time_quadratic``: uniform in sqrt(t);
- ``karras``: EDM's rho-grid (Karras et al. 2022, rho = 7): uniform in sigma_ve^(1/rho), where sigma_ve = sigma /
  alpha is the noise level of the equivalent variance-exploding process. On ``KarrasSchedule`` it is the
  ``time_uniform`` grid.

``ddpm_steps`` is the integer grid of a discrete N-step chain.
"""
import math

import torch

from libs.errors import UserError


def _exact_ends(t: torch.Tensor, t_start: float, t_end: float) -> list:
    t = t.tolist()
    t[0], t[-1] = float(t_start), float(t_end)
    return t


def log_snr_grid(schedule, n: int, t_start: float, t_end: float) -> list:
    lam_start = schedule.log_snr(torch.tensor(t_start, dtype=torch.float64))
    lam_end = schedule.log_snr(torch.tensor(t_end, dtype=torch.float64))
    lam = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64) * (lam_end - lam_start) + lam_start
    return _exact_ends(schedule.t_from_log_snr(lam), t_start, t_end)


def time_uniform_grid(schedule, n: int, t_start: float, t_end: float) -> list:
    return _exact_ends(torch.linspace(t_start, t_end, n + 1, dtype=torch.float64), t_start, t_end)


def time_quadratic_grid(schedule, n: int, t_start: float, t_end: float) -> list:
    t = torch.linspace(math.sqrt(t_start), math.sqrt(t_end), n + 1, dtype=torch.float64) ** 2
    return _exact_ends(t, t_start, t_end)


KARRAS_RHO = 7.0


def karras_grid(schedule, n: int, t_start: float, t_end: float, rho: float = KARRAS_RHO) -> list:
    start, end = (schedule.ve_sigma(torch.tensor(t, dtype=torch.float64)) ** (1.0 / rho) for t in (t_start, t_end))
    sigmas = (start + torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64) * (end - start)) ** rho
    return _exact_ends(schedule.t_from_ve_sigma(sigmas), t_start, t_end)


TIME_GRIDS = {
    'logSNR': log_snr_grid,
    'time_uniform': time_uniform_grid,
    'time_quadratic': time_quadratic_grid,
    'karras': karras_grid,
}


def time_grid(schedule, n: int, t_start: float, t_end: float, skip_type: str) -> list:
    """n + 1 decreasing times from t_start to t_end on the grid named ``skip_type`` (a key of TIME_GRIDS)."""
    if skip_type not in TIME_GRIDS:
        raise UserError(f'unknown step grid {skip_type!r}; known: {", ".join(TIME_GRIDS)}')
    if not isinstance(n, int) or isinstance(n, bool) or n < 1 or not 0.0 <= t_end < t_start:
        raise UserError(f'a step grid needs n >= 1 steps from t_start down to t_end >= 0, got n={n!r}, '
                        f't_start={t_start}, t_end={t_end}')
    return TIME_GRIDS[skip_type](schedule, n, t_start, t_end)


def ddpm_steps(num_steps: int, steps: int) -> list:
    """The visited steps n_K = N > ... > n_1 (= 1 when steps > 1) of an N-step chain, evenly spaced and rounded."""
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= num_steps:
        raise UserError(f'ancestral sampling takes 1..{num_steps} steps (the schedule has {num_steps}), '
                        f'got {steps!r}')
    if steps == 1:
        return [num_steps]
    grid = torch.linspace(1, num_steps, steps, dtype=torch.float64).round().long().tolist()
    return grid[::-1]
