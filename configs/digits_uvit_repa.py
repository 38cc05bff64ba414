"""The default run (configs/digits_uvit_tiny.py, read as it is) plus REPA (configs/_repa_recipe.py): the image tokens
of the U-ViT's block 2 of 5 (the last in-block, whose output is also the long skip into the last out-block) are
projected and aligned to the patch tokens of a frozen encoder with weight 0.5, as in REPA.

The encoder is the digits' own ('digits', libs/latent/digits_encoder.py): a small ViT trained once, self-supervised
(SimCLR), on the diffusion model's training split and cached to assets/digits_encoder.pt (90 s of CPU the first
time). Not the digit classifier behind the digit score (libs/metrics/digits_score.py): a model aligned to the
scorer's features would be trained against its own score, which would then no longer be evidence. The encoder is
another network (a ViT over 2x2 patches, not a CNN) with another objective (contrastive, no labels); it gives a 4x4
grid of 64-wide tokens, the grid of the U-ViT's patch-2 tokens, so the grids match without resizing.
DINOv2 at 8x8 pixels would see a few blurry 14-pixel patches of an upsampled digit.

Depth and projector width are not tuned: depth 2 of 5 blocks is REPA's 8 of 28 rounded towards the middle (its
ablations prefer early blocks), and the projector's hidden width 256 is twice the network's 128, as REPA's 2048 is
about twice SiT-XL's 1152 (REPA's own 2048 here would have 4.6M parameters, six times the network's 0.73M).
"""
from configs._repa_recipe import with_repa
from configs.digits_uvit_tiny import get_config as default_run_config
from libs.config import resolve

# REPA's settings on the digits' U-ViTs (configs/digits_sit_repa.py reads them from here)
DIGITS_REPA = dict(encoder='digits', depth=2, projector_dim=256)


def get_config():
    return resolve(with_repa(default_run_config(), **DIGITS_REPA))
