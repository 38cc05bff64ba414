"""Multi-head attention kernels behind one switch.

``attention(q, k, v, backend)`` takes q, k, v of shape (B, H, L, D) and returns (B, H, L, D).

Backends:
- ``'sdpa'`` (default): ``torch.nn.functional.scaled_dot_product_attention``; on GPU PyTorch picks the flash or
  memory-efficient kernel by itself.
- ``'xformers'``: ``xformers.ops.memory_efficient_attention`` when xformers is installed; otherwise one warning line
  and ``'sdpa'`` is used (xformers is optional and never required).
- ``'flash'``, ``'cudnn'``, ``'efficient'``: ``scaled_dot_product_attention`` with one of PyTorch's kernels tried
  first (``torch.nn.attention.sdpa_kernel(..., set_priority=True)``, torch >= 2.6): FlashAttention-2, cuDNN's fused
  attention (Hopper and newer) or the memory-efficient kernel. Where that kernel cannot run (a CPU, an fp32 input)
  PyTorch's usual order follows. ``sdpa_op`` names the kernel that ran; scripts/gpu_check.py's ``attention``
  section reads it off the profiler and times each.
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


def _preferring(kernel: str):
    """scaled_dot_product_attention with ``torch.nn.attention.SDPBackend.<kernel>`` tried first, then PyTorch's
    order; None when this torch cannot set a priority (torch < 2.6) or lacks the kernel."""
    try:
        import inspect

        from torch.nn.attention import SDPBackend, sdpa_kernel
        order = [getattr(SDPBackend, name) for name in (kernel, 'FLASH_ATTENTION', 'EFFICIENT_ATTENTION',
                                                         'CUDNN_ATTENTION', 'MATH')]
        if 'set_priority' not in inspect.signature(sdpa_kernel).parameters:
            return None
    except (ImportError, AttributeError):
        return None
    order = list(dict.fromkeys(order))

    def preferring(q, k, v, scale):
        with sdpa_kernel(order, set_priority=True):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return preferring


PREFERRING = {name: _preferring(kernel) for name, kernel in (
    ('flash', 'FLASH_ATTENTION'), ('cudnn', 'CUDNN_ATTENTION'), ('efficient', 'EFFICIENT_ATTENTION'))}
# the aten operator of each SDPA kernel, as the profiler names it (the CPU's flash kernel has its own)
SDPA_OPS = {'flash': ('_scaled_dot_product_flash_attention', '_scaled_dot_product_flash_attention_for_cpu'),
            'cudnn': ('_scaled_dot_product_cudnn_attention',),
            'efficient': ('_scaled_dot_product_efficient_attention',),
            'math': ('_scaled_dot_product_attention_math',)}


def sdpa_op(op_names) -> str:
    """Which SDPA kernel ('flash', 'cudnn', 'efficient', 'math') the profiled operator names show, or ''."""
    names = {name.split('::')[-1] for name in op_names}
    return next((kernel for kernel, ops in SDPA_OPS.items() if names & set(ops)), '')


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
    **{name: fn for name, fn in PREFERRING.items() if fn is not None},
}


def check_backend(name: str) -> str:
    """Validate a backend name from a config; returns it."""
    if name not in ATTENTION_BACKENDS:
        raise UserError(f"unknown attention backend {name!r}; known: {', '.join(ATTENTION_BACKENDS)}")
    return name


def available_backends() -> list:
    """Backends that run here without falling back (xformers only when it imports; the SDPA kernel preferences
    always run, with PyTorch's order behind the preferred kernel)."""
    names = ['sdpa', 'math']
    if _load_xformers() is not None:
        names.insert(1, 'xformers')
    return names + [name for name, fn in PREFERRING.items() if fn is not None]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = 'sdpa',
              scale: float = None) -> torch.Tensor:
    """Scaled dot-product attention over (B, H, L, D) tensors; ``scale`` defaults to 1/sqrt(D)."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    return ATTENTION_BACKENDS[backend](q, k, v, scale)
