"""Classifier-free guidance (Ho & Salimans 2021) as a wrapper that turns a conditional noise predictor into an eps_fn.

`noise_fn(x, t, **cond)` is e.g. `Denoiser.noise`; the result `eps_fn(x, t)` is what the samplers take.
"""
import functools

import torch


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


def classifier_free_guidance(noise_fn, cond, uncond, scale, channels: int = 0):
    """eps_fn(x, t) = eps_c + scale (eps_c - eps_u), the U-ViT paper's convention (scale 0: no guidance).

    cond / uncond: dicts of keyword arguments for noise_fn; tensors are (B, ...) and get concatenated along dim 0,
    other values must be equal in both. Each call of eps_fn makes ONE call of noise_fn on the 2B batch
    [cond; uncond] (with scale 0, one call on the conditional batch alone). ``channels`` > 0 guides only the first
    ``channels`` channels (dim 1) and takes the others from the conditional branch, as DiT's ``forward_with_cfg``
    does with 3 of its 4 latent channels and the variance; 0 guides them all.

    DiT's scale s means eps_u + s (eps_c - eps_u), which is this convention's scale s - 1.
    """
    scale = float(scale)
    if scale == 0.0:
        return bind_condition(noise_fn, cond)
    merged = _concat(cond, uncond)

    def eps_fn(x, t):
        t_cat = torch.cat([t, t]) if torch.is_tensor(t) and t.ndim > 0 else t
        eps_c, eps_u = noise_fn(torch.cat([x, x]), t_cat, **merged).chunk(2)
        if not channels:
            return eps_c + scale * (eps_c - eps_u)
        guided = eps_c[:, :channels] + scale * (eps_c[:, :channels] - eps_u[:, :channels])
        return torch.cat([guided, eps_c[:, channels:]], dim=1)

    return eps_fn
