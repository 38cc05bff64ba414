"""SiT's samplers (Ma et al. 2024, the release's transport/ package): the probability-flow ODE integrated in t over
the flow velocity, and its family of reverse-time SDEs integrated by Euler-Maruyama.

Time runs from t = 1 (noise) down to t = 0 (data), as everywhere in the suite; SiT's code integrates its own time
1 - t upwards. A model function ``velocity_fn(x, t)`` returns dx_t / dt = alpha' x0 + sigma' eps (the Denoiser's
``velocity``, whatever the network predicts); with a velocity model it is finite at t = 1 even where alpha(1) = 0,
so these samplers start at exactly t = 1 on the flow paths, as SiT's do.

ODE (``flow_ode``): dx / dt = v(x, t) on a decreasing grid, by Euler or by Heun's method (two evaluations a step,
the last at the step's end; an odd number of evaluations starts with one Euler step, where the flow is straightest).
SiT's release calls torchdiffeq's fixed-grid 'euler' and 'heun' on a grid uniform in t the same way.

SiT's default ODE solver, adaptive Dormand-Prince 5(4) (torchdiffeq's 'dopri5', SiT's atol 1e-6 and rtol 1e-3), is
``flow_dopri5``, with torchdiffeq's controller: the error of each step is the root mean square of the embedded
4th-order estimate's difference over atol + rtol max(|x|, |x_next|), a step is accepted at error <= 1, and the next
step size is the step times min(10, max(0.2, 0.9 error^(-1/5))) (never shrunk after an accepted step); the first
step is chosen as torchdiffeq chooses it (one more evaluation). One difference: torchdiffeq takes one error and one
step size for the whole batch, so its samples depend on which others share their batch; here every sample has its
own step size and time (the batch is evaluated together, a finished sample with step 0), so that each sample stays a
function of its own noise, as with every other sampler of the suite.

SDE (``flow_sde``): for any diffusion coefficient w(t) >= 0 the reverse-time SDE

    dx = [v(x, t) - w(t) s(x, t)] dt + sqrt(2 w(t)) dW,   s = grad log p_t = -eps / sigma,

(t decreasing) has the ODE's marginals; the score is read from the velocity, s = -(alpha v - alpha' x) / (kappa
sigma), kappa = alpha sigma' - alpha' sigma. An Euler-Maruyama step of size h > 0 from t to t - h is

    x <- x - [v - w s] h + sqrt(2 w h) z,   z ~ N(0, I).

SiT's choices of w (``DIFFUSION_FORMS``, its names, each times ``diffusion_norm`` n except 'decreasing'), in the
suite's t (SiT's 'linear' n (1 - t) and 'decreasing' (n cos(pi t) + 1)^2 / 4 are these in its own time):

    constant                n
    SBDM                    n g^2(t) / 2   (the forward SDE's g: score-based diffusion's own reverse SDE)
    sigma                   n sigma(t)     (SiT's sampling default)
    linear                  n t
    decreasing              (1 - n cos(pi t))^2 / 4
    increasing-decreasing   n sin(pi t)^2

(SiT's table of forms spells the last one 'inccreasing-decreasing', so its command-line choice fails there.) The SDE
stops at t = ``last_step_size`` and takes SiT's ``last_step`` to t = 0 with one more evaluation: 'Mean' (the drift
step without noise), 'Tweedie' (the x0 prediction, x0 = (x - sigma eps) / alpha), 'Euler' (an ODE step), or ''
(SiT's None: the SDE runs to t_end itself). SBDM's w = g^2 / 2 is infinite at alpha = 0: there the SDE starts at
the schedule's t_max.
"""
import math

import torch

from libs.diffusion.predictions import convert_prediction, time_derivatives
from libs.errors import UserError

LAST_STEPS = ('Mean', 'Tweedie', 'Euler', '')


def _at(schedule_fn, t: float) -> float:
    return float(schedule_fn(torch.tensor(t, dtype=torch.float64)))


# SiT's w(t) of the reverse SDE (the module docstring's table): (schedule, t in the suite's direction, norm) -> w.
DIFFUSION_FORMS = {
    'constant': lambda schedule, t, norm: norm,
    'SBDM': lambda schedule, t, norm: norm * 0.5 * _at(lambda u: schedule.sde_coefficients(u)[1], t),
    'sigma': lambda schedule, t, norm: norm * _at(schedule.sigma, t),
    'linear': lambda schedule, t, norm: norm * t,
    'decreasing': lambda schedule, t, norm: 0.25 * (1.0 - norm * math.cos(math.pi * t)) ** 2,
    'increasing-decreasing': lambda schedule, t, norm: norm * math.sin(math.pi * t) ** 2,
}


