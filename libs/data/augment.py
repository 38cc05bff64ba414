"""Batch augmentations for the classification branch of hybrid training.

They run on the device in the training loop and draw from the global RNG (restored on resume), so a resumed run
repeats an uninterrupted one. Images are (B, C, H, W) in [-1, 1].
"""
import math

import torch
import torch.nn.functional as F

from libs.errors import UserError
from libs.images import from_uint8, to_uint8


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator = None) -> torch.Tensor:
    """Translate each image by up to ``pad`` pixels in each direction; the border is filled with -1 (black).

    One draw per image picks one of the (2 pad + 1)^2 shifts, from ``generator`` or the global RNG.
    """
    if pad == 0:
        return x
    side = 2 * pad + 1
    choice = torch.randint(0, side * side, (x.shape[0],), generator=generator,
                           device=generator.device if generator is not None else x.device)
    return shifted(x, pad, choice)


def shifted(x: torch.Tensor, pad: int, choice: torch.Tensor) -> torch.Tensor:
    """Image i translated by shift ``choice[i]`` of the (2 pad + 1)^2 shifts (row-major, dy then dx; the middle one
    is no shift); the border is filled with -1 (black)."""
    b, _, h, w = x.shape
    side = 2 * pad + 1
    padded = F.pad(x, (pad, pad, pad, pad), value=-1.0)
    choice = choice.to(x.device)
    dy, dx = choice // side, choice % side
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None])          # (B, H)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None])          # (B, W)
    index = torch.arange(b, device=x.device)[:, None, None]
    shifted = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]]
    # standard (not channels-last) strides, even for one channel, so convolutions take their usual path
    return shifted.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)


def random_flip(x: torch.Tensor) -> torch.Tensor:
    return flipped(x, flip_mask(x))


def flip_mask(x: torch.Tensor) -> torch.Tensor:
    """(B,) bool: which images of the batch x (B, C, H, W) a random horizontal flip mirrors, each with probability
    1/2."""
    return torch.rand(x.shape[0], device=x.device) < 0.5


