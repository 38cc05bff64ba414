"""DPM-Solver (Lu et al. 2022, arXiv 2206.00927) and DPM-Solver++ (Lu et al. 2022, arXiv 2211.01095).

Both integrate the probability-flow ODE in lambda = log(alpha / sigma). Between a point s and the next point t
(h = lambda_t - lambda_s > 0) the exact solution is

    noise prediction (dpmsolver):   x_t = alpha_t / alpha_s x_s - sigma_t * int_0^h e^(h - u) eps(lambda_s + u) du
    data prediction (dpmsolver++):  x_t = sigma_t / sigma_s x_s + alpha_t * int_0^h e^(u - h) x0(lambda_s + u) du

and expanding the prediction M (eps or x0) in a Taylor series about lambda_s gives, with the phi functions
phi_k(z) = sum_j z^j / (j + k)!,

    x_t = lin * x_s + c * sum_k h^(k+1) phi_(k+1)(z) M^(k)(lambda_s)

where (lin, c, z) = (alpha_t/alpha_s, -sigma_t, h) or (sigma_t/sigma_s, alpha_t, -h). Every variant is this one
`_taylor_step` with derivatives M^(k) estimated by finite differences: from intermediate evaluations inside the step
(singlestep) or from the previous grid points (multistep). The one exception is the multistep second-order step, which
is the papers' DPM-Solver-2M / DPM-Solver++(2M) update: the first-order step taken with M extrapolated to the middle
of the step, c * h phi_1(z) (M + h/2 M'). It is second order as well, but relative to the first-order term its weight
on M' stays at h/2, while the Taylor weight h^2 phi_2(z) / (h phi_1(z)) grows like h for data prediction; on Gaussian
data it measured smaller errors from 6 NFE on (docs/solvers.md). The grid of times is an argument (see
grids.py).

All step coefficients are computed in float64 on the CPU from the grid of times (shared by the whole batch).
"""
import math
from typing import NamedTuple

import torch

from libs.diffusion.samplers.grids import time_grid
from libs.errors import UserError

ALGORITHM_TYPES = ('dpmsolver', 'dpmsolver++')
METHODS = ('singlestep', 'multistep')
ORDERS = (1, 2, 3)

# With fewer multistep steps than this, a solver of order 3 or more ends with orders ..., 2, 1 (its Taylor weights
# grow like h^2 and more, and with steps of 1 to 2 in lambda its extrapolation overshoots); second-order solvers,
# whose update's weight stays bounded, keep their order. With more steps every step keeps the full order, so that
# the convergence order is not lost. The evidence (errors on Gaussian data for each rule) is in docs/solvers.md.
LOWER_ORDER_FINAL_BELOW = 10