def check_sde_options(diffusion_form: str, diffusion_norm: float, last_step: str) -> None:
    """UserError for an unknown diffusion form or last step (naming the known ones), or a negative norm."""
    if diffusion_form not in DIFFUSION_FORMS:
        raise UserError(f'unknown sample.diffusion_form {diffusion_form!r}; known: {", ".join(DIFFUSION_FORMS)}')
    if last_step not in LAST_STEPS:
        raise UserError(f'unknown sample.last_step {last_step!r}; known: {", ".join(map(repr, LAST_STEPS))}')
    if diffusion_norm < 0:
        raise UserError(f'sample.diffusion_norm must be >= 0, got {diffusion_norm}')


def check_grid(grid: list, name: str) -> list:
    grid = [float(t) for t in grid]
    if len(grid) < 2 or any(a <= b for a, b in zip(grid[:-1], grid[1:])) or grid[-1] < 0.0 or grid[0] > 1.0:
        raise UserError(f'{name} needs a decreasing grid of times in [0, 1], got {grid[:5]}')
    return grid


def _visits(steps: int, desc: str, progress: bool):
    if progress:
        from tqdm.auto import tqdm
        return tqdm(range(steps), desc=desc)
    return range(steps)


def _evaluate(velocity_fn, x, t: float):
    return velocity_fn(x, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)).to(x.dtype)


def flow_ode(velocity_fn, x, timesteps, method: str = 'euler', euler_steps: int = 0, progress: bool = False):
    """Integrate dx / dt = velocity_fn(x, t) from timesteps[0] through the decreasing grid ``timesteps``.

    method 'euler': one evaluation per step (never at the last time); 'heun': Heun's method (two per step, the second
    at the step's end), except the first ``euler_steps`` steps, which are Euler steps (Heun's evaluations: 2 steps -
    euler_steps). t is passed as a (B,) tensor of x's dtype. Returns x at timesteps[-1], x's dtype.
    """
    if method not in ('euler', 'heun'):
        raise UserError(f"unknown flow ODE method {method!r}; known: euler, heun")
    grid = check_grid(timesteps, 'the flow ODE')
    steps = len(grid) - 1
    if method == 'heun' and not 0 <= euler_steps <= steps:
        raise UserError(f'the flow ODE takes 0..{steps} final Euler steps on this grid, got {euler_steps}')
    for i in _visits(steps, f'flow ODE ({method})', progress):
        t, t_next = grid[i], grid[i + 1]
        d = _evaluate(velocity_fn, x, t)
        x_euler = x + (t_next - t) * d
        if method == 'euler' or i < euler_steps:
            x = x_euler
        else:
            x = x + (t_next - t) * 0.5 * (d + _evaluate(velocity_fn, x_euler, t_next))
    return x


def flow_sde(velocity_fn, schedule, x, timesteps, diffusion_form: str = 'sigma', diffusion_norm: float = 1.0,
             last_step: str = 'Mean', noise=None, progress: bool = False):
    """Euler-Maruyama on SiT's reverse SDE (the module docstring) from timesteps[0] through the decreasing grid
    ``timesteps``, then ``last_step`` from timesteps[-1] to t = 0 (one more evaluation; none for '').

    velocity_fn(x, t): the flow velocity, t a (B,) tensor of x's dtype. noise: ``noise(x)`` -> N(0, I) shaped like
    x (libs.rng; the global RNG if None). Every evaluation is at a time with sigma > 0. Returns x at t = 0 (at
    timesteps[-1] with no last step), x's dtype.
    """
    check_sde_options(diffusion_form, diffusion_norm, last_step)
    grid = check_grid(timesteps, "SiT's SDE")
    noise = noise or torch.randn_like

    def drift(x, t, w):
        """(v, the SDE's drift v - w s) at (x, t)."""
        v = _evaluate(velocity_fn, x, t)
        if w == 0.0:
            return v, v
        alpha, sigma, d_alpha, d_sigma = time_derivatives(schedule, t)
        eps = convert_prediction('velocity', 'noise', v, x, alpha, sigma, d_alpha, d_sigma)
        return v, v + (w / sigma) * eps

    steps = len(grid) - 1
    for i in _visits(steps, "SiT's SDE (Euler-Maruyama)", progress):
        t, h = grid[i], grid[i] - grid[i + 1]
        w = DIFFUSION_FORMS[diffusion_form](schedule, t, diffusion_norm)
        x = x - drift(x, t, w)[1] * h + math.sqrt(2.0 * w * h) * noise(x)
    if not last_step:
        return x
    t = grid[-1]
    w = DIFFUSION_FORMS[diffusion_form](schedule, t, diffusion_norm)
    v, sde_drift = drift(x, t, w)
    if last_step == 'Mean':
        return x - sde_drift * t
    if last_step == 'Euler':
        return x - v * t
    return convert_prediction('velocity', 'x0', v, x, *time_derivatives(schedule, t))


