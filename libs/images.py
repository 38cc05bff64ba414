"""Conversions between model space (float, [-1, 1]) and 8-bit images, and PNG writing.

Every path that turns samples into pixels (sample grids, PNG folders, in-process FID) goes through
``to_uint8`` so that FID computed in memory equals FID computed from the written PNG files.
"""
import os

import numpy as np
import torch
from PIL import Image


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float in [-1, 1] -> (B, C, H, W) uint8 in [0, 255], rounded as PNG writers do."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) uint8 -> float in [-1, 1]."""
    return x.float() / 127.5 - 1


def _to_pil(img: torch.Tensor) -> Image.Image:
    """(C, H, W) uint8 -> PIL image (grayscale for one channel)."""
    arr = img.permute(1, 2, 0).cpu().numpy()
    if arr.shape[2] == 1:
        return Image.fromarray(arr[:, :, 0], mode='L')
    return Image.fromarray(arr, mode='RGB')


def make_grid(x: torch.Tensor, nrow: int, padding: int = 2) -> torch.Tensor:
    """(B, C, H, W) uint8 -> one (C, H', W') uint8 grid with ``nrow`` images per row."""
    b, c, h, w = x.shape
    ncol = nrow
    nrows = (b + ncol - 1) // ncol
    grid = torch.zeros(c, nrows * (h + padding) + padding, ncol * (w + padding) + padding, dtype=torch.uint8)
    for i in range(b):
        r, col = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = x[i]
    return grid


def save_grid(x: torch.Tensor, path: str, nrow: int, scale: int = 1) -> None:
    """Write samples (B, C, H, W) in [-1, 1] as one PNG grid; ``scale`` enlarges small images (8x8 digits)."""
    img = _to_pil(make_grid(to_uint8(x).cpu(), nrow))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)


def save_pngs(x: torch.Tensor, directory: str, start_index: int) -> None:
    """Write each sample of (B, C, H, W) in [-1, 1] as ``{index:06d}.png`` in ``directory``."""
    os.makedirs(directory, exist_ok=True)
    for i, img in enumerate(to_uint8(x).cpu()):
        _to_pil(img).save(os.path.join(directory, f'{start_index + i:06d}.png'))


def load_png(path: str) -> np.ndarray:
    """A PNG/JPEG file -> (H, W, C) uint8 array with 1 or 3 channels."""
    with Image.open(path) as img:
        arr = np.asarray(img.convert('L' if img.mode in ('L', 'I', 'I;16') else 'RGB'))
    return arr[:, :, None] if arr.ndim == 2 else arr
