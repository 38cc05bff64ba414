"""Optimisers, learning-rate schedules and the EMA of the weights."""
import math

import torch

from libs.errors import UserError


OPTIMIZERS = {
    # name: (class, the config keys it takes)
    'adamw': (torch.optim.AdamW, ('lr', 'weight_decay', 'betas', 'eps')),
    'adam': (torch.optim.Adam, ('lr', 'weight_decay', 'betas', 'eps')),
    'sgd': (torch.optim.SGD, ('lr', 'weight_decay', 'momentum', 'nesterov')),
}


def build_optimizer(cfg, params) -> torch.optim.Optimizer:
    """``cfg.name`` in OPTIMIZERS; the optimiser takes the config keys that apply to it."""
    if cfg.name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {cfg.name!r}; known: {', '.join(OPTIMIZERS)}")
    cls, keys = OPTIMIZERS[cfg.name]
    kwargs = {key: cfg[key] for key in keys if key in cfg}
    if 'betas' in kwargs:
        kwargs['betas'] = tuple(kwargs['betas'])
    return cls(params, **kwargs)


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
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, rate: float) -> None:
    """ema <- rate * ema + (1 - rate) * model for parameters; buffers are copied."""
    ema_params = dict(ema.named_parameters())
    for name, param in model.named_parameters():
        ema_params[name].lerp_(param.detach().to(ema_params[name].dtype), 1 - rate)
    ema_buffers = dict(ema.named_buffers())
    for name, buf in model.named_buffers():
        ema_buffers[name].copy_(buf)
