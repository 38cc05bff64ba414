"""Ancestral sampling of a discrete DDPM (Ho et al. 2020, Algorithm 2), optionally on a respaced step grid.

For an N-step ``DiscreteSchedule``, one step from x_n to the next visited step p (libs/diffusion/ddpm.py) is

    x_p = (x_n - beta / sqrt(1 - abar_n) eps(x_n, n / N)) / sqrt(alpha) + sigma z,    z ~ N(0, I),

with sigma^2 = beta (``variance='beta'``) or the posterior variance (``'beta_tilde'``); the last step (to x_0)
adds no noise. The grid (``grids.ddpm_steps``) visits n_K = N > ... > n_1 = 1 and uses the betas of that coarser
chain, beta = 1 - abar_n / abar_p (the respacing of Nichol & Dhariwal 2021); the full grid is exactly Algorithm 2.

``ddpm_ancestral_learned`` takes a model function that also returns the learned variance (DiT's): sigma^2
interpolates in log between that step's beta and beta_tilde of the respaced chain (libs/diffusion/ddpm.py), and the
network is still called at the visited step's own time n / N, as the respaced sampler of Nichol & Dhariwal does.
"""
import math

import torch

from libs.diffusion.ddpm import VARIANCES, learned_log_variance, posterior_step
from libs.diffusion.samplers.grids import ddpm_steps
from libs.diffusion.schedules import DiscreteSchedule
from libs.errors import UserError


def check_options(schedule, steps, variance) -> list:
    """UserError for a continuous schedule, a step count outside 1..N or an unknown variance; else the grid."""
    require_discrete(schedule, 'ddpm_ancestral')
    check_variance(variance)
    return ddpm_steps(schedule.num_steps, schedule.num_steps if steps is None else steps)


def check_variance(variance) -> None:
    if variance not in VARIANCES:
        raise UserError(f'unknown ancestral variance {variance!r}; known: {", ".join(VARIANCES)}')


def require_discrete(schedule, sampler: str) -> None:
    if not isinstance(schedule, DiscreteSchedule):
        raise UserError(f'{sampler} needs a discrete schedule (config.schedule.name ddpm_linear, cosine, ...), '
                        f'got {schedule!r}')


def check_grid(schedule, steps_grid, sampler: str = 'ddpm_ancestral') -> list:
    """The visited steps as ints (all N of the chain if None); UserError unless they decrease within 1..N of a
    discrete schedule."""
    require_discrete(schedule, sampler)
    if steps_grid is None:
        return ddpm_steps(schedule.num_steps, schedule.num_steps)
    grid = [int(n) for n in steps_grid]
    if not grid or any(not 1 <= n <= schedule.num_steps for n in grid) or \
            any(a <= b for a, b in zip(grid[:-1], grid[1:])):
        raise UserError(f'a discrete sampler needs a decreasing grid of steps in 1..{schedule.num_steps}, '
                        f'got {grid[:5]}{"..." if len(grid) > 5 else ""}')
    return grid


def chain_visits(schedule, grid: list, x, desc: str, progress: bool):
    """The steps of a discrete sampler over ``grid``: for each visited step n, (n's time as a (B,) tensor of x's
    dtype, abar_n, abar_p of the next visited step (1 after the last), whether it is the last step), with a
    progress bar named ``desc`` when ``progress``."""
    abar = schedule.alphas_cumprod.tolist()
    visits = range(len(grid))
    if progress:
        from tqdm.auto import tqdm
        visits = tqdm(visits, desc=desc)
    for k in visits:
        n, last = grid[k], k + 1 == len(grid)
        t = torch.full((x.shape[0],), n / schedule.num_steps, dtype=x.dtype, device=x.device)
        yield t, abar[n - 1], 1.0 if last else abar[grid[k + 1] - 1], last


def ancestral_chain(step_fn, schedule, x, grid: list, noise, desc: str, progress: bool):
    """The ancestral update over ``grid``: ``step_fn(x, t, step, last) -> (eps, std)`` gives the noise prediction
    and the step's standard deviation (unused at the last step, which adds no noise) for the ``PosteriorStep``
    ``step``; x_p = (x_n - beta / sqrt(1 - abar_n) eps) / sqrt(alpha) + std z."""
    noise = noise or torch.randn_like
    for t, abar_n, abar_p, last in chain_visits(schedule, grid, x, desc, progress):
        step = posterior_step(abar_n, abar_p)
        eps, std = step_fn(x, t, step, last)
        x = (x - step.beta / math.sqrt(1.0 - abar_n) * eps.to(x.dtype)) / math.sqrt(step.alpha)
        if not last:
            x = x + std * noise(x)
    return x


def ddpm_ancestral(eps_fn, schedule, x, steps_grid=None, variance='beta', noise=None, progress=False):
    """Sample from x ~ N(0, I) at n = N down to n = 0, one evaluation of eps_fn(x, t) per visited step.

    eps_fn: noise prediction, called with t = n / N as a (B,) tensor of x's dtype. schedule: a DiscreteSchedule.
    steps_grid: the visited steps (``grids.ddpm_steps``; None: all N). noise: ``noise(x)`` -> N(0, I) shaped like
    x (libs.rng; the global RNG if None). Returns x_0 in x's dtype (not clamped).
    """
    grid = check_grid(schedule, steps_grid)
    check_variance(variance)

    def step_fn(x, t, step, last):
        return eps_fn(x, t), math.sqrt(step.variance(variance))

    return ancestral_chain(step_fn, schedule, x, grid, noise, 'DDPM ancestral', progress)


def ddpm_ancestral_learned(model_fn, schedule, x, steps_grid=None, noise=None, progress=False):
    """``ddpm_ancestral`` with the learned variance: ``model_fn(x, t)`` -> (B, 2C), the noise prediction then the
    variance output v in [-1, 1] (``Denoiser.noise_and_variance``); sigma^2 = exp(learned_log_variance(v, log beta,
    log beta_tilde)) elementwise, with the beta and beta_tilde of each step of the (respaced) chain. v = -1 is
    ``variance='beta_tilde'``, v = 1 ``'beta'``."""
    grid = check_grid(schedule, steps_grid, 'ddpm_ancestral_learned')

    def step_fn(x, t, step, last):
        eps, v = model_fn(x, t).chunk(2, dim=1)
        if last:   # no noise is added; beta_tilde is 0 here
            return eps, None
        log_variance = learned_log_variance(v.double(), math.log(step.beta), math.log(step.posterior_variance))
        return eps, torch.exp(0.5 * log_variance).to(x.dtype)

    return ancestral_chain(step_fn, schedule, x, grid, noise, 'DDPM ancestral (learned variance)', progress)
