"""DINOv2 (Oquab et al. 2023), read through transformers from a local folder, and its input preprocessing.

``load_dinov2`` gives the frozen ``Dinov2Model`` of a folder holding ``config.json`` and the weights (default
``assets/dinov2-vitl14/``: the Hugging Face ``facebook/dinov2-large``, ViT-L/14, downloaded elsewhere); nothing is
ever downloaded. FD-DINOv2 (libs/metrics/fd_dinov2.py) loads it here; REPA's targets (libs/latent/vision_encoders.py)
read their folders through the same checks and constants.

``dinov2_pixels`` is dgm-eval's preprocessing (Stein et al. 2023, the FD-DINOv2 of EDM2's tables): the uint8 image
resized to 224 x 224 with PIL's bicubic filter (antialiased when shrinking, a = -0.5), back to 8 bits, then scaled
to [0, 1] and normalised with ImageNet's mean and standard deviation. PIL resizes in two passes, the width first,
each rounded and clipped to 8 bits; the same two passes are done here with ``F.interpolate(..., antialias=True)`` on
the images' device, which gives PIL's pixels to within one or two levels on fewer than 1% of them
(tests/test_fd_dinov2.py).
"""
import os

import torch
import torch.nn.functional as F

from libs.errors import UserError, first_line
from libs.fileio import check_model_folder
from libs.images import to_uint8

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_DINOV2_DIR = os.path.join('assets', 'dinov2-vitl14')
SOURCE_MODEL = 'facebook/dinov2-large'
INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def dinov2_folder(path: str = '') -> str:
    """``path``, or the default folder ``assets/dinov2-vitl14/`` of this checkout, normalised."""
    return os.path.normpath(path or os.path.join(REPO_ROOT, DEFAULT_DINOV2_DIR))


def load_dinov2(path: str = '', device='cpu'):
    """The ``Dinov2Model`` stored in the local folder ``path`` (default ``assets/dinov2-vitl14/``), fp32, in eval mode
    with gradients off, on ``device``; one UserError line when the folder or its files are missing."""
    path = dinov2_folder(path)
    where = (f'put config.json and model.safetensors of {SOURCE_MODEL} (ViT-L/14) in {path}/ '
             f'(default location {DEFAULT_DINOV2_DIR}/)')
    check_model_folder(path, 'DINOv2', where)
    from transformers import Dinov2Model
    try:
        model = Dinov2Model.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f'cannot load DINOv2 from {path}/: {first_line(exc)}') from None
    return model.eval().requires_grad_(False).to(device)


def _resize_8bit(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """One bicubic pass of PIL: float pixel values in [0, 255] resized, then rounded and clipped to 8 bits."""
    x = F.interpolate(x, size=(height, width), mode='bicubic', antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255)


def dinov2_pixels(images, size: int = INPUT_SIZE, device=None) -> torch.Tensor:
    """Images -> DINOv2's input (B, 3, size, size) float32, as dgm-eval prepares image files.

    ``images``: uint8 (B, C, H, W) in [0, 255] or float in [-1, 1] (rounded to pixels with ``to_uint8`` first), C 1
    (repeated to 3) or 3; torch tensors or numpy arrays; the result is on ``device`` (default: the images')."""
    images = torch.as_tensor(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f'expected images (B, 1 or 3, H, W), got shape {tuple(images.shape)}')
    if images.dtype != torch.uint8:
        images = to_uint8(images)
    x = images.to(device if device is not None else images.device).float()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    height, width = x.shape[2:]
    if width != size:
        x = _resize_8bit(x, height, size)
    if height != size:
        x = _resize_8bit(x, size, size)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x / 255 - mean) / std
