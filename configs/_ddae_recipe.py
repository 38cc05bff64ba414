"""DDAE's CIFAR-10 recipes (Xiang et al. 2023, "Denoising Diffusion Autoencoders are Unified Self-supervised
Learners"; the values of its release's config/*.yaml), in one place: ``configs/cifar10_<framework>_<net>.py`` is
``config_getter(<name>)``.

- Networks: DDAE's UNet (libs/nets/unet.py), "DDPM" (128 channels, multipliers 1,2,2,2, attention at 16x16, 2 blocks
  per resolution, 35.7M parameters) or "DDPM++" (multipliers 2,2,2, 4 blocks, residual up/down-sampling, 56.5M).
- Frameworks: DDPM (1000 linear betas 1e-4..0.02, noise prediction, the network sees n / 1000 as DDAE's) or EDM
  (its preconditioning, sigma_data 0.5, P_mean -1.2, P_std 1.2; libs/diffusion/edm.py); "+aug": EDM's non-leaking
  augmentation with probability 0.12 and a 9-dimensional label (augment_dim 9).
- Training: Adam (betas 0.9, 0.999, no weight decay), gradients clipped to norm 1, a linear warm-up over
  ``warm_epoch`` epochs then a constant learning rate, horizontal flips, an EMA of the weights. Epochs become steps
  at 50,000 / batch steps per epoch.
- Sampling (for FID, 50k samples): DDIM with 100 steps (DDPM) or EDM's Heun with 18 levels (35 evaluations, EDM),
  deterministic as DDAE samples (EDM: S_churn 0, with DDAE's S_min 0.01, S_max 1, S_noise 1.007 kept for churn).
- Probes: DDAE's linear probe (Adam lr 1e-3, cosine, 15 epochs, batch 128, flip + 4-pixel crop, features recomputed
  every epoch) at its layer and noise level, ``out_6`` at step 11 (DDPM) or ``out_7`` at level 4 (EDM); the grids of
  its --grid search, steps 1, 11, 21 or levels 3, 4, 5.

DDAE's published numbers for the best-probe checkpoints (FID / top-1 linear-probe accuracy): DDPM UNet 4.09 / 90.05,
EDM UNet 3.97 / 90.44, DDPM DDPM++ 3.08 / 93.97, EDM DDPM++ 2.23 / 94.50, EDM DDPM++ + aug 2.34 / 95.49.
"""
import functools

from libs.config import d, resolve

TRAIN_IMAGES = 50_000

DDPM_UNET = dict(n_channels=128, ch_mults=(1, 2, 2, 2), is_attn=(False, True, False, False), n_blocks=2,
                 use_res_for_updown=False)
DDPMPP_UNET = dict(n_channels=128, ch_mults=(2, 2, 2), is_attn=(False, True, False), n_blocks=4,
                   use_res_for_updown=True)

# name -> (framework, network, dropout, epochs, batch, warm-up epochs, EMA, augment probability)
RECIPES = {
    'ddpm_unet': ('ddpm', DDPM_UNET, 0.1, 2000, 128, 13, 0.9999, 0.0),
    'edm_unet': ('edm', DDPM_UNET, 0.13, 2000, 128, 200, 0.9993, 0.0),
    'ddpm_ddpmpp': ('ddpm', DDPMPP_UNET, 0.1, 2000, 64, 13, 0.9999, 0.0),
    'edm_ddpmpp': ('edm', DDPMPP_UNET, 0.13, 2000, 64, 200, 0.9993, 0.0),
    'edm_ddpmpp_aug': ('edm', DDPMPP_UNET, 0.13, 4000, 64, 200, 0.9993, 0.12),
}

FRAMEWORKS = {
    'ddpm': dict(
        framework='gaussian', pred='noise_pred',
        schedule=d(name='ddpm_linear', N=1000, beta_start=1e-4, beta_end=0.02, time_scale=1.0),
        sample=d(algorithm='ddim', sample_steps=100, eta=0.0),
        probe=d(layers='out_6', level=11, grid_levels='1,11,21'),
    ),
    'edm': dict(
        framework='edm',
        sample=d(algorithm='heun', sample_steps=35, s_churn=0.0, s_min=0.01, s_max=1.0, s_noise=1.007),
        probe=d(layers='out_7', level=4, grid_levels='3,4,5'),
    ),
}


def ddae_config(name: str):
    """The resolved config of DDAE's ``name`` (a key of RECIPES)."""
    framework, unet, dropout, epochs, batch, warm_epochs, ema, augment_prob = RECIPES[name]
    per_epoch = TRAIN_IMAGES / batch
    parts = dict(FRAMEWORKS[framework])
    sample = parts.pop('sample')
    probe = parts.pop('probe')
    extra = {'edm': d(precond='edm', sigma_data=0.5, p_mean=-1.2, p_std=1.2, sigma_min=0.002, sigma_max=80.0,
                      rho=7.0, augment_prob=augment_prob)} if framework == 'edm' else {}
    return resolve(d(
        seed=1234,
        **parts, **extra,
        train=d(n_steps=round(epochs * per_epoch), batch_size=batch, mode='uncond', log_interval=100,
                eval_interval=round(100 * per_epoch), save_interval=round(100 * per_epoch), grad_clip=1.0,
                ema_rate=ema, keep_ckpts=0),
        optimizer=d(name='adam', lr=1e-4, weight_decay=0.0, betas=(0.9, 0.999)),
        lr_scheduler=d(name='customized', warmup_steps=round(warm_epochs * per_epoch)),
        nnet=d(name='unet', image_shape=(3, 32, 32), dropout=dropout, augment_dim=9 if augment_prob else 0, **unet),
        dataset=d(name='cifar10', path='assets/datasets/cifar10', random_flip=True),
        sample=d(n_samples=50000, mini_batch_size=500, path='', **sample),
        probe=d(epochs=15, batch_size=128, lr=1e-3, augment='flip_crop', **probe),
    ))


def config_getter(name: str):
    """``get_config`` for configs/cifar10_<name>.py."""
    return functools.partial(ddae_config, name)
