"""DiT-XL/2 on ImageNet 256x256 latents (Peebles & Xie 2023; 675.1M parameters; FID 2.27 with cfg 1.5 and 250
ancestral steps in the paper), class-conditional with a learned variance.

The latents are U-ViT-H/2's (configs/imagenet256_uvit_huge.py: the same stored features and the EMA autoencoder,
sd-vae-ft-ema, as DiT's training). DiT's recipe: AdamW at a constant 1e-4 without weight decay, batch 256, EMA
0.9999, the linear 1000-step schedule, eps prediction with the learned variance and the hybrid loss
L_simple + L_vlb (``learned_variance``, ``vlb_lambda`` = 0.001 per step of 1000: DiT's loss exactly). Labels are
dropped inside the network (``class_dropout_prob`` 0.1 to its "no class" row, label 1000 of the 1001-row table, which
guidance uses), so ``train.p_uncond`` is 0. The network sees the step index n - 1 (``schedule.time_offset`` -1), as
the released DiT-XL-2-256x256.pt expects.

Sampling: DiT's 250 of the 1000 steps with the learned variance (``ddpm_ancestral_learned``), guiding only the first
3 of the 4 latent channels (``sample.guided_channels``) as DiT's forward_with_cfg. DiT's cfg scale s is
eps_u + s (eps_c - eps_u), this suite's scale s - 1: its 1.5 for FID is ``scale`` 0.5 (here), its 4.0 for pictures
``--config.sample.scale=3.0``.
"""
import os

from libs.config import d, load_config_file, resolve


def get_config():
    latents = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'imagenet256_uvit_huge.py'))
    return resolve(d(
        seed=1234,
        pred='noise_pred',
        learned_variance=True,
        vlb_lambda=0.001,
        autoencoder=latents.autoencoder,
        dataset=latents.dataset,
        train=d(n_steps=400000, batch_size=256, mode='cond', p_uncond=0.0, ema_rate=0.9999, log_interval=100,
                eval_interval=5000, save_interval=50000, grid_size=50),
        optimizer=d(name='adamw', lr=1e-4, weight_decay=0.0, betas=(0.9, 0.999)),
        lr_scheduler=d(name='customized', warmup_steps=0),          # constant
        nnet=d(name='dit', input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
               mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True),
        schedule=d(name='ddpm_linear', N=1000, beta_start=1e-4, beta_end=0.02, time_offset=-1),
        sample=d(algorithm='ddpm_ancestral_learned', sample_steps=250, n_samples=50000, mini_batch_size=50,
                 scale=0.5, guided_channels=3, path=''),
    ))
