"""Samplers of the discrete-state framework (libs/diffusion/ctmc.py): plain functions over a logits callable
``logits_fn(x, t) -> (B, C, H, W, S)`` (x int64 states, t (B,)), which simulate the reverse chain from t = 1 to
``min_t`` and then denoise: every pixel becomes the most likely x_0 under p_theta(x_0 | x_{min_t}) (``final_step
'argmax'``, the seed's) or a draw from it (``'sample'``; for the absorbing rate only masked pixels change).

- ``tau_leaping`` (Campbell et al. 2022): on a uniform grid of ``sample_steps`` steps, each pixel makes Poisson(h
  R_hat(x, y)) jumps to each value y, with the rates frozen over the step. Ordinal states (``is_ordinal``) add
  the jumps' displacements and clip to 0..S-1; otherwise a pixel with one jump takes it and one with several
  stays.
- ``tau_leaping_midpoint``: a half step first; the full step then jumps with the rates at that midpoint state
  and time (displacements for ordinal states, target values otherwise): two evaluations per step.
- ``tau_leaping_pc``: predictor-corrector; below ``corrector_entry_time`` each step is followed by
  ``num_corrector_steps`` leaps of ``corrector_step_size_multiplier`` h with the rate R_hat + R_t, which leaves
  q_t invariant.
- ``gillespie``: the exact simulation of the reverse chain by thinning (for tiny problems, the tests' gold
  standard): on each interval of a grid of times, candidate jump times at a rate bound L (twice the largest total
  rate over every state at the interval's ends), each accepted with probability rate / L. Exact as long as no
  rate exceeds its L, which is checked at every candidate.

``noise`` is the per-sample random source (libs.rng.SampleRandom, ``rand`` and ``poisson``) or None (the global
RNG).
"""
import torch
from tqdm.auto import tqdm

from libs.diffusion.rates import draw_categorical, forward_rates, jump_once, reverse_rates
from libs.errors import UserError

FINAL_STEPS = ('argmax', 'sample')
GILLESPIE_MAX_STATES = 4096


def _rand(noise, n: int, width: int, device) -> torch.Tensor:
    """(n, width) float64 uniforms."""
    if noise is None:
        return torch.rand((n, width), dtype=torch.float64, device=device)
    return noise.rand((width,), dtype=torch.float64).to(device)


def _poisson(noise, rates: torch.Tensor) -> torch.Tensor:
    return torch.poisson(rates) if noise is None else noise.poisson(rates)


def _rates(framework, logits_fn, x, t, eps_ratio):
    """(B, D, K) model reverse rates at states x (B, C, H, W) and times t (B,)."""
    return reverse_rates(framework.rate, framework.probabilities(logits_fn(x, t)), x.flatten(1), t, eps_ratio)


def leap(x, rates, h: float, noise, ordinal: bool, max_state: int, reference=None):
    """One tau-leap of x (B, D) with rates (B, D, K) held for time h. ``reference``: the states the rates were
    computed at (default x): ordinal jumps move x by (y - reference); others jump to y."""
    reference = x if reference is None else reference
    counts = _poisson(noise, (rates * h).clamp_min(0.0))
    if ordinal:
        values = torch.arange(rates.shape[-1], device=x.device, dtype=counts.dtype)
        shift = (counts * (values - reference.unsqueeze(-1))).sum(-1)
        return (x + shift.long()).clamp(0, max_state)
    return torch.where(counts.sum(-1) == 1, counts.argmax(-1), x)


def denoise(framework, logits_fn, x, t, final_step: str, noise):
    """The last step at t (B,): argmax or a draw of p_theta(x_0 | x_t) per pixel (unmasked pixels kept)."""
    probs = framework.probabilities(logits_fn(x, t))
    flat = x.flatten(1)
    if final_step == 'argmax':
        x0 = probs.argmax(-1)
    else:
        x0 = draw_categorical(probs, _rand(noise, flat.shape[0], flat.shape[1], flat.device))
    if framework.masked:
        x0 = torch.where(flat == framework.rate.mask_state, x0, flat)
    return x0.view_as(x)


def _times(x, value):
    return torch.full((x.shape[0],), float(value), dtype=torch.float64, device=x.device)


