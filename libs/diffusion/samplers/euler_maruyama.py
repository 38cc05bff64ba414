"""Euler-Maruyama for the reverse-time SDE, and the Euler method for the probability-flow ODE.

With the forward SDE dx = f x dt + g dW and score = -eps / sigma, going from t down to t + dt (dt < 0):

    SDE: x <- x + (f x - g^2 score) dt + sqrt(g^2 |dt|) z,    z ~ N(0, I)
    ODE: x <- x + (f x - g^2 score / 2) dt

The U-ViT release's grid (``euler_grid``) is `steps` times uniform from 1 (or a given t_start: the schedule's t_max
where alpha(1) = 0, since f = alpha' / alpha is infinite there) down to t_end, then one last step from t_end to 0.
That last step adds no noise (nor does it for the ODE): a drift step from t_end to 0, which with the SDE drift is
close to a denoising step. So `steps` evaluations of eps_fn, all at t >= t_end.
"""
import math

import torch

from libs.diffusion.samplers.grids import time_uniform_grid
from libs.errors import UserError


def euler_grid(steps: int, t_end: float, t_start: float = 1.0) -> list:
    """The release's grid: ``steps`` times uniform in [t_end, t_start], then 0."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise UserError(f'the number of sampling steps must be a positive integer, got {steps!r}')
    if not 0.0 < t_end < 1.0:
        raise UserError(f'Euler-Maruyama needs 0 < t_end < 1, got t_end={t_end}')
    if not t_end < t_start <= 1.0:
        raise UserError(f'Euler-Maruyama needs t_end < t_start <= 1, got t_start={t_start}, t_end={t_end}')
    return (time_uniform_grid(None, steps - 1, float(t_start), float(t_end)) if steps > 1 else [float(t_start)]) + [0.0]


def euler_maruyama(eps_fn, schedule, x, timesteps, ode=False, noise=None, progress=False):
    """Step x from timesteps[0] through the decreasing grid ``timesteps`` (ending at 0, e.g. ``euler_grid``), one
    evaluation of eps_fn(x, t) (t a (B,) tensor of x's dtype) per step.

    ode: use the probability-flow ODE (deterministic) instead of the reverse SDE. noise: ``noise(x)`` -> N(0, I)
    shaped like x for the SDE (libs.rng; the global RNG if None); no noise is added on the last step. Returns x at
    timesteps[-1], x's dtype.
    """
    grid = [float(t) for t in timesteps]
    if len(grid) < 2 or any(a <= b for a, b in zip(grid[:-1], grid[1:])) or grid[-1] < 0.0:
        raise UserError(f'Euler-Maruyama needs a decreasing grid of times >= 0, got {grid[:5]}')
    noise = noise or torch.randn_like
    steps = len(grid) - 1
    steps_iter = range(steps)
    if progress:
        from tqdm.auto import tqdm
        steps_iter = tqdm(steps_iter, desc='Euler ODE' if ode else 'Euler-Maruyama')
    for i in steps_iter:
        t, dt = grid[i], grid[i + 1] - grid[i]
        tt = torch.tensor(t, dtype=torch.float64)
        f, g2 = (value.item() for value in schedule.sde_coefficients(tt))
        sigma = schedule.sigma(tt).item()
        eps = eps_fn(x, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)).to(x.dtype)
        # -g^2 score = g^2 eps / sigma; the ODE takes half of it.
        score_term = (0.5 if ode else 1.0) * g2 / sigma
        x = x + (f * x + score_term * eps) * dt
        if not ode and i < steps - 1:
            x = x + math.sqrt(-g2 * dt) * noise(x)
    return x
