"""SiT-XL/2 with REPA on ImageNet 256x256 latents (Yu et al. 2024, "Representation Alignment for Generation: Training
Diffusion Transformers Is Easier Than You Think"). Published by the authors, not measured here: FID-50K 1.42 after 4M
steps with the SDE sampler below, cfg 1.8 and guidance only at t <= 0.7; and, without guidance, in under 400K steps
the FID that plain SiT-XL/2 reaches after 7M (more than 17.5x fewer steps).

Derived from configs/imagenet256_sit_xl2.py (SiT's release: DiT-XL/2's network, the linear path, velocity
prediction, AdamW at a constant 1e-4 without weight decay, batch 256, EMA 0.9999, 10% label dropout inside the
network), with what REPA's release (its train.py defaults, models/sit.py, loss.py and generate.py) changes:

- the network: a C output head (``nnet.learn_sigma=False``, 675,111,184 parameters; SiT's release keeps DiT's 2C head
  and drops its variance half, ``drop_variance``), seeing REPA's time t in [0, 1] (t = 1 is noise; SiT's release sees
  1 - t): ``schedule.time_scale`` 1, ``time_offset`` 0;
- REPA itself (configs/_repa_recipe.py): the tokens of block 8 of 28 through a 1152-2048-2048-768 SiLU projector
  (8,131,328 parameters, in the optimiser and saved as repa_projector.pth, not needed to sample), aligned with
  weight 0.5 to DINOv2-B/14's patch tokens of the 224-pixel source images (assets/dinov2-vit-b14/, assets/README.md;
  REPA's ``--enc-type=dinov2-vit-b``); the images come from the folder the latents were extracted from
  (``dataset.source_path`` or the store's info.json);
- gradients clipped at norm 1 (``--max-grad-norm``); REPA's README trains in fp16 (``accelerate launch
  --mixed_precision fp16``), and uniform training times as SiT;
- sampling as its generate.py for the 1.42: Euler-Maruyama on the SDE with w(t) = sigma(t) = t (its drift
  v - t * score and noise sqrt(2 t dt), SiT's 'sigma' form), 250 evaluations (249 steps from t = 1 to 0.04, then
  the 'Mean' step to 0), every latent channel guided (REPA guides all four; SiT's release the first three), cfg 1.8
  (this suite's scale 0.8), only where REPA's t <= 0.7: ``guidance_interval`` (0, 0.7 / 0.3] in sigma / alpha =
  t / (1 - t). Its ODE sampler (generate.py's default ``--mode=ode``, Euler at 50 steps) is ``flow_euler`` at 50,
  used for the scores during training.

``train.n_steps`` stays 400K, REPA's ``--max-train-steps`` and its headline comparison; its 1.42 is at 4M
(``--config.train.n_steps=4000000``).
"""
from configs._repa_recipe import with_repa
from configs.imagenet256_sit_xl2 import get_config as sit_config
from libs.config import resolve

GUIDANCE_UNTIL_T = 0.7   # REPA's --guidance-high, in its time t = sigma on the linear path (alpha = 1 - t)


def get_config():
    config = sit_config()
    config.nnet.learn_sigma = False
    config.drop_variance = False
    config.schedule.update(time_scale=1.0, time_offset=0.0)
    config.train.grad_clip = 1.0
    config.sample.update(scale=0.8, guided_channels=0,
                         guidance_interval=f'0,{GUIDANCE_UNTIL_T / (1.0 - GUIDANCE_UNTIL_T)!r}')
    config.eval.update(train_algorithm='flow_euler', train_sample_steps=50)
    return resolve(with_repa(config))
