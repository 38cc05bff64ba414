"""SiT-XL/2 on ImageNet 256x256 latents (Ma et al. 2024, "Exploring Flow and Diffusion-based Generative Models with
Scalable Interpolant Transformers"; 675.1M parameters). Published by the authors, not measured here: FID-50K 2.06
with the SDE sampler below at cfg 1.5 after 7M steps, against DiT-XL/2's 2.27 with the same network.

SiT is DiT's network trained as a flow: the linear interpolant x_t = (1 - t) x_0 + t eps (``schedule.name='linear'``)
and velocity prediction (``pred='velocity'``: the network regresses dx_t / dt = eps - x_0, unweighted, training times
uniform in [0, 1]). Everything else is the DiT-XL/2 recipe (configs/imagenet256_dit_xl2.py), as in SiT's train.py:
AdamW at a constant 1e-4 without weight decay, batch 256, EMA 0.9999, labels dropped inside the network
(``class_dropout_prob`` 0.1 to the "no class" row 1000, so ``train.p_uncond`` is 0), the same latents and EMA
autoencoder. SiT's release keeps DiT's 2C output head (``learn_sigma=True``) and drops the variance half
(``drop_variance``), so its checkpoint SiT-XL-2-256.pt has DiT-XL/2's keys and parameter count; the network sees
SiT's own time 1 - t in [0, 1] (the linear path's default ``time_scale`` -1, ``time_offset`` 1).

Sampling, SiT's sample_ddp.py SDE defaults: Euler-Maruyama with diffusion w(t) = sigma(t) ('sigma'), the 'Mean'
last step of size 0.04, 250 evaluations in all (249 SDE steps and the last step), guiding the first 3 of the 4
latent channels as forward_with_cfg does. SiT's cfg scale s is DiT's (u + s (c - u)), this suite's s - 1: its 1.5
for FID is ``scale`` 0.5. ``--config.sample.guidance_interval=lo,hi`` guides only where lo < sigma / alpha <= hi
(Kynkaanniemi et al. 2024). Its ODE sampler is ``flow_heun`` (or ``flow_euler``); DPM-Solver++ and UniPC sample it in
10-25 evaluations from t = 1 - 1e-3.

``train.n_steps`` is DiT's 400K of its comparison runs; SiT's 2.06 is at 7M steps (``--config.train.n_steps=7000000``,
its 1400 epochs). Derive variants from this file (the REPA one sets ``nnet.learn_sigma=False`` and
``drop_variance=False`` for REPA's C head, ``schedule.time_scale=1.0, time_offset=0.0`` for REPA's time t).
"""
from configs.imagenet256_dit_xl2 import get_config as dit_config
from libs.config import d, resolve


def get_config():
    config = dit_config()
    config.update(pred='velocity', learned_variance=False, drop_variance=True)
    config.schedule = d(name='linear', time_sampling='uniform', train_eps=0.0, time_scale=-1.0, time_offset=1.0)
    config.sample.update(algorithm='flow_sde', sample_steps=250, diffusion_form='sigma', diffusion_norm=1.0,
                         last_step='Mean', last_step_size=0.04)
    config.eval.update(train_algorithm='flow_heun', train_sample_steps=50)
    return resolve(config)
