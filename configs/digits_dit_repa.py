"""The digits DiT (configs/digits_dit.py, read as it is) plus REPA (configs/_repa_recipe.py), with the digits' own
encoder for the reasons configs/digits_uvit_repa.py gives: the tokens of DiT's block 2 of 4 (patch 2: the 4x4 grid
the encoder gives) go through a projector of hidden width 256 and are aligned with weight 0.5. Not tuned.
"""
from configs._repa_recipe import with_repa
from configs.digits_dit import get_config as digits_dit_config
from libs.config import resolve


def get_config():
    return resolve(with_repa(digits_dit_config(), encoder='digits', depth=2, projector_dim=256))
