"""U-ViT-L/4 on ImageNet 512x512 latents (64x64x4), class-conditional with guidance (286.9M parameters).

The 256 large recipe with patch size 4 on the larger latents, 500k steps and guidance scale 0.7.
"""
import os

from libs.config import load_config_file


def get_config():
    config = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'imagenet256_uvit_large.py'))
    config.nnet.update(img_size=64, patch_size=4)
    config.train.n_steps = 500000
    config.dataset.path = 'assets/datasets/imagenet512_features'
    config.sample.scale = 0.7
    return config
