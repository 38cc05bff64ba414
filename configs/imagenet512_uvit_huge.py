"""U-ViT-H/4 on ImageNet 512x512 latents (64x64x4), class-conditional with guidance (500.9M parameters; FID 4.05
with guidance scale 0.7 in the paper).

The 256 huge recipe (the discrete Stable Diffusion schedule, as the release's train_ldm_discrete.py) with patch
size 4 on the larger latents and guidance scale 0.7.
"""
import os

from libs.config import load_config_file


def get_config():
    config = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'imagenet256_uvit_huge.py'))
    config.nnet.update(img_size=64, patch_size=4)
    config.dataset.path = 'assets/datasets/imagenet512_features'
    config.sample.scale = 0.7
    return config
