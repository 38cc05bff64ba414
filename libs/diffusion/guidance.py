"""Classifier-free guidance (Ho & Salimans 2021) as a wrapper that turns a conditional predictor into the model
function a sampler takes, optionally only inside a noise-level interval (Kynkaanniemi et al. 2024).

`noise_fn(x, t, **cond)` is e.g. `Denoiser.noise` or `Denoiser.velocity`; the result `eps_fn(x, t)` is what the
samplers take.

Guidance interval: Kynkaanniemi et al. ("Applying guidance in a limited interval improves sample and distribution
quality in diffusion models", NeurIPS 2024) guide only at EDM noise levels sigma in (sigma_lo, sigma_hi] and use
the conditional prediction elsewhere (their guidance weight is 1 outside); the level here is sigma_ve = sigma / alpha
of the model's schedule (``sample.guidance_interval = (lo, hi)``), so one interval means the same on the VP SDE, EDM's
levels and the flow paths. The test is made at each network evaluation, with that evaluation's level: a step of a
two-evaluation solver that straddles a bound is guided at one of them (the paper rounds its bounds to the sampler's
levels so that this does not happen; choose bounds on the grid to do the same). Outside the interval the
conditional prediction alone is computed (one network call on B samples, not 2B).
"""
import functools
import math

import torch

from libs.config import parse_list
from libs.errors import UserError


class GuidanceInterval:
    """lo < level(t) <= hi, ``level`` a function of the (B,) times (the schedule's ``ve_sigma``)."""

    def __init__(self, lo: float, hi: float, level):
        self.lo, self.hi, self.level = float(lo), float(hi), level

    def __repr__(self):
        return f'GuidanceInterval(({self.lo:g}, {self.hi:g}])'

    def contains(self, t):
        """A bool tensor shaped like t: whether guidance applies at each time."""
        level = self.level(t if torch.is_tensor(t) else torch.tensor(float(t), dtype=torch.float64))
        return (level > self.lo) & (level <= self.hi)


def guidance_interval(sample_cfg):
    """(lo, hi) from ``sample.guidance_interval`` (a pair, or 'lo,hi'; hi may be 'inf'), or None (guidance at
    every level) when it is empty; UserError unless 0 <= lo < hi."""
    value = sample_cfg.get('guidance_interval', '')
    bounds = parse_list('' if value is None else value, 'sample.guidance_interval', float, allow_empty=True)
    if not bounds:
        return None
    if len(bounds) != 2 or not 0.0 <= bounds[0] < bounds[1] or math.isnan(bounds[1]):
        raise UserError(f'sample.guidance_interval must be two noise levels sigma / alpha, 0 <= lo < hi (guidance '
                        f'where lo < sigma / alpha <= hi; hi may be inf), got {value!r}')
    return bounds[0], bounds[1]


def bind_condition(noise_fn, cond):
    """eps_fn(x, t) = noise_fn(x, t, **cond): the condition bound in, no guidance."""
    return functools.partial(noise_fn, **(cond or {}))


def _concat(cond, uncond):
    if set(cond) != set(uncond):
        raise ValueError(f'cond and uncond need the same keys, got {sorted(cond)} and {sorted(uncond)}')
    merged = {}
    for key, value in cond.items():
        other = uncond[key]
        if torch.is_tensor(value):
            merged[key] = torch.cat([value, other], dim=0)
        elif value == other:
            merged[key] = value
        else:
            raise ValueError(f'cond[{key!r}] is not a tensor and differs from uncond[{key!r}]')
    return merged


def classifier_free_guidance(noise_fn, cond, uncond, scale, channels: int = 0, interval: GuidanceInterval = None):
    """eps_fn(x, t) = eps_c + scale (eps_c - eps_u), the U-ViT paper's convention (scale 0: no guidance).

    cond / uncond: dicts of keyword arguments for noise_fn; tensors are (B, ...) and get concatenated along dim 0,
    other values must be equal in both. Each call of eps_fn makes ONE call of noise_fn on the 2B batch
    [cond; uncond] (with scale 0, one call on the conditional batch alone). ``channels`` > 0 guides only the first
    ``channels`` channels (dim 1) and takes the others from the conditional branch, as DiT's ``forward_with_cfg``
    does with 3 of its 4 latent channels and the variance; 0 guides them all.

    ``interval``: guidance only where it contains the time (per sample), the conditional prediction elsewhere;
    when no sample of a call is inside, only the conditional batch is computed.

    DiT's scale s means eps_u + s (eps_c - eps_u), which is this convention's scale s - 1.
    """
    scale = float(scale)
    if scale == 0.0:
        return bind_condition(noise_fn, cond)
    merged = _concat(cond, uncond)
    conditional = bind_condition(noise_fn, cond)

    def eps_fn(x, t):
        inside = None if interval is None else interval.contains(t)
        guided_count = None if inside is None else int(inside.sum())  # one read of the device per call
        if guided_count == 0:
            return conditional(x, t)
        t_cat = torch.cat([t, t]) if torch.is_tensor(t) and t.ndim > 0 else t
        eps_c, eps_u = noise_fn(torch.cat([x, x]), t_cat, **merged).chunk(2)
        if not channels:
            guided = eps_c + scale * (eps_c - eps_u)
        else:
            guided = torch.cat([eps_c[:, :channels] + scale * (eps_c[:, :channels] - eps_u[:, :channels]),
                                eps_c[:, channels:]], dim=1)
        if inside is None or guided_count == inside.numel():
            return guided
        return torch.where(inside.to(guided.device).view((-1,) + (1,) * (guided.ndim - 1)), guided, eps_c)

    return eps_fn