# Dormand-Prince 5(4): the nodes c, the stages' weights a, the 5th-order weights (the last stage's row: first same as
# last) and the embedded 4th-order ones.
DOPRI5_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
DOPRI5_A = ((),
            (1 / 5,),
            (3 / 40, 9 / 40),
            (44 / 45, -56 / 15, 32 / 9),
            (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
            (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
            (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84))
DOPRI5_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


def flow_dopri5(velocity_fn, x, t_start: float, t_end: float, atol: float = 1e-6, rtol: float = 1e-3,
                max_evaluations: int = 1000, progress: bool = False):
    """Integrate dx / dt = velocity_fn(x, t) from t_start down to t_end by adaptive Dormand-Prince 5(4), each
    sample with its own step size (the module docstring). Returns (x at t_end, x's dtype; the number of
    evaluations of the batch); a UserError when a sample needs more than ``max_evaluations``."""
    if not 0.0 <= t_end < t_start <= 1.0 or atol < 0 or rtol < 0 or atol + rtol <= 0:
        raise UserError(f'flow_dopri5 needs 0 <= t_end < t_start <= 1 and tolerances >= 0, not both 0; got t_start='
                        f'{t_start}, t_end={t_end}, atol={atol}, rtol={rtol}')
    shape = (-1,) + (1,) * (x.ndim - 1)
    t = torch.full((x.shape[0],), float(t_start), dtype=torch.float64, device=x.device)

    def velocity(y, times):  # dx / d(-t): the integration runs forwards in -t, with positive steps
        return -velocity_fn(y, times.to(y.dtype)).to(y.dtype)

    def error_norm(error, y0, y1):
        scale = atol + rtol * torch.maximum(y0.abs(), y1.abs())
        return (error / scale).flatten(1).pow(2).mean(1).sqrt().double()

    # torchdiffeq's first step: h0 from the sizes of x and f, refined by one Euler trial's change of f
    k1 = velocity(x, t)
    d0, d1 = error_norm(x, x, x), error_norm(k1, x, x)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(1e-300))
    f1 = velocity(x + h0.to(x.dtype).view(shape) * k1, t - h0)
    d2 = error_norm(f1 - k1, x, x) / h0
    h1 = torch.where(torch.maximum(d1, d2) <= 1e-15, torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3),
                     (0.01 / torch.maximum(d1, d2).clamp_min(1e-300)) ** (1 / 5))
    h = torch.minimum(100 * h0, h1)
    evaluations = 2
    max_steps = (max_evaluations - evaluations) // 6
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=max_steps, desc='flow ODE (dopri5)')
    for _ in range(max_steps):
        remaining = t - t_end
        if not bool((remaining > 0).any()):
            break
        dt = torch.minimum(h, remaining).clamp_min(0.0)         # 0 for the finished samples
        step = dt.to(x.dtype).view(shape)
        stages = [k1]
        for c, weights in zip(DOPRI5_C[1:], DOPRI5_A[1:]):
            y = x + step * sum(w * k for w, k in zip(weights, stages) if w)
            stages.append(velocity(y, t - c * dt))
        evaluations += 6
        x_next = y                                                # the last stage's point is the 5th-order step
        error = step * sum((b5 - b4) * k for b5, b4, k in zip(DOPRI5_A[-1] + (0.0,), DOPRI5_B4, stages) if b5 != b4)
        ratio = error_norm(error, x, x_next)
        accept = (ratio <= 1.0) & (dt > 0)
        x = torch.where(accept.view(shape), x_next, x)          # a rejected trial (maybe not finite) leaves no trace
        k1 = torch.where(accept.view(shape), stages[-1], k1)
        t = torch.where(accept, torch.where(dt >= remaining, torch.full_like(t, t_end), t - dt), t)
        factor = (0.9 * ratio.clamp_min(1e-300) ** (-1 / 5)).clamp(0.2, 10.0)
        factor = torch.where(accept, factor.clamp_min(1.0), factor)
        h = torch.where(ratio == 0, h * 10.0, h * factor)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if bool((t > t_end).any()):
        raise UserError(f'flow_dopri5 did not reach t = {t_end} within sample.sample_steps = {max_evaluations} '
                        f'evaluations (at sample.atol = {atol}, sample.rtol = {rtol}): raise sample_steps or the '
                        f'tolerances')
    return x, evaluations
