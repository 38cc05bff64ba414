"""Hybrid U-ViT on the 8x8 digits, CPU-sized: the HybViT objective (cross-entropy + alpha * L_simple) on a U-ViT
with a class token and a classification head (``nnet.clf_classes``); unconditional generation.

Backbone and objective are independent choices: the objective of digits_hybvit.py on another backbone. Measured on
the shared 2-core CPU (one thread, other jobs running), test accuracy of the EMA classifier on the 359 held-out
digits, Frechet distance of 1000 unconditional samples (DPM-Solver++, 25 NFE) in the digit classifier's features:

=======================================================  =====  =====  ========  =======
run (U-ViT 128 wide, depth 6, patch 2, 1.5M parameters)  batch  steps  test acc  Frechet
=======================================================  =====  =====  ========  =======
lr 1e-3, EMA 0.99                                          128   1000    0.972     152.7
lr 1e-3, EMA 0.995                                          64   2000    0.969      78.4
lr 2e-3, EMA 0.995 (9.5 min, one thread, load ~2)           64   2000    0.953      64.7
this config: lr 2e-3, EMA 0.995                            128   1500    0.967      60.9
=======================================================  =====  =====  ========  =======

At this size and budget the GenViT of digits_hybvit.py generates better (26.5 with batch 64 for 2000 steps, about
a third of this run's compute); both classify equally well.
"""
import os

from libs.config import d, load_config_file


def get_config():
    config = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'digits_hybvit.py'))
    config.nnet = d(name='uvit', img_size=8, patch_size=2, in_chans=1, embed_dim=128, depth=6, num_heads=4,
                    mlp_ratio=4, qkv_bias=False, mlp_time_embed=False, num_classes=-1, clf_classes=10)
    config.train.update(n_steps=1500, batch_size=128, eval_interval=750, save_interval=750)
    return config
