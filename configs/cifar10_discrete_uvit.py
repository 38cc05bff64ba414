"""Discrete-state U-ViT on CIFAR-10 32x32 (256 values per pixel), unconditional: U-ViT-S/2's trunk (embed 512,
depth 12, 8 heads; configs/cifar10_uvit_small.py) with the logits head (B, 3, 32, 32, 256) and the discrete seed's
recipe (configs/_discrete_recipe.py), random flips as for the Gaussian model."""
from configs._discrete_recipe import discrete_recipe
from libs.config import d, resolve


def get_config():
    return resolve(discrete_recipe(
        nnet=d(name='uvit', img_size=32, patch_size=2, in_chans=3, embed_dim=512, depth=12, num_heads=8, mlp_ratio=4,
               qkv_bias=False, mlp_time_embed=False, num_classes=-1, num_states=256),
        dataset=d(name='cifar10', path='assets/datasets/cifar10', random_flip=True), mode='uncond'))
