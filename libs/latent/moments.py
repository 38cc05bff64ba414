"""Latents drawn from the autoencoder moments that feature stores hold (used by training and by the autoencoder)."""
import torch


def latents_from_moments(moments: torch.Tensor, scale_factor: float, generator: torch.Generator = None):
    """(B, 2C, h, w) moments (mean | log-variance) -> (B, C, h, w) latents scale_factor * (mean + std * noise), the
    noise from ``generator`` or the global RNG."""
    mean, logvar = moments.chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return scale_factor * (mean + std * noise)
