"""Where the diffusion model lives: pixel space, or the latent space of the Stable Diffusion autoencoder.

A space turns what the dataset yields into what the network is trained on (``training_input``), and samples the
network produced into images in [-1, 1] (``decode``). Pixel space is the identity. Latent space reads datasets that
store the autoencoder's moments (``dataset.stores_moments``, see libs/features.py): every training step draws a
fresh latent ``scale_factor * (mean + std * noise)`` from them, as the U-ViT release does, and sampling decodes
through the autoencoder, which is loaded on first use: training itself needs only the stored moments.
"""
import logging

import torch

from libs.errors import UserError

logger = logging.getLogger(__name__)


def latents_from_moments(moments: torch.Tensor, scale_factor: float, generator: torch.Generator = None):
    """(B, 2C, h, w) moments (mean | log-variance) -> (B, C, h, w) latents scale_factor * (mean + std * noise), the
    noise from ``generator`` or the global RNG."""
    mean, logvar = moments.chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return scale_factor * (mean + std * noise)


class PixelSpace:
    """Images are the model's data: (B, C, H, W) in [-1, 1]."""

    latent = False

    def training_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        return samples.clamp(-1, 1)


class LatentSpace:
    """Stored moments (B, 2C, h, w) -> latents (B, C, h, w) for training; latents -> images (B, 3, H, W) for samples.

    ``autoencoder_path``: the release's ``autoencoder_kl.pth`` or a diffusers folder; '' means none is available, so
    ``decode`` raises a one-line error (the Trainer then skips sample grids and scores with one warning).
    """

    latent = True

    def __init__(self, autoencoder_path: str, scale_factor: float, device, decode_batch_size: int = 50):
        self.autoencoder_path = autoencoder_path
        self.scale_factor = float(scale_factor)
        self.device = torch.device(device)
        self.decode_batch_size = decode_batch_size
        self._autoencoder = None

    def training_input(self, moments: torch.Tensor) -> torch.Tensor:
        return latents_from_moments(moments.float(), self.scale_factor)

    @property
    def autoencoder(self):
        if self._autoencoder is None:
            if not self.autoencoder_path:
                raise UserError('decoding latents needs the Stable Diffusion autoencoder: set '
                                'config.autoencoder.pretrained_path (e.g. assets/stable-diffusion/autoencoder_kl.pth)')
            from libs.autoencoder import load_autoencoder
            self._autoencoder = load_autoencoder(self.autoencoder_path, device=self.device)
            self._autoencoder.scale_factor = self.scale_factor
        return self._autoencoder

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(samples, batch_size=self.decode_batch_size).float().clamp(-1, 1)


def build_space(config, dataset, device):
    """Latent space for datasets of stored moments, pixel space otherwise."""
    if getattr(dataset, 'stores_moments', False):
        ae = config.autoencoder
        return LatentSpace(ae.pretrained_path, ae.scale_factor, device, ae.decode_batch_size)
    if config.autoencoder.pretrained_path:
        raise UserError(f'config.autoencoder.pretrained_path is set but dataset {config.dataset.name!r} holds '
                        f'images, not autoencoder features; train latent models on extracted features '
                        f'(scripts/extract_imagenet_feature.py, scripts/extract_mscoco_feature.py)')
    return PixelSpace()
