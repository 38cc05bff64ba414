"""Batch augmentations for the classification branch of hybrid training.

They run on the device in the training loop and draw from the global RNG (restored on resume), so a resumed run
repeats an uninterrupted one. Images are (B, C, H, W) in [-1, 1].
"""
import torch
import torch.nn.functional as F

from libs.errors import UserError


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator = None) -> torch.Tensor:
    """Translate each image by up to ``pad`` pixels in each direction; the border is filled with -1 (black).

    One draw per image picks one of the (2 pad + 1)^2 shifts, from ``generator`` or the global RNG.
    """
    if pad == 0:
        return x
    b, _, h, w = x.shape
    side = 2 * pad + 1
    padded = F.pad(x, (pad, pad, pad, pad), value=-1.0)
    choice = torch.randint(0, side * side, (b,), generator=generator,
                           device=generator.device if generator is not None else x.device).to(x.device)
    dy, dx = choice // side, choice % side
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None])          # (B, H)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None])          # (B, W)
    index = torch.arange(b, device=x.device)[:, None, None]
    shifted = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]]
    # standard (not channels-last) strides, even for one channel, so convolutions take their usual path
    return shifted.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)


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
