"""Latents from what feature stores hold (used by training and by the autoencoder): a code z drawn from stored
moments, or a stored code itself, then ``(z - shift) * scale`` (libs/data/latent_format.py)."""
import torch


def sample_moments(moments: torch.Tensor, generator: torch.Generator = None) -> torch.Tensor:
    """(B, 2C, h, w) moments (mean | log-variance) -> (B, C, h, w) codes mean + std * noise, the noise from
    ``generator`` or the global RNG; the log-variance is clamped to [-30, 20] as diffusers' Gaussian does."""
    mean, logvar = moments.chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + std * noise


def latents_from_features(features: torch.Tensor, fmt, generator: torch.Generator = None) -> torch.Tensor:
    """What a store holds of ``fmt`` (a LatentFormat: moments (B, 2C, h, w) or codes (B, C, h, w)) -> latents
    (B, C, h, w) = (z - shift) * scale, z drawn from the moments or the stored code."""
    z = sample_moments(features, generator) if fmt.stored == 'moments' else features
    return (z - fmt.shift) * fmt.scale
