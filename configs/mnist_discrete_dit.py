"""Discrete-state DiT on MNIST 28x28 (256 values per pixel), class-conditional: configs/mnist_discrete_uvit.py with
a DiT of the same hidden size, depth, heads, patch and dropout (the seed's values), labels dropped inside the
network (class_dropout_prob 0.1, so train.p_uncond is 0), and the logits head."""
from configs._discrete_recipe import discrete_recipe
from libs.config import d, resolve


def get_config():
    config = discrete_recipe(
        nnet=d(name='dit', img_size=28, in_channels=1, patch_size=2, depth=14, hidden_dim=512, num_heads=16,
               mlp_ratio=4.0, dropout_attention=0.1, num_classes=10, class_dropout_prob=0.1, learn_sigma=False,
               use_checkpoint=False, num_states=256),
        dataset=d(name='mnist', path='assets/datasets/mnist'), mode='cond')
    config.train.p_uncond = 0.0
    return resolve(config)
