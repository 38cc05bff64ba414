"""EDM's sampler (Karras et al. 2022, Algorithm 2): Heun's method on the probability-flow ODE in the noise level,
optionally with "churn" (noise added back before each step).

In the variance-exploding coordinates y = x / alpha(t) = x_0 + s eps, with s = sigma_ve(t) = sigma / alpha, the ODE
is dy / ds = eps(x, t): the noise prediction itself. One step from s to s' is

    Euler:  y' = y + (s' - s) eps(y, s)
    Heun:   y' = y + (s' - s) (eps(y, s) + eps(y_euler', s')) / 2

and the state is carried back to x = alpha y for each evaluation, so any schedule of the suite works (the VP SDE,
a discrete DDPM chain, EDM's ``KarrasSchedule``). EDM's deterministic sampler with N noise levels takes N - 1 Heun
steps and a last Euler step to s = 0: 2N - 1 evaluations. ``euler_steps`` final steps are Euler steps (1 for EDM;
2 makes an even number of evaluations).

Churn: at each level s in [s_min, s_max] the noise level is first raised to s_hat = s (1 + gamma),
gamma = min(s_churn / steps, sqrt(2) - 1), by adding sqrt(s_hat^2 - s^2) s_noise z. s_churn = 0 (the default, as
DDAE samples) is the deterministic sampler.
"""
import math

import torch

from libs.errors import UserError


def heun_evaluations(steps: int, euler_steps: int = 1) -> int:
    """Network evaluations of ``steps`` steps, the last ``euler_steps`` of them Euler steps."""
    return 2 * steps - euler_steps


def heun(eps_fn, schedule, x, timesteps, euler_steps=1, s_churn=0.0, s_min=0.0, s_max=float('inf'), s_noise=1.0,
         noise=None, progress=False):
    """Step x from timesteps[0] through the decreasing grid ``timesteps`` (its last time 0: clean data).

    eps_fn(x, t): noise prediction, t a (B,) tensor of x's dtype. schedule: any NoiseSchedule. noise: ``noise(x)``
    -> N(0, I) shaped like x (libs.rng; the global RNG if None), used only with churn. Returns x at the last time,
    x's dtype.
    """
    grid = [float(t) for t in timesteps]
    steps = len(grid) - 1
    if steps < 1 or any(a <= b for a, b in zip(grid[:-1], grid[1:])) or grid[-1] < 0.0:
        raise UserError(f'Heun needs a decreasing grid of times >= 0, got {grid[:5]}')
    if not 1 <= euler_steps <= steps:
        raise UserError(f'Heun takes 1..{steps} final Euler steps on this grid, got {euler_steps}')
    if s_churn < 0 or s_noise <= 0:
        raise UserError(f'Heun needs s_churn >= 0 and s_noise > 0, got s_churn={s_churn}, s_noise={s_noise}')
    noise = noise or torch.randn_like
    gamma_max = min(s_churn / steps, math.sqrt(2.0) - 1.0)

    def level(t):
        return float(schedule.ve_sigma(torch.tensor(t, dtype=torch.float64)))

    def alpha(t):
        return float(schedule.alpha(torch.tensor(t, dtype=torch.float64)))

    def slope(y, t):
        """eps at y = x / alpha(t), the derivative dy / ds."""
        times = torch.full((y.shape[0],), t, dtype=y.dtype, device=y.device)
        return eps_fn(alpha(t) * y, times).to(y.dtype)

    y = x / alpha(grid[0])
    visits = range(steps)
    if progress:
        from tqdm.auto import tqdm
        visits = tqdm(visits, desc='Heun')
    for i in visits:
        t, t_next = grid[i], grid[i + 1]
        s, s_next = level(t), level(t_next)
        gamma = gamma_max if s_min <= s <= s_max else 0.0
        if gamma > 0:
            s_hat = s * (1.0 + gamma)
            y = y + math.sqrt(s_hat ** 2 - s ** 2) * s_noise * noise(y)
            s, t = s_hat, float(schedule.t_from_ve_sigma(torch.tensor(s_hat, dtype=torch.float64)))
        d = slope(y, t)
        y_euler = y + (s_next - s) * d
        if i >= steps - euler_steps:
            y = y_euler
        else:
            y = y + (s_next - s) * 0.5 * (d + slope(y_euler, t_next))
    return alpha(grid[-1]) * y