def tau_leaping(logits_fn, framework, x_T, times, noise=None, ordinal=True, midpoint=False, corrector_steps=0,
                corrector_multiplier=1.0, corrector_entry_time=0.0, final_step='argmax', eps_ratio=1e-9,
                progress=False):
    """States (B, C, H, W) at the end of ``times`` (decreasing, from 1 to min_t), then denoised."""
    x = x_T
    max_state = framework.rate.num_chain_states - 1
    for t_now, t_next in tqdm(list(zip(times[:-1], times[1:])), disable=not progress, desc='tau-leaping'):
        h = t_now - t_next
        t = _times(x, t_now)
        rates = _rates(framework, logits_fn, x, t, eps_ratio)
        flat = x.flatten(1)
        if midpoint:
            mid = leap(flat, rates, h / 2, noise, ordinal, max_state)
            rates = _rates(framework, logits_fn, mid.view_as(x), _times(x, t_now - h / 2), eps_ratio)
            flat = leap(flat, rates, h, noise, ordinal, max_state, reference=mid)
        else:
            flat = leap(flat, rates, h, noise, ordinal, max_state)
        x = flat.view_as(x)
        if corrector_steps and t_next <= corrector_entry_time:
            t = _times(x, t_next)
            for _ in range(corrector_steps):
                rates = _rates(framework, logits_fn, x, t, eps_ratio)
                rates = rates + forward_rates(framework.rate, x.flatten(1), t)
                x = leap(x.flatten(1), rates, corrector_multiplier * h, noise, ordinal, max_state).view_as(x)
    return denoise(framework, logits_fn, x, _times(x, times[-1]), final_step, noise)


def rate_bounds(framework, logits_fn, shape, times, eps_ratio: float = 1e-9) -> torch.Tensor:
    """(len(times) - 1,) bounds of the total reverse rate on each interval of ``times`` (increasing): twice the
    largest total over every state of ``shape`` (C, H, W) at either end; only for K^D <= GILLESPIE_MAX_STATES."""
    K, D = framework.rate.num_chain_states, int(torch.tensor(shape).prod())
    if K ** D > GILLESPIE_MAX_STATES:
        raise UserError(f'the Gillespie sampler is exact for tiny problems only: {K}^{D} states exceed '
                        f'{GILLESPIE_MAX_STATES}')
    states = torch.cartesian_prod(*[torch.arange(K)] * D) if D > 1 else torch.arange(K)
    states = states.reshape(-1, *shape)
    totals = torch.stack([_rates(framework, logits_fn, states, _times(states, t), eps_ratio).sum((1, 2)).max()
                          for t in times])
    return 2.0 * torch.maximum(totals[:-1], totals[1:])


def gillespie(logits_fn, framework, x_T, t_end: float, noise=None, final_step='sample', eps_ratio=1e-9,
              grid: int = 101):
    """The exact reverse chain from t = 1 to ``t_end`` by thinning (see the module docstring), then denoised:
    candidate times at each interval's bound (``rate_bounds`` on ``grid`` times), accepted with probability
    rate / bound. ``logits_fn`` must treat rows independently (it is called on the rows still running)."""
    times = torch.linspace(t_end, 1.0, grid, dtype=torch.float64)
    bounds = rate_bounds(framework, logits_fn, x_T.shape[1:], times.tolist(), eps_ratio).to(x_T.device)
    times = times.to(x_T.device)
    x = x_T.flatten(1).clone()
    B = x.shape[0]
    s = torch.ones(B, dtype=torch.float64, device=x.device)
    interval = torch.full((B,), grid - 2, dtype=torch.long, device=x.device)  # s lies in times[k] .. times[k + 1]
    while bool((interval >= 0).any()):
        u = _rand(noise, B, 4, x.device)
        active = interval >= 0
        k = interval.clamp(min=0)
        candidate = s + torch.log(u[:, 0]) / bounds[k]                     # s - Exp(bound)
        crossed = active & (candidate <= times[k])
        s = torch.where(crossed, times[k], torch.where(active, candidate, s))  # memoryless: restart at the edge
        interval = interval - crossed.long()
        rows = (active & ~crossed).nonzero().squeeze(1)
        if not len(rows):
            continue
        rates = _rates(framework, logits_fn, x[rows].view(-1, *x_T.shape[1:]), s[rows], eps_ratio)
        total = rates.sum((1, 2))
        if bool((total > bounds[k[rows]]).any()):
            raise ValueError(f'a reverse rate {float(total.max()):.4g} exceeds the Gillespie bound of its interval')
        accept = u[rows, 1] * bounds[k[rows]] < total
        moved = jump_once(x[rows], rates, u[rows, 2], u[rows, 3])
        x[rows] = torch.where(accept.unsqueeze(1), moved, x[rows])
    x = x.view_as(x_T)
    return denoise(framework, logits_fn, x, _times(x, t_end), final_step, noise)


