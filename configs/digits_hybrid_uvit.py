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
from libs.config import d, resolve


def get_config():
    return resolve(d(
        seed=1234,
        pred='x0_pred',
        train=d(n_steps=1500, batch_size=128, mode='uncond', log_interval=50, eval_interval=750, save_interval=750,
                ema_rate=0.995, num_workers=0, keep_ckpts=2, grid_size=100),
        objective=d(name='hybrid', alpha=100.0, augment='none'),
        optimizer=d(name='adamw', lr=0.002, weight_decay=0.03, betas=(0.9, 0.999)),
        lr_scheduler=d(name='cosine', warmup_steps=50),
        nnet=d(name='uvit', img_size=8, patch_size=2, in_chans=1, embed_dim=128, depth=6, num_heads=4,
               mlp_ratio=4, qkv_bias=False, mlp_time_embed=False, num_classes=-1, clf_classes=10),
        schedule=d(name='cosine'),
        dataset=d(name='digits'),
        sample=d(sample_steps=25, n_samples=1000, mini_batch_size=500, algorithm='dpm_solver++', path=''),
        eval=d(metric='digits', train_n_samples=500, train_algorithm='dpm_solver++', train_sample_steps=25),
    ))
