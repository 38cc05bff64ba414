"""HybViT (Yang et al. 2022) on the 8x8 digits, CPU-sized: one GenViT trained as a classifier and a diffusion
model at once (cross-entropy on the batch + alpha * L_simple on the same clean batch).

Departures from the paper's CIFAR recipe, for a few CPU minutes: a smaller network, AdamW instead of SGD, alpha 1
instead of 100 (alpha trades FID for accuracy in the paper), no augmentation of the classification batch (a
1-pixel shift of an 8x8 digit slowed learning: 0.87 vs 0.95 test accuracy after 800 steps of a small GenViT), and
x0 prediction (see digits_uvit_tiny.py for why). Measured with these settings at 600 steps: 0.91 test accuracy;
the unconditional samples were not yet digit-like (Frechet distance 400), which longer runs still have to fix.
"""
from libs.config import d, resolve


def get_config():
    return resolve(d(
        seed=1234,
        pred='x0_pred',
        train=d(n_steps=1000, batch_size=128, mode='uncond', log_interval=50, eval_interval=500, save_interval=500,
                ema_rate=0.99, num_workers=0, keep_ckpts=2, grid_size=100),
        objective=d(name='hybrid', alpha=1.0, augment='none'),
        optimizer=d(name='adamw', lr=0.001, weight_decay=0.03, betas=(0.9, 0.999)),
        lr_scheduler=d(name='cosine', warmup_steps=50),
        nnet=d(name='genvit', img_size=8, patch_size=2, in_chans=1, embed_dim=128, depth=6, num_heads=4,
               mlp_ratio=2.0, num_classes=10),
        schedule=d(name='cosine'),
        dataset=d(name='digits'),
        sample=d(sample_steps=25, n_samples=1000, mini_batch_size=500, algorithm='dpm_solver++', path=''),
        eval=d(metric='digits', train_n_samples=500, train_algorithm='dpm_solver++', train_sample_steps=25),
    ))
