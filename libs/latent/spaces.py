"""Where the diffusion model lives: pixel space, or the latent space of the Stable Diffusion autoencoder.

A space turns what the dataset yields into what the network is trained on (``training_input``), and samples the network
produced into images in [-1, 1] (``decode``). Pixel space is the identity. Latent space reads datasets that store the
autoencoder's moments (``dataset.stores_moments``, see libs/data/feature_store.py): every training step draws a fresh
latent ``scale_factor * (mean + std * noise)`` from them, as the U-ViT release does, and sampling decodes through the
autoencoder, which is loaded on first use: training itself needs only the stored moments.
"""
import logging

import torch

from libs.errors import UserError
from libs.latent.moments import latents_from_moments

logger = logging.getLogger(__name__)


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

    def check_autoencoder_path(self) -> None:
        """One-line error when no autoencoder is configured (cheap: before the weights or the sampling)."""
        if not self.autoencoder_path:
            raise UserError('decoding latents needs the Stable Diffusion autoencoder: set '
                            'config.autoencoder.pretrained_path (e.g. assets/stable-diffusion/autoencoder_kl.pth)')

    @property
    def autoencoder(self):
        if self._autoencoder is None:
            self.check_autoencoder_path()
            from libs.latent.autoencoder import load_autoencoder
            self._autoencoder = load_autoencoder(self.autoencoder_path, device=self.device)
            self._autoencoder.scale_factor = self.scale_factor
        return self._autoencoder

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(samples, batch_size=self.decode_batch_size).float().clamp(-1, 1)


def build_space(config, latent: bool, device):
    """Latent space for data that are autoencoder latents (``DataSpec.latent``: datasets of stored moments), pixel
    space otherwise."""
    if latent:
        ae = config.autoencoder
        return LatentSpace(ae.pretrained_path, ae.scale_factor, device, ae.decode_batch_size)
    if config.autoencoder.pretrained_path:
        raise UserError(f'config.autoencoder.pretrained_path is set but dataset {config.dataset.name!r} holds '
                        f'images, not autoencoder features; train latent models on extracted features '
                        f'(scripts/extract_imagenet_feature.py, scripts/extract_mscoco_feature.py)')
    return PixelSpace()
