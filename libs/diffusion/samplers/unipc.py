"""UniPC (Zhao et al. 2023, arXiv 2302.04867): the unified predictor UniP and corrector UniC, multistep in lambda.

With the notation of dpm_solver.py (lambda = log(alpha / sigma), h = lambda_t - lambda_s > 0, M the noise or data
prediction, and (lin, c, z) = (alpha_t/alpha_s, -sigma_t, h) or (sigma_t/sigma_s, alpha_t, -h)), the exact step is

    x_t = lin * x_s + c * sum_k h^(k+1) phi_(k+1)(z) M^(k)(lambda_s).

UniPC keeps the k = 0 term and replaces the rest by a combination of differences of M at other points
lambda_s + r_m h, D_m = M(r_m) - M_s:

    x_t = lin * x_s + c * h phi_1(z) M_s + c * sum_m w_m D_m / r_m.

Since D_m / r_m = sum_(k >= 1) r_m^(k-1) h^k / k! M^(k), the weights solve the Vandermonde system
sum_m w_m r_m^(k-1) = k! h phi_(k+1)(z) for k = 1..n (n differences). The paper writes w = B(h) a with B(h) = O(h)
and solves for a; solved exactly, B(h) cancels. Where the system has a single unknown, the paper fixes a = 1/2,
its h -> 0 limit, and only there the two variants differ: 'bh1' (B(h) = h) weighs the difference by h / 2, and
'bh2' (B(h) = e^h - 1) by h phi_1(z) / 2.

- The predictor UniP-p uses M at s and at the p - 1 previous grid points (r_m < 0): order p.
- The corrector UniC-p adds the new point t (r = 1), evaluated at the predicted x_t. It recomputes the step from
  x_s with that extra difference and raises the order to p + 1. The evaluation at the predicted point is the one
  the next step uses, so a corrector costs no evaluation: NFE equals the number of grid steps. The last step has
  no corrector (its evaluation would be an extra one).

``order`` is p, the number of predictions a predictor step combines (as in the paper; with the corrector the
method has order p + 1). The first steps warm up with lower orders, and ``lower_order_final`` lowers the last
ones by dpm_solver.py's rule (``final_step_order``: below 10 steps, orders 3 and up end ..., 2, 1). With order 1
and no corrector this is DDIM. Step coefficients are computed in float64 on the CPU from the grid of times (shared
by the whole batch).
"""
import torch

from libs.diffusion.samplers.dpm_solver import (ALGORITHM_TYPES, _Model, _phi, _point, _step_coefficients,
                                                final_step_order)
from libs.errors import UserError

VARIANTS = ('bh1', 'bh2')


def check_options(steps, order, variant, algorithm_type):
    """UserError for a bad UniPC option, naming the known values."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise UserError(f'the number of sampling steps must be a positive integer, got {steps!r}')
    if not isinstance(order, int) or isinstance(order, bool) or order < 1:
        raise UserError(f'the UniPC order must be a positive integer, got {order!r}')
    for what, value, known in (('variant', variant, VARIANTS), ('algorithm_type', algorithm_type, ALGORITHM_TYPES)):
        if value not in known:
            raise UserError(f'unknown UniPC {what} {value!r}; known: {", ".join(known)}')


def _weights(h, z, rs, variant):
    """w_m (Python floats) with sum_m w_m r_m^(k-1) = k! h phi_(k+1)(z) for k = 1..len(rs); one r: the B(h) rule."""
    if len(rs) == 1:
        return [h * (1.0 if variant == 'bh1' else _phi(1, z)) / 2.0]
    n = len(rs)
    r = torch.tensor(rs, dtype=torch.float64)
    vandermonde = torch.stack([r ** k for k in range(n)])
    factorial, rhs = 1.0, []
    for k in range(1, n + 1):
        factorial *= k
        rhs.append(factorial * h * _phi(k + 1, z))
    return torch.linalg.solve(vandermonde, torch.tensor(rhs, dtype=torch.float64)).tolist()


def _combine(base, c, differences):
    """base + c * sum_m w_m D_m / r_m for differences [(w, r, D)]."""
    out = base
    for w, r, d in differences:
        out = out + (c * w / r) * d
    return out


def unipc(eps_fn, schedule, x, timesteps, order=2, variant='bh2', algorithm_type='dpmsolver++',
          lower_order_final=True, corrector=True, progress=False):
    """Solve the probability-flow ODE from x at timesteps[0] down to timesteps[-1] (a decreasing grid, e.g. from
    libs/diffusion/samplers/grids.py) with UniPC-p, p = ``order`` (see the module docstring).

    eps_fn(x, t) -> eps with t a (B,) tensor of x's dtype. variant: 'bh1' or 'bh2'. algorithm_type: 'dpmsolver'
    (noise prediction) or 'dpmsolver++' (data prediction), as in dpm_solver. ``corrector=False`` gives UniP alone.
    One evaluation per grid step. Returns x at timesteps[-1], x's dtype.
    """
    timesteps = [float(t) for t in timesteps]
    steps = len(timesteps) - 1
    check_options(steps, order, variant, algorithm_type)
    if not all(0.0 < b < a for a, b in zip(timesteps[:-1], timesteps[1:])):
        raise UserError(f'UniPC needs a decreasing grid of positive times, got {timesteps[0]} .. {timesteps[-1]}')
    progress_bar = None
    if progress:
        from tqdm.auto import tqdm
        progress_bar = tqdm(total=steps, desc=f'UniPC ({variant}, order {order})')
    model = _Model(eps_fn, algorithm_type, progress_bar)
    points = [_point(schedule, t) for t in timesteps]
    history = [(points[0], model(x, points[0]))]
    for i in range(steps):
        s, t = points[i], points[i + 1]
        step_order = min(len(history), final_step_order(i, steps, order) if lower_order_final else order)
        used = history[-step_order:]
        h, lin, c, z = _step_coefficients(s, t, algorithm_type)
        m_s = used[-1][1]
        base = lin * x + (c * h * _phi(1, z)) * m_s
        rs = [(p.lam - s.lam) / h for p, _ in used[:-1]]
        differences = [(m - m_s) for _, m in used[:-1]]
        predicted = base if not rs else _combine(base, c, zip(_weights(h, z, rs, variant), rs, differences))
        if i == steps - 1:
            x = predicted
            break
        m_t = model(predicted, t)
        if corrector:
            rs, differences = rs + [1.0], differences + [m_t - m_s]
            x = _combine(base, c, zip(_weights(h, z, rs, variant), rs, differences))
        else:
            x = predicted
        history = (history + [(t, m_t)])[-order:]
    if progress_bar is not None:
        progress_bar.close()
    return x
