"""Flow matching plus REPA on the bundled 8x8 digits: configs/digits_sit.py (the default run's U-ViT and budget
trained with the linear interpolant and velocity prediction, sampled with SiT's Heun ODE at 10 evaluations), read as
it is, plus REPA (configs/_repa_recipe.py) with the settings of configs/digits_uvit_repa.py, read from there: the
image tokens of the U-ViT's block 2 of 5 go through a projector of hidden width 256 and are aligned, with weight 0.5,
to the patch tokens of the digits' own encoder (libs/latent/digits_encoder.py; not the network behind the digit
score, for the reasons configs/digits_uvit_repa.py gives).

This is the digits' counterpart of REPA's own recipe (SiT with REPA: configs/imagenet256_sit_xl2_repa.py). Depth and
projector width are not tuned, here or in digits_uvit_repa. BENCHMARKS.md ("Convergence on the digits: flow
matching and REPA") has the four digits recipes over training, three seeds each.
"""
from configs._repa_recipe import with_repa
from configs.digits_sit import get_config as digits_sit_config
from configs.digits_uvit_repa import DIGITS_REPA
from libs.config import resolve


def get_config():
    return resolve(with_repa(digits_sit_config(), **DIGITS_REPA))
