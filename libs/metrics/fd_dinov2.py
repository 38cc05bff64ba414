"""FD-DINOv2 (Stein et al. 2023; the FD_DINOv2 column of EDM2): the Frechet distance between the Gaussians fitted to
DINOv2 ViT-L/14 features of the samples and of the reference images.

The features are dgm-eval's: each image preprocessed by ``libs.latent.dinov2.dinov2_pixels`` (224 x 224, PIL's
bicubic, ImageNet normalisation) and encoded to the CLS token after the final layer norm (1024 values for ViT-L),
which is what DINOv2's own ``forward`` returns and transformers' ``Dinov2Model`` gives as ``pooler_output``.

One known difference with dgm-eval, which loads DINOv2 from torch hub: at 224 x 224 the 37 x 37 position embeddings
are interpolated to 16 x 16, by transformers to that size and by DINOv2's hub code with a scale factor of
(16 + 0.1) / 37, so the bicubic sampling points differ slightly. Its effect on FD-DINOv2 needs the real weights to
measure; it is not measured here.
"""
import numpy as np
import torch

from libs.latent.dinov2 import dinov2_pixels, load_dinov2
from libs.metrics.fid import activation_statistics, frechet_distance_of_activations


class DinoV2Features:
    """Images (uint8 or float in [-1, 1], (B, C, H, W)) -> DINOv2 CLS features (B, hidden_size) float32 on the
    model's device, in batches of ``batch_size``."""

    def __init__(self, model, batch_size: int = 50):
        self.model = model.eval()
        self.batch_size = batch_size
        self.device = next(model.parameters()).device

    @classmethod
    def from_folder(cls, path: str = '', device='cpu', batch_size: int = 50):
        return cls(load_dinov2(path, device), batch_size)

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def __call__(self, images) -> torch.Tensor:
        images = torch.as_tensor(images)
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f'expected a non-empty batch of images (B, C, H, W), got shape {tuple(images.shape)}')
        out = [self.model(pixel_values=dinov2_pixels(batch, device=self.device)).pooler_output.float()
               for batch in images.split(self.batch_size)]
        return torch.cat(out)


def fd_dinov2(sample_features, ref_features) -> float:
    """The Frechet distance between DINOv2 features of samples (N, D) and of reference images (M, D), numpy or
    torch, with the statistics in fp64."""
    def as_numpy(x):
        return x.detach().double().cpu().numpy() if torch.is_tensor(x) else np.asarray(x, np.float64)
    return frechet_distance_of_activations(as_numpy(sample_features), *activation_statistics(as_numpy(ref_features)))
