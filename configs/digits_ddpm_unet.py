"""A small DDAE UNet (libs/nets/unet.py) trained as a DDPM on the bundled 8x8 digits, on the CPU: DDAE's "DDPM"
recipe (configs/_ddae_recipe.py) shrunk to the digits.

- UNet: 32 channels, multipliers 1, 2 (8x8 and 4x4), attention at 4x4, one block per resolution, dropout 0.1;
  its feature layers are ``out_1`` .. ``out_4`` (the up path).
- DDPM: 1000 linear betas 1e-4..0.02, noise prediction, the network sees n / 1000 (as DDAE's); unconditional, so
  the digit score is the Frechet distance alone (no labels to check).
- 1000 steps of batch 64, Adam at 2e-3 (DDAE's 1e-4 is for 35M parameters and 780k steps) with a short warm-up,
  gradients clipped to 1, EMA 0.995: the conv UNet runs at about 4.3 steps/s on the slowest 2-core CPU (the U-ViT
  at 6.5), so 1000 steps keep the run within the digits' 10-minute budget.
- Sampling: DDIM, 50 steps, deterministic (DDAE samples CIFAR-10 with 100).
- Probes: ``out_2`` at step 11 (DDAE's DDPM level); grids over steps 1..201.

Measured on the 2-core first-generation AMD EPYC: 4 min 44 s, Frechet distance 36.2 on 1000 samples; linear probe
0.883 at out_2 / step 11 (0.786 for the same network untrained). 2000 steps with DDIM-100 scores took 12 min 3 s
and gave 15.4 and 0.930.
"""
from libs.config import d, resolve


def get_config():
    return resolve(d(
        seed=1234,
        pred='noise_pred',
        schedule=d(name='ddpm_linear', N=1000, beta_start=1e-4, beta_end=0.02, time_scale=1.0),
        train=d(n_steps=1000, batch_size=64, mode='uncond', log_interval=50, eval_interval=500, save_interval=1000,
                ema_rate=0.995, num_workers=0, keep_ckpts=2, grid_size=100, grad_clip=1.0),
        optimizer=d(name='adam', lr=0.002, weight_decay=0.0, betas=(0.9, 0.999)),
        lr_scheduler=d(name='cosine', warmup_steps=50),
        nnet=d(name='unet', image_shape=(1, 8, 8), n_channels=32, ch_mults=(1, 2), is_attn=(False, True),
               dropout=0.1, n_blocks=1, use_res_for_updown=False),
        dataset=d(name='digits'),
        sample=d(algorithm='ddim', sample_steps=50, eta=0.0, n_samples=1000, mini_batch_size=500, path=''),
        eval=d(metric='digits', train_n_samples=500, train_algorithm='ddim', train_sample_steps=50),
        probe=d(layers='out_2', level=11, grid_levels='1,11,21,51,101,201', epochs=100, lr=0.01),
        noisy_clf=d(mlp_epochs=30, wrn_depth=16, wrn_widen=2, wrn_epochs=30, wrn_warmup_epochs=2),
    ))
