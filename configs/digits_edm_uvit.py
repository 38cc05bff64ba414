"""EDM on the bundled 8x8 digits: the default run's U-ViT (configs/digits_uvit_tiny.py) trained with EDM's
preconditioning, log-normal noise levels and loss weight (Karras et al. 2022; libs/diffusion/edm.py), and sampled
with EDM's Heun sampler on its 18-level rho-grid (35 network evaluations).

Everything else is the default run's config, read from it: width 128, depth 4, 2000 steps of batch 64, AdamW at
2e-3 with cosine decay, EMA 0.995, 10% label dropout; guidance 1.0 here (0.5 there: measured on this run's
checkpoint, 0.5 / 1.0 / 1.5 give accuracy 0.969 / 0.988 / 0.992 and Frechet distance 17.5 / 13.8 / 25.9).

The "no class" label also serves DDAE's feature evaluations (``eval.py --eval=linear_probe``, ``contrastive``,
``noisy_clf``), which probe the network without its label: ``probe`` below names the block and noise level (EDM's
index 4 of DDAE: sigma = 0.06) and the digits-sized probe recipe (100 epochs at lr 1e-2 instead of DDAE's 15 at
1e-3, which stop far from convergence on 1438 images). BENCHMARKS.md ("EDM and DDAE on the digits") has the
measured scores.
"""
from configs.digits_uvit_tiny import get_config as default_run_config
from libs.config import resolve


def get_config():
    config = default_run_config()
    config.framework = 'edm'     # config.schedule and config.pred are not read: EDM's preconditioning decides
    config.edm.update(precond='edm', sigma_data=0.5, p_mean=-1.2, p_std=1.2, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    config.sample.update(algorithm='heun', sample_steps=35, scale=1.0)
    config.eval.update(train_algorithm='heun', train_sample_steps=35)
    config.probe.update(layers='block_2', level=4, grid_levels='1,2,3,4,5,6,8,10', epochs=100, lr=0.01)
    config.noisy_clf.update(mlp_epochs=30, wrn_depth=16, wrn_widen=2, wrn_epochs=30, wrn_warmup_epochs=2)
    return resolve(config)
