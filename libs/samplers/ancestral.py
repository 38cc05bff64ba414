"""Ancestral sampling of a discrete DDPM (Ho et al. 2020, Algorithm 2), optionally on a respaced step grid.

For an N-step ``DiscreteSchedule`` (betas beta_n, abar_n = prod_{i<=n} (1 - beta_i), abar_0 = 1), one step from
x_n to x_{n-1} is

    x_{n-1} = (x_n - beta_n / sqrt(1 - abar_n) eps(x_n, n / N)) / sqrt(alpha_n) + sigma_n z,    z ~ N(0, I),

with alpha_n = 1 - beta_n and sigma_n^2 = beta_n (``variance='beta'``) or the posterior variance
beta-tilde_n = (1 - abar_{n-1}) beta_n / (1 - abar_n) (``'beta_tilde'``); the last step (to x_0) adds no noise.
``steps`` < N visits the subsequence n_K = N > ... > n_1 = 1 (evenly spaced, rounded) and uses the betas of that
coarser chain, beta_k = 1 - abar_{n_k} / abar_{n_{k-1}} (the respacing of Nichol & Dhariwal 2021); steps = N is
exactly Algorithm 2.
"""
import math

import torch

from libs.errors import UserError
from libs.schedules import DiscreteSchedule

VARIANCES = ('beta', 'beta_tilde')


def step_grid(num_steps: int, steps: int) -> list:
    """The visited steps n_K = N > ... > n_1 (= 1 when steps > 1), as python ints."""
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= num_steps:
        raise UserError(f'ancestral sampling takes 1..{num_steps} steps (the schedule has {num_steps}), '
                        f'got {steps!r}')
    if steps == 1:
        return [num_steps]
    grid = torch.linspace(1, num_steps, steps, dtype=torch.float64).round().long().tolist()
    return grid[::-1]


def check_options(schedule, steps, variance) -> list:
    """UserError for a continuous schedule, a step count outside 1..N or an unknown variance; else the grid."""
    if not isinstance(schedule, DiscreteSchedule):
        raise UserError(f'ddpm_ancestral needs a discrete schedule (config.schedule.name linear, cosine, ...), '
                        f'got {schedule!r}')
    if variance not in VARIANCES:
        raise UserError(f'unknown ancestral variance {variance!r}; known: {", ".join(VARIANCES)}')
    return step_grid(schedule.num_steps, schedule.num_steps if steps is None else steps)


def ddpm_ancestral(eps_fn, schedule, x, steps=None, variance='beta', generator=None, progress=False):
    """Sample from x ~ N(0, I) at n = N down to n = 0 with ``steps`` evaluations of eps_fn(x, t).

    eps_fn: noise prediction, called with t = n / N as a (B,) tensor of x's dtype. schedule: a DiscreteSchedule.
    steps: None or N for the full chain. generator: a torch.Generator on x's device for the noise (the global RNG
    if None). Returns x_0 in x's dtype (not clamped).
    """
    grid = check_options(schedule, steps, variance)
    big_n = schedule.num_steps
    abar = schedule.alphas_cumprod.tolist()
    visits = range(len(grid))
    if progress:
        from tqdm.auto import tqdm
        visits = tqdm(visits, desc='DDPM ancestral')
    for k in visits:
        n = grid[k]
        abar_n = abar[n - 1]
        abar_prev = abar[grid[k + 1] - 1] if k + 1 < len(grid) else 1.0
        alpha = abar_n / abar_prev
        beta = 1.0 - alpha
        eps = eps_fn(x, torch.full((x.shape[0],), n / big_n, dtype=x.dtype, device=x.device)).to(x.dtype)
        x = (x - beta / math.sqrt(1.0 - abar_n) * eps) / math.sqrt(alpha)
        if k + 1 < len(grid):
            var = beta if variance == 'beta' else (1.0 - abar_prev) / (1.0 - abar_n) * beta
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + math.sqrt(var) * z
    return x
