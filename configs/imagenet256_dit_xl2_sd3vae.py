"""DiT-XL/2 on the 16-channel latents of the SD3 autoencoder, ImageNet 256x256 (32x32x16: 256 image tokens),
class-conditional with a learned variance. No published reference: DiT-XL/2's recipe (configs/imagenet256_dit_xl2.py)
on another latent space.

The autoencoder is the ``vae/`` folder of stabilityai/stable-diffusion-3-medium-diffusers at assets/sd3-vae/ (an
AutoencoderKL: 16 channels, down-sampling 8, scaling_factor 1.5305, shift_factor 0.0609, read from its config.json:
latents = (z - 0.0609) * 1.5305). FLUX.1's autoencoder has the same architecture (scale 0.3611, shift 0.1159):
``--config.autoencoder.pretrained_path=assets/flux-vae``, with
``--config.dataset.path=assets/datasets/imagenet256_fluxvae_features``.
Guidance acts on every latent channel (DiT's first-3-of-4 rule belongs to its 4-channel latents).

Features: `python scripts/extract_imagenet_feature.py --path=<ImageNet>/train --autoencoder=assets/sd3-vae
--out=assets/datasets/imagenet256_sd3vae_features`.
"""
import os

from libs.config import load_config_file


def get_config():
    config = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'imagenet256_dit_xl2.py'))
    config.autoencoder.update(pretrained_path='assets/sd3-vae', scale_factor=0.0)
    config.nnet.in_channels = 16
    config.dataset.path = 'assets/datasets/imagenet256_sd3vae_features'
    config.sample.guided_channels = 0
    return config
