"""DiT-XL/1 on DC-AE-f32c32 latents of ImageNet 512x512 (16x16x32: 256 image tokens), class-conditional with a
learned variance: the DiT that DC-AE reports (Chen et al. 2024), its published sampling, DiT's published training.

Published in the DC-AE repository (model zoo dc-ae-f32c32-in-1.0-dit-xl-in-512px and its evaluation): the autoencoder
dc-ae-f32c32-in-1.0 at scaling factor 0.3189; DiT-XL (depth 28, width 1152, 16 heads) at patch size 1 on the 32
latent channels, with DiT's learned variance, label dropout 0.1 and linear 1000-step schedule; 250 ancestral steps
with guidance 1.3 on all latent channels (their DiT guides every channel, not DiT's first 3 of 4): this suite's
scale 0.3, ``guided_channels`` 0. DC-AE publishes no training command for DiT: the training recipe is DiT's own
(configs/imagenet256_dit_xl2.py: AdamW at a constant 1e-4, batch 256, EMA 0.9999, 400k steps).

The scale is set here because the diffusers folder's config.json of the in-1.0 models may carry diffusers' default
scaling_factor 1.0. Features: `python scripts/extract_imagenet_feature.py --path=<ImageNet>/train --resolution=512
--autoencoder=assets/dc-ae-f32c32-in-1.0-diffusers --out=assets/datasets/imagenet512_dcae_f32_features`.
"""
import os

from libs.config import load_config_file


def get_config():
    config = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'imagenet256_dit_xl2.py'))
    config.autoencoder.update(pretrained_path='assets/dc-ae-f32c32-in-1.0-diffusers', scale_factor=0.3189)
    config.nnet.update(input_size=16, patch_size=1, in_channels=32)
    config.dataset.path = 'assets/datasets/imagenet512_dcae_f32_features'
    config.sample.update(scale=0.3, guided_channels=0)
    return config
