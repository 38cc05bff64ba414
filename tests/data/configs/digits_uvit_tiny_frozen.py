"""A frozen copy of configs/digits_uvit_tiny.py as it was at commit d531c1e (before issue 9), whose per-step losses
tests/test_training.py compares with the ones recorded then. Do not change it: the default recipe itself may change.

The default run: a small class-conditional U-ViT on scikit-learn's bundled 8x8 digits (offline, CPU).

Tuned to give digit-like samples within 10 minutes on 2 CPU cores; scored at the end with the offline digit
classifier (accuracy on the conditioning labels, Frechet distance in the classifier's feature space).
The network predicts x0 rather than the noise: after a few hundred steps a noise-predicting net is still too
inaccurate at high noise levels, where its error is multiplied by 1/alpha(t) (about 150 at t = 1), and samples
drift off the data; x0 prediction gives digit-like samples within the CPU budget.
"""
from libs.config import d, resolve


def get_config():
    return resolve(d(
        seed=1234,
        pred='x0_pred',
        train=d(n_steps=1200, batch_size=128, mode='cond', log_interval=50, eval_interval=600, save_interval=600,
                ema_rate=0.995, num_workers=0, keep_ckpts=2, grid_size=100),
        optimizer=d(name='adamw', lr=0.001, weight_decay=0.03, betas=(0.9, 0.999)),
        lr_scheduler=d(name='cosine', warmup_steps=50),
        nnet=d(name='uvit', img_size=8, patch_size=2, in_chans=1, embed_dim=192, depth=8, num_heads=6,
               mlp_ratio=4, qkv_bias=False, mlp_time_embed=False, num_classes=10),
        dataset=d(name='digits'),
        sample=d(sample_steps=25, n_samples=1000, mini_batch_size=500, algorithm='dpm_solver++', path=''),
        eval=d(metric='digits', train_n_samples=500, train_algorithm='dpm_solver++', train_sample_steps=25),
    ))
