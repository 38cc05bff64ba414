"""Multi-head attention kernels behind one switch.

``attention(q, k, v, backend)`` takes q, k, v of shape (B, H, L, D) and returns (B, H, L, D).

Backends:
- ``'sdpa'`` (default): ``torch.nn.functional.scaled_dot_product_attention``; on GPU PyTorch picks the flash or
  memory-efficient kernel by itself.
- ``'xformers'``: ``xformers.ops.memory_efficient_attention`` when xformers is installed; otherwise one warning line
  and ``'sdpa'`` is used (xformers is optional and never required).
- ``'math'``: softmax(q k^T / sqrt(D)) v written out, the reference the others are tested against.
"""
import logging
import math

import torch
import torch.nn.functional as F

from libs.errors import UserError

logger = logging.getLogger(__name__)

_xformers_ops = None
_xformers_checked = False


def _load_xformers():
    """The xformers.ops module, or None (with one warning) when it cannot be imported."""
    global _xformers_ops, _xformers_checked
    if not _xformers_checked:
        _xformers_checked = True
        try:
            import xformers.ops as ops
            _xformers_ops = ops
        except Exception as exc:  # ImportError, or a build that fails at import against this torch
            logger.warning("attention backend 'xformers' is unavailable (%s); using 'sdpa' instead",
                           str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return _xformers_ops


def _sdpa(q, k, v, scale):
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def _math(q, k, v, scale):
    attn = (q @ k.transpose(-2, -1)) * scale
    return attn.softmax(dim=-1) @ v


def _xformers(q, k, v, scale):
    ops = _load_xformers()
    if ops is None:
        return _sdpa(q, k, v, scale)
    # xformers takes (B, L, H, D)
    out = ops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
    return out.transpose(1, 2)


ATTENTION_BACKENDS = {
    'sdpa': _sdpa,
    'xformers': _xformers,
    'math': _math,
}


def check_backend(name: str) -> str:
    """Validate a backend name from a config; returns it."""
    if name not in ATTENTION_BACKENDS:
        raise UserError(f"unknown attention backend {name!r}; known: {', '.join(ATTENTION_BACKENDS)}")
    return name


def available_backends() -> list:
    """Backends that run here without falling back (xformers only when it imports)."""
    names = ['sdpa', 'math']
    if _load_xformers() is not None:
        names.insert(1, 'xformers')
    return names


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = 'sdpa',
              scale: float = None) -> torch.Tensor:
    """Scaled dot-product attention over (B, H, L, D) tensors; ``scale`` defaults to 1/sqrt(D)."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    return ATTENTION_BACKENDS[backend](q, k, v, scale)
