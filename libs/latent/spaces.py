"""Where the diffusion model lives: pixel space, or the latent space of an autoencoder.

A space turns what the dataset yields into what the network is trained on (``training_input``), and samples the network
produced into images in [-1, 1] (``decode``). Pixel space is the identity. Latent space reads feature stores
(``dataset.stores_features``, see libs/data/feature_store.py) in the store's LatentFormat: every training step draws a
fresh latent from stored moments, as the U-ViT release does, or takes a deterministic autoencoder's stored code, and
scales it, (z - shift) * scale; sampling decodes through the autoencoder, which is loaded on first use: training
itself needs only the store.

``latent_format`` says where the format comes from: the store's info.json when training, the autoencoder's folder when
evaluating (no dataset is read then); ``config.autoencoder.scale_factor``, when set, overrides the scale.
"""
import dataclasses
import logging
import os

import torch

from libs.errors import UserError
from libs.latent.moments import latents_from_features

logger = logging.getLogger(__name__)

NO_AUTOENCODER = ('decoding latents needs the autoencoder: set config.autoencoder.pretrained_path (e.g. '
                  'assets/stable-diffusion/autoencoder_kl.pth, or a diffusers autoencoder folder)')


class PixelSpace:
    """Images are the model's data: (B, C, H, W) in [-1, 1]."""

    latent = False

    def training_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        return samples.clamp(-1, 1)


class LatentSpace:
    """Stored features (moments (B, 2C, h, w) or codes (B, C, h, w)) -> latents (B, C, h, w) for training; latents ->
    images (B, 3, H, W) for samples, in the LatentFormat ``fmt``.

    ``autoencoder_path``: the release's ``autoencoder_kl.pth`` or a diffusers folder; '' means none is available, so
    ``decode`` raises a one-line error (the Trainer then skips sample grids and scores with one warning).
    """

    latent = True

    def __init__(self, autoencoder_path: str, fmt, device, decode_batch_size: int = 50):
        self.autoencoder_path = autoencoder_path
        self.format = fmt
        self.device = torch.device(device)
        self.decode_batch_size = decode_batch_size
        self._autoencoder = None

    def training_input(self, features: torch.Tensor) -> torch.Tensor:
        return latents_from_features(features.float(), self.format)

    @property
    def autoencoder(self):
        if self._autoencoder is None:
            if not self.autoencoder_path:
                raise UserError(NO_AUTOENCODER)
            from libs.latent.autoencoder import load_autoencoder
            autoencoder = load_autoencoder(self.autoencoder_path, device=self.device)
            autoencoder.format = dataclasses.replace(autoencoder.format, scale=self.format.scale,
                                                     shift=self.format.shift)
            self._autoencoder = autoencoder
        return self._autoencoder

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(samples, batch_size=self.decode_batch_size).float().clamp(-1, 1)


def _check_same_autoencoder(stored, configured, recorded: bool) -> None:
    """The store's LatentFormat against the configured autoencoder's: one line naming both when they differ. A store
    written before the format was ``recorded`` is compared on its geometry only (its scale was never written)."""
    keys = ('autoencoder', 'channels', 'factor', 'stored') + (('scale', 'shift') if recorded else ())
    if any(getattr(stored, key) != getattr(configured, key) for key in keys):
        raise UserError(f'the features of {stored.source} come from another autoencoder ({stored.describe()}) than '
                        f'config.autoencoder.pretrained_path={configured.source} ({configured.describe()}): point '
                        f'one at the other')


def latent_format(config, dataset=None):
    """The LatentFormat of a latent model's data.

    Training (``dataset``, a feature store): the store's, checked against the autoencoder of
    ``config.autoencoder.pretrained_path`` when that is there (it decodes the samples). Evaluation (no dataset): the
    autoencoder's own, read from its config. ``config.autoencoder.scale_factor``, when not 0, replaces the scale.
    """
    from libs.latent.autoencoder import autoencoder_format
    path = config.autoencoder.pretrained_path
    if dataset is not None:
        fmt = dataset.latent_format
        if path and os.path.exists(path):
            _check_same_autoencoder(fmt, autoencoder_format(path), 'autoencoder_class' in dataset.info)
    elif not path:
        raise UserError(NO_AUTOENCODER)
    else:
        fmt = autoencoder_format(path)
    scale = config.autoencoder.scale_factor
    if scale and scale != fmt.scale:
        logger.info("latents scaled by config.autoencoder.scale_factor=%g, not the autoencoder's %g", scale, fmt.scale)
        fmt = dataclasses.replace(fmt, scale=float(scale))
    return fmt


def build_space(config, spec, device):
    """Latent space for data that are autoencoder latents (``spec``, a DataSpec, has a ``latent_format``), pixel
    space otherwise."""
    if spec.latent:
        ae = config.autoencoder
        return LatentSpace(ae.pretrained_path, spec.latent_format, device, ae.decode_batch_size)
    if config.autoencoder.pretrained_path:
        raise UserError(f'config.autoencoder.pretrained_path is set but dataset {config.dataset.name!r} holds '
                        f'images, not autoencoder features; train latent models on extracted features '
                        f'(scripts/extract_imagenet_feature.py, scripts/extract_mscoco_feature.py)')
    return PixelSpace()
