"""Discrete-state U-ViT on MNIST 28x28 (256 values per pixel), class-conditional, with the discrete seed's values
(configs/_discrete_recipe.py): hidden 512, depth 14, 16 heads, patch 2, attention dropout 0.1, and the logits head
(B, 1, 28, 28, 256). MNIST is read from its four idx files in ``dataset.path`` (plain or .gz; never downloaded)."""
from configs._discrete_recipe import discrete_recipe
from libs.config import d, resolve


def get_config():
    return resolve(discrete_recipe(
        nnet=d(name='uvit', img_size=28, in_channels=1, patch_size=2, depth=14, hidden_dim=512, num_heads=16,
               mlp_ratio=4, dropout_attention=0.1, num_classes=11, use_checkpoint=False, num_states=256),
        dataset=d(name='mnist', path='assets/datasets/mnist'), mode='cond'))
