"""Optimisers, learning-rate schedules and the EMA of the weights."""
import inspect
import math

import torch

from libs.errors import UserError


OPTIMIZERS = {
    # name: (class, the config keys it takes)
    'adamw': (torch.optim.AdamW, ('lr', 'weight_decay', 'betas', 'eps')),
    'adam': (torch.optim.Adam, ('lr', 'weight_decay', 'betas', 'eps')),
    'sgd': (torch.optim.SGD, ('lr', 'weight_decay', 'momentum', 'nesterov')),
}


def fused_supported(device) -> bool:
    """Whether torch has fused optimizer kernels (``fused=True``) for ``device``: CUDA always, the CPU from torch
    2.4 on."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
        return torch.device(device).type in _get_fused_kernels_supported_devices()
    except ImportError:
        return torch.device(device).type == 'cuda'


def kernel_choice(cls, fused: bool, device) -> dict:
    """The keyword arguments that ask ``cls`` for its fastest kernel: ``fused=True`` where it has one for
    ``device``, else ``foreach=True`` (one multi-tensor kernel per operation); {} when ``fused`` is off (torch's own
    choice: foreach on CUDA, one tensor at a time on the CPU)."""
    if not fused:
        return {}
    parameters = inspect.signature(cls).parameters
    if 'fused' in parameters and fused_supported(device):
        return {'fused': True}
    return {'foreach': True} if 'foreach' in parameters else {}


def build_optimizer(cfg, params, fused: bool = False, device='cpu') -> torch.optim.Optimizer:
    """``cfg.name`` in OPTIMIZERS; the optimiser takes the config keys that apply to it. ``fused``: its fused kernel
    for ``device`` where torch has one, else its foreach kernel (``kernel_choice``); the same update to fp32
    rounding."""
    if cfg.name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {cfg.name!r}; known: {', '.join(OPTIMIZERS)}")
    cls, keys = OPTIMIZERS[cfg.name]
    kwargs = {key: cfg[key] for key in keys if key in cfg}
    if 'betas' in kwargs:
        kwargs['betas'] = tuple(kwargs['betas'])
    return cls(params, **kwargs, **kernel_choice(cls, fused, device))


KERNEL_FLAGS = ('fused', 'foreach')


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)`` keeping this run's kernel choice (``fused`` / ``foreach``; a checkpoint
    holds the choice of the run that wrote it, and a GPU run's fused kernel may not exist on the CPU that resumes
    it), with each step count where that kernel wants it: on the parameter's device for a fused or capturable
    optimiser, on the CPU otherwise (a step count on a GPU would cost the plain kernels one synchronisation per
    tensor)."""
    chosen = [{key: group[key] for key in KERNEL_FLAGS if key in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, flags in zip(optimizer.param_groups, chosen):
        group.update(flags)
        on_device = group.get('fused') or group.get('capturable')
        for param in group['params']:
            entry = optimizer.state.get(param, {})
            if torch.is_tensor(entry.get('step')):
                entry['step'] = entry['step'].to(param.device if on_device else 'cpu')


def _warmup_constant(warmup_steps: int):
    def factor(step):
        return min(step / warmup_steps, 1.0) if warmup_steps > 0 else 1.0
    return factor


def _warmup_cosine(warmup_steps: int, total_steps: int, min_factor: float = 0.0):
    def factor(step):
        if step < warmup_steps:
            return step / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def build_lr_scheduler(cfg, optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """'customized' (the release's name): linear warm-up, then constant; 'cosine': warm-up, then cosine decay."""
    name = cfg.name
    warmup = cfg.get('warmup_steps', 0)
    if name == 'customized':
        factor = _warmup_constant(warmup)
    elif name == 'cosine':
        factor = _warmup_cosine(warmup, total_steps, cfg.get('min_factor', 0.0))
    else:
        raise UserError(f"unknown lr_scheduler {name!r}; known: customized, cosine")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, rate: float, foreach: bool = False) -> None:
    """ema <- rate * ema + (1 - rate) * model for parameters; buffers are copied. ``foreach``: all parameters in
    one multi-tensor lerp (a few kernel launches instead of one per tensor), the same formula element by element, so
    the same bits."""
    ema_params = dict(ema.named_parameters())
    pairs = [(ema_params[name], param.detach().to(ema_params[name].dtype)) for name, param in model.named_parameters()]
    if foreach and pairs:
        targets, sources = zip(*pairs)
        torch._foreach_lerp_(list(targets), list(sources), 1 - rate)
    else:
        for target, source in pairs:
            target.lerp_(source, 1 - rate)
    ema_buffers = dict(ema.named_buffers())
    for name, buf in model.named_buffers():
        ema_buffers[name].copy_(buf)