def flipped(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) with the images where ``mask`` (B,) is set mirrored left to right."""
    return torch.where(mask[:, None, None, None], x.flip(3), x)


# ------------------------------------------------------------------------------------------------ RandAugment
# RandAugment (Cubuk et al. 2020): each image gets N operations drawn uniformly from the list below, each at
# magnitude M of a scale 0..30; ops with a direction get a random sign. Magnitude ranges at M = 30 are those of
# torchvision's RandAugment (shear 0.3, translation 150/331 of the side, rotation 30 degrees, enhancement factors
# 1 +- 0.9, posterize down to 4 bits, solarize threshold down to 0). Written over batches, on 0..255 values that
# are rounded after every op as 8-bit images would be, so each op gives what it gives on uint8 images.
MAX_MAGNITUDE = 30


def _gray(v):
    """(B, C, H, W) -> (B, 1, H, W) luminance (ITU-R 601-2, as PIL); one channel is its own luminance."""
    if v.shape[1] == 1:
        return v
    return (0.299 * v[:, 0:1] + 0.587 * v[:, 1:2] + 0.114 * v[:, 2:3]).round()


def _blend(degenerate, v, factor):
    """PIL ImageEnhance: degenerate + factor * (v - degenerate), per-image factor (B,)."""
    return degenerate + factor.view(-1, 1, 1, 1) * (v - degenerate)


def _affine(v, theta):
    """Per-image affine map of the output grid to the input (normalised coordinates), nearest pixel, black fill."""
    grid = F.affine_grid(theta, list(v.shape), align_corners=False)
    return F.grid_sample(v, grid, mode='nearest', padding_mode='zeros', align_corners=False)


def _theta(n, device, dtype, a=1.0, b=0.0, c=0.0, d=0.0, e=1.0, f=0.0):
    theta = torch.zeros(n, 2, 3, device=device, dtype=dtype)
    for (i, j), value in zip(((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)), (a, b, c, d, e, f)):
        theta[:, i, j] = value
    return theta


def _shear_x(v, s):
    return _affine(v, _theta(len(v), v.device, v.dtype, b=s))


def _shear_y(v, s):
    return _affine(v, _theta(len(v), v.device, v.dtype, d=s))


def _translate_x(v, s):
    return _affine(v, _theta(len(v), v.device, v.dtype, c=2 * s))   # s: fraction of the width


def _translate_y(v, s):
    return _affine(v, _theta(len(v), v.device, v.dtype, f=2 * s))


def _rotate(v, degrees):
    rad = degrees * math.pi / 180
    cos, sin = torch.cos(rad), torch.sin(rad)
    return _affine(v, _theta(len(v), v.device, v.dtype, a=cos, b=-sin, d=sin, e=cos))


def _brightness(v, s):
    return _blend(torch.zeros_like(v), v, 1 + s)


def _color(v, s):
    return _blend(_gray(v).expand_as(v), v, 1 + s)


def _contrast(v, s):
    return _blend(_gray(v).mean(dim=(1, 2, 3), keepdim=True).round().expand_as(v), v, 1 + s)


def _sharpness(v, s):
    """Blend with a 3x3 smoothing (centre weight 5 of 13) of the interior; the one-pixel border stays as is."""
    kernel = torch.ones(3, 3, device=v.device, dtype=v.dtype)
    kernel[1, 1] = 5
    kernel = (kernel / kernel.sum()).expand(v.shape[1], 1, 3, 3)
    smooth = v.clone()
    smooth[:, :, 1:-1, 1:-1] = F.conv2d(v, kernel, groups=v.shape[1]).round()
    return _blend(smooth, v, 1 + s)


def _posterize(v, fewer_bits):
    """Keep 8 - round(fewer_bits) bits."""
    step = 2.0 ** fewer_bits.round().view(-1, 1, 1, 1)
    return torch.floor(v / step) * step


def _solarize(v, lowered):
    """Invert the values at or above the threshold 255 - lowered."""
    return torch.where(v >= 255 - lowered.view(-1, 1, 1, 1), 255 - v, v)


def _autocontrast(v, _):
    low = v.amin(dim=(2, 3), keepdim=True)
    high = v.amax(dim=(2, 3), keepdim=True)
    flat = high <= low
    spread = torch.where(flat, torch.ones_like(high), high - low).double()
    scale = torch.full_like(spread, 255.0) / spread
    stretched = torch.floor(v.double() * scale - low * scale).to(v.dtype)  # as PIL: float64, truncated
    return torch.where(flat, v, stretched)


def _equalize(v, _):
    """PIL's ImageOps.equalize per image and channel: a lookup table from the cumulative histogram."""
    b, c, h, w = v.shape
    levels = v.round().long().clamp(0, 255).view(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=v.device, dtype=torch.long).scatter_add_(1, levels, torch.ones_like(levels))
    last = hist.gather(1, (levels.amax(1, keepdim=True)))                 # count of the highest level present
    step = (h * w - last) // 255                                            # (B*C, 1)
    before = hist.cumsum(1) - hist                                          # pixels below each level
    lut = ((before + step // 2) // step.clamp(min=1)).clamp(max=255)
    out = lut.gather(1, levels).to(v.dtype)
    return torch.where(step > 0, out, v.view(b * c, h * w)).view(b, c, h, w)


def _identity(v, _):
    return v


# name: (op(values, magnitude per image), magnitude at M = 30, signed?)
RANDAUGMENT_OPS = {
    'identity': (_identity, 0.0, False),
    'autocontrast': (_autocontrast, 0.0, False),
    'equalize': (_equalize, 0.0, False),
    'rotate': (_rotate, 30.0, True),               # degrees
    'solarize': (_solarize, 255.0, False),         # threshold lowered from 255
    'color': (_color, 0.9, True),                  # enhancement factor 1 +- magnitude
    'posterize': (_posterize, 4.0, False),         # bits dropped from 8
    'contrast': (_contrast, 0.9, True),
    'brightness': (_brightness, 0.9, True),
    'sharpness': (_sharpness, 0.9, True),
    'shear_x': (_shear_x, 0.3, True),
    'shear_y': (_shear_y, 0.3, True),
    'translate_x': (_translate_x, 150 / 331, True),  # fraction of the side
    'translate_y': (_translate_y, 150 / 331, True),
}


def rand_augment(x: torch.Tensor, num_ops: int = 2, magnitude: int = 9) -> torch.Tensor:
    """RandAugment on a batch in [-1, 1]: each image gets ``num_ops`` ops drawn independently (global RNG)."""
    if not 0 <= magnitude <= MAX_MAGNITUDE:
        raise ValueError(f'RandAugment magnitude must be in 0..{MAX_MAGNITUDE}, got {magnitude}')
    v = to_uint8(x).to(x.dtype)
    names = list(RANDAUGMENT_OPS)
    fraction = magnitude / MAX_MAGNITUDE
    for _ in range(num_ops):
        choice = torch.randint(0, len(names), (v.shape[0],), device=v.device)
        sign = torch.where(torch.rand(v.shape[0], device=v.device) < 0.5, -1.0, 1.0).to(v.dtype)
        out = v.clone()
        for k, name in enumerate(names):
            index = (choice == k).nonzero().squeeze(1)
            if index.numel() == 0:
                continue
            op, top, signed = RANDAUGMENT_OPS[name]
            amount = torch.full((index.numel(),), top * fraction, device=v.device, dtype=v.dtype)
            if signed:
                amount = amount * sign[index]
            out[index] = op(v[index], amount).clamp(0, 255).round()
        v = out
    return from_uint8(v.to(torch.uint8)).to(x.dtype)


AUGMENTS = {
    'none': lambda x: x,
    'shift': lambda x: random_shift(x, 1),                  # small images without a mirror symmetry (digits)
    'crop_flip': lambda x: random_flip(random_shift(x, 4)),  # the standard CIFAR augmentation
    'randaugment': lambda x: rand_augment(x, 2, 9),          # RandAugment N=2, M=9 (DeiT's rand-m9 setting)
    'crop_flip_randaugment': lambda x: rand_augment(random_flip(random_shift(x, 4)), 2, 9),
}


def build_augment(name: str):
    if name not in AUGMENTS:
        raise UserError(f"unknown config.objective.augment {name!r}; known: {', '.join(AUGMENTS)}")
    return AUGMENTS[name]