def _option(sample_cfg, key, default, zero_is_unset=False):
    """The config's value, or ``default`` when it is missing, None, '' (or 0, with ``zero_is_unset``)."""
    value = sample_cfg.get(key, None)
    unset = value is None or value == '' or (zero_is_unset and not isinstance(value, bool) and value == 0)
    return default if unset else value


def build_ctmc_sampler(sample_cfg, framework):
    """``sampler(logits_fn, x_T, noise=None) -> states`` for config.sample, with ``sampler.initial_dist``."""
    algorithm = sample_cfg.get('algorithm', None)
    if algorithm not in CTMC_SAMPLERS:
        raise UserError(f'unknown sample.algorithm {algorithm!r} for the discrete-state framework; known: '
                        f'{", ".join(CTMC_SAMPLERS)}')
    steps = sample_cfg.get('sample_steps', None)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise UserError(f'sample.sample_steps must be a positive integer (the tau-leaping steps), got {steps!r}')
    if _option(sample_cfg, 'guidance_interval', ()):
        raise UserError('sample.guidance_interval is a window of Gaussian noise levels sigma / alpha; the discrete-'
                        "state framework has none: set it to ''")
    min_t = float(_option(sample_cfg, 'min_t', framework.min_time, zero_is_unset=True))
    if not 0.0 < min_t < 1.0:
        raise UserError(f'sample.min_t must lie in (0, 1), got {min_t}')
    final_step = _option(sample_cfg, 'final_step', 'argmax')
    if final_step not in FINAL_STEPS:
        raise UserError(f"unknown sample.final_step {final_step!r}; known: {', '.join(FINAL_STEPS)}")
    ordinal = bool(_option(sample_cfg, 'is_ordinal', True))
    if ordinal and framework.masked:
        raise UserError('the absorbing rate has no order (its mask state is not a pixel value): set '
                        'sample.is_ordinal=False')
    initial_dist = _option(sample_cfg, 'initial_dist', 'stationary')
    framework.initial_law(initial_dist)  # a bad name or one that does not fit the rate fails now
    eps_ratio = float(_option(sample_cfg, 'eps_ratio', framework.eps_ratio, zero_is_unset=True))
    options = dict(final_step=final_step, eps_ratio=eps_ratio)
    sampler = CTMC_SAMPLERS[algorithm](sample_cfg, framework, steps, min_t, ordinal, options)
    sampler.initial_dist = initial_dist
    return sampler


def _tau_preset(midpoint=False, corrector=False):
    def build(sample_cfg, framework, steps, min_t, ordinal, options):
        times = torch.linspace(1.0, min_t, steps + 1, dtype=torch.float64).tolist()
        options = dict(options, midpoint=midpoint, ordinal=ordinal, progress=bool(sample_cfg.get('progress', False)))
        if corrector:
            options.update(corrector_steps=int(_option(sample_cfg, 'num_corrector_steps', 1)),
                           corrector_multiplier=float(_option(sample_cfg, 'corrector_step_size_multiplier', 1.0)),
                           corrector_entry_time=float(_option(sample_cfg, 'corrector_entry_time', 0.1)))

        def sampler(logits_fn, x_T, noise=None):
            return tau_leaping(logits_fn, framework, x_T, times, noise=noise, **options)

        return sampler

    return build


def _gillespie_preset(sample_cfg, framework, steps, min_t, ordinal, options):
    def sampler(logits_fn, x_T, noise=None):
        return gillespie(logits_fn, framework, x_T, min_t, noise=noise, **options)
    return sampler


CTMC_SAMPLERS = {
    'tau_leaping': _tau_preset(),
    'tau_leaping_midpoint': _tau_preset(midpoint=True),
    'tau_leaping_pc': _tau_preset(corrector=True),
    'gillespie': _gillespie_preset,
}

# The options of each sampler that change its samples (recorded with every score).
_COMMON = ('min_t', 'eps_ratio', 'initial_dist', 'is_ordinal', 'final_step')
CTMC_SAMPLER_OPTIONS = {
    'tau_leaping': _COMMON,
    'tau_leaping_midpoint': _COMMON,
    'tau_leaping_pc': _COMMON + ('num_corrector_steps', 'corrector_step_size_multiplier', 'corrector_entry_time'),
    'gillespie': ('min_t', 'eps_ratio', 'initial_dist', 'final_step'),
}
