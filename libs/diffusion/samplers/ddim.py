"""DDIM (Song, Meng & Ermon 2021) on a sub-sequence of a discrete DDPM chain.

From step n to the next visited step p (abar_0 = 1 after the last visited step), with the network's eps and
x0 = (x_n - sqrt(1 - abar_n) eps) / sqrt(abar_n):

    x_p = sqrt(abar_p) x0 + sqrt(1 - abar_p - c^2) eps + c z,
    c = eta sqrt((1 - abar_p) / (1 - abar_n)) sqrt(1 - abar_n / abar_p),    z ~ N(0, I).

eta = 0 is deterministic (and is the first-order DPM-Solver on the same times); eta = 1 has the variance of the
ancestral sampler with the posterior variance. One evaluation per visited step; the last step lands on x0.
"""
import math

import torch

from libs.diffusion.samplers.ancestral import chain_visits, check_grid
from libs.errors import UserError


def ddim(eps_fn, schedule, x, steps_grid, eta=0.0, noise=None, progress=False):
    """Sample from x ~ N(0, I) at steps_grid[0] down to x_0, visiting the decreasing steps ``steps_grid``
    (``grids.ddpm_steps``) of a ``DiscreteSchedule``. eps_fn(x, t) is called with t = n / N as a (B,) tensor of x's
    dtype; noise: ``noise(x)`` -> N(0, I) (libs.rng; the global RNG if None), used when eta > 0."""
    if eta < 0:
        raise UserError(f'DDIM needs sample.eta >= 0 (0: deterministic), got {eta}')
    grid = check_grid(schedule, steps_grid, 'ddim')
    noise = noise or torch.randn_like
    for t, abar_n, abar_p, _ in chain_visits(schedule, grid, x, 'DDIM', progress):
        eps = eps_fn(x, t).to(x.dtype)
        x0 = (x - math.sqrt(1.0 - abar_n) * eps) / math.sqrt(abar_n)
        c = eta * math.sqrt((1.0 - abar_p) / (1.0 - abar_n) * (1.0 - abar_n / abar_p))
        x = math.sqrt(abar_p) * x0 + math.sqrt(max(1.0 - abar_p - c * c, 0.0)) * eps
        if c > 0:
            x = x + c * noise(x)
    return x