def check_options(steps, order, method, algorithm_type):
    """UserError for a bad solver option, naming the known values."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise UserError(f'the number of sampling steps must be a positive integer, got {steps!r}')
    for what, value, known in (('order', order, ORDERS), ('method', method, METHODS),
                               ('algorithm_type', algorithm_type, ALGORITHM_TYPES)):
        if value not in known:
            raise UserError(f'unknown DPM-Solver {what} {value!r}; known: {", ".join(map(str, known))}')


class _Point(NamedTuple):
    """A time on the grid with its schedule values, as Python floats."""
    t: float
    lam: float
    alpha: float
    sigma: float


def _point(schedule, t):
    tt = torch.tensor(float(t), dtype=torch.float64)
    return _Point(float(t), schedule.log_snr(tt).item(), schedule.alpha(tt).item(), schedule.sigma(tt).item())


def _point_at_log_snr(schedule, lam):
    return _point(schedule, schedule.t_from_log_snr(torch.tensor(lam, dtype=torch.float64)).item())


def _phi(k, z):
    """phi_k(z) = sum_{j >= 0} z^j / (j + k)!; phi_1(z) = (e^z - 1) / z, phi_(k+1) = (phi_k - 1/k!) / z."""
    if abs(z) < 0.5:
        return sum(z ** j / math.factorial(j + k) for j in range(20))
    value = math.expm1(z) / z
    for j in range(1, k):
        value = (value - 1.0 / math.factorial(j)) / z
    return value


def _step_coefficients(s, t, algorithm_type):
    """(h, lin, c, z) of the step from point s to point t (see the module docstring)."""
    h = t.lam - s.lam
    if algorithm_type == 'dpmsolver':
        return h, t.alpha / s.alpha, -t.sigma, h
    return h, t.sigma / s.sigma, t.alpha, -h


def _taylor_step(x, s, t, derivatives, algorithm_type):
    """Step from point s to point t with M and its lambda-derivatives at s (see the module docstring)."""
    h, lin, c, z = _step_coefficients(s, t, algorithm_type)
    out = lin * x
    for k, derivative in enumerate(derivatives):
        out = out + (c * h ** (k + 1) * _phi(k + 1, z)) * derivative
    return out


class _Model:
    """M(x, point): eps (dpmsolver) or x0 (dpmsolver++) from eps_fn; counts the evaluations."""

    def __init__(self, eps_fn, algorithm_type, progress_bar=None):
        self.eps_fn = eps_fn
        self.data_prediction = algorithm_type == 'dpmsolver++'
        self.progress_bar = progress_bar
        self.nfe = 0

    def __call__(self, x, point):
        t = torch.full((x.shape[0],), point.t, dtype=x.dtype, device=x.device)
        eps = self.eps_fn(x, t).to(x.dtype)
        self.nfe += 1
        if self.progress_bar is not None:
            self.progress_bar.update(1)
        if self.data_prediction:
            return (x - point.sigma * eps) / point.alpha
        return eps


def _backward_derivatives(history):
    """[M, M', M''] at the newest point from the last 1-3 (point, M) pairs (Newton divided differences)."""
    p0, m0 = history[-1]
    if len(history) == 1:
        return [m0]
    p1, m1 = history[-2]
    h0 = p0.lam - p1.lam
    first0 = (m0 - m1) / h0
    if len(history) == 2:
        return [m0, first0]
    p2, m2 = history[-3]
    h1 = p1.lam - p2.lam
    second = (first0 - (m1 - m2) / h1) / (h0 + h1)
    return [m0, first0 + h0 * second, 2.0 * second]


def final_step_order(i, steps, order):
    """The order of multistep step i (0-based) of `steps` with lower_order_final, before the warm-up's limit
    (see LOWER_ORDER_FINAL_BELOW)."""
    if order >= 3 and steps < LOWER_ORDER_FINAL_BELOW:
        return min(order, steps - i)
    return order


def _multistep(model, x, points, order, lower_order_final, algorithm_type):
    steps = len(points) - 1
    history = []
    for i in range(steps):
        history = (history + [(points[i], model(x, points[i]))])[-order:]
        step_order = len(history)
        if lower_order_final:
            step_order = min(step_order, final_step_order(i, steps, order))
        derivatives = _backward_derivatives(history[-step_order:])
        if step_order == 2:
            h, lin, c, z = _step_coefficients(points[i], points[i + 1], algorithm_type)
            x = lin * x + (c * h * _phi(1, z)) * (derivatives[0] + (h / 2.0) * derivatives[1])
        else:
            x = _taylor_step(x, points[i], points[i + 1], derivatives, algorithm_type)
    return x


def singlestep_orders(steps, order):
    """Orders of the singlestep segments, summing to `steps` (one evaluation per order unit).

    All segments have `order` when it divides steps; otherwise the remainder becomes one last lower-order segment
    (for order 3 this is the 'fast' recipe of the DPM-Solver paper: ..., 3, 3, 1 or ..., 3, 3, 2).
    """
    orders = [order] * (steps // order)
    if steps % order:
        orders.append(steps % order)
    return orders


def _singlestep_segment(model, x, schedule, s, t, order, algorithm_type):
    m_s = model(x, s)
    if order == 1:
        return _taylor_step(x, s, t, [m_s], algorithm_type)
    h = t.lam - s.lam
    s1 = _point_at_log_snr(schedule, s.lam + h / order)
    u1 = _taylor_step(x, s, s1, [m_s], algorithm_type)
    d1 = (model(u1, s1) - m_s) / (s1.lam - s.lam)
    if order == 2:
        return _taylor_step(x, s, t, [m_s, d1], algorithm_type)
    # Order 3 with r1 = 1/3, r2 = 2/3: d2 / (r2 h) over-estimates M' by r2 h M'' / 2, and with r2 = 2/3 that term
    # times h^2 phi_2 matches h^3 phi_3 M'' to leading order, so the step is third order.
    s2 = _point_at_log_snr(schedule, s.lam + 2.0 * h / 3.0)
    u2 = _taylor_step(x, s, s2, [m_s, d1], algorithm_type)
    d2 = (model(u2, s2) - m_s) / (s2.lam - s.lam)
    return _taylor_step(x, s, t, [m_s, d2], algorithm_type)


def singlestep_grid(schedule, steps, order, t_start, t_end, skip_type):
    """(segment boundaries, orders) of a singlestep solve with ``steps`` evaluations: with skip_type 'logSNR' the
    segments are uniform in lambda, otherwise their ends are taken from the ``steps``-point grid."""
    orders = singlestep_orders(steps, order)
    if skip_type == 'logSNR':
        return time_grid(schedule, len(orders), t_start, t_end, skip_type), orders
    inner = time_grid(schedule, steps, t_start, t_end, skip_type)
    boundaries = [0]
    for k in orders:
        boundaries.append(boundaries[-1] + k)
    return [inner[i] for i in boundaries], orders


def dpm_solver(eps_fn, schedule, x, timesteps, order=2, method='multistep', algorithm_type='dpmsolver++',
               orders=None, lower_order_final=True, denoise_to_zero=False, progress=False):
    """Solve the probability-flow ODE from x at timesteps[0] down to timesteps[-1] (a decreasing grid, e.g. from
    libs/diffusion/samplers/grids.py).

    eps_fn(x, t) -> eps with t a (B,) tensor of x's dtype. method 'multistep': one evaluation per grid step, order
    1, 2 or 3 (the first steps warm up with lower orders; with lower_order_final, order 3 and fewer than 10 steps
    the last ones use lower orders too). method 'singlestep': the grid points are segment boundaries and segment i uses
    ``orders[i]`` evaluations (default: ``order`` each; see ``singlestep_grid``). algorithm_type: 'dpmsolver'
    (noise prediction) or 'dpmsolver++' (data prediction). denoise_to_zero spends one more evaluation to return the
    data prediction at the last time. Returns x at timesteps[-1] (or that prediction), x's dtype.
    """
    timesteps = [float(t) for t in timesteps]
    segments = len(timesteps) - 1
    if method == 'singlestep':
        orders = list(orders) if orders is not None else [order] * segments
        if len(orders) != segments or any(k not in ORDERS for k in orders):
            raise UserError(f'singlestep DPM-Solver needs one order in {ORDERS} per segment: {orders} for '
                            f'{segments} segments')
        steps = sum(orders)
    else:
        steps = segments
    check_options(steps, order, method, algorithm_type)
    if not all(0.0 < b < a for a, b in zip(timesteps[:-1], timesteps[1:])):
        raise UserError(f'DPM-Solver needs a decreasing grid of positive times, got {timesteps[0]} .. '
                        f'{timesteps[-1]}')
    progress_bar = None
    if progress:
        from tqdm.auto import tqdm
        progress_bar = tqdm(total=steps + int(denoise_to_zero), desc=f'DPM-Solver ({method}, order {order})')
    model = _Model(eps_fn, algorithm_type, progress_bar)
    points = [_point(schedule, t) for t in timesteps]
    if method == 'multistep':
        x = _multistep(model, x, points, order, lower_order_final, algorithm_type)
    else:
        for k, s, t in zip(orders, points[:-1], points[1:]):
            x = _singlestep_segment(model, x, schedule, s, t, k, algorithm_type)
    if denoise_to_zero:
        x = _Model(eps_fn, 'dpmsolver++', progress_bar)(x, points[-1])
    if progress_bar is not None:
        progress_bar.close()
    return x
