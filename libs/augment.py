"""Batch augmentations for the classification branch of hybrid training.

They run on the device in the training loop and draw from the global RNG (restored on resume), so a resumed run
repeats an uninterrupted one. Images are (B, C, H, W) in [-1, 1].
"""
import torch
import torch.nn.functional as F

from libs.errors import UserError


def random_shift(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Translate each image by up to ``pad`` pixels (zero padding = black in [-1, 1] is -1, so pad with -1)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), value=-1.0)
    dy = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None])          # (B, H)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None])          # (B, W)
    index = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_flip(x: torch.Tensor) -> torch.Tensor:
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


AUGMENTS = {
    'none': lambda x: x,
    'shift': lambda x: random_shift(x, 1),                  # small images without a mirror symmetry (digits)
    'crop_flip': lambda x: random_flip(random_shift(x, 4)),  # the standard CIFAR augmentation
}


def build_augment(name: str):
    if name not in AUGMENTS:
        raise UserError(f"unknown config.objective.augment {name!r}; known: {', '.join(AUGMENTS)}")
    return AUGMENTS[name]
