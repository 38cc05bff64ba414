"""REPA's recipe (Yu et al. 2024, "Representation Alignment for Generation"; the defaults of its release's train.py),
in one place: a config adds it with ``with_repa(config, **overrides)``, which sets ``config.repa``
(libs/training/repa.py; ``config.repa.weight`` 0, the default, switches REPA off).

- ``weight`` 0.5: REPA's ``--proj-coeff``;
- ``depth`` 8: REPA's ``--encoder-depth``, the block of SiT-XL/2 (28 blocks) whose tokens are aligned (8 of 24 for
  SiT-L); counted from 1 in execution order, so for U-ViT the in-blocks come first, then the mid-block;
- ``encoder`` 'dinov2': DINOv2 ViT-B/14 (REPA's ``--enc-type dinov2-vit-b``), read from assets/dinov2-vit-b14/
  (assets/README.md); 'clip' and 'dinov2_reg' load the same way, 'digits' is the digits' own encoder;
- ``projector_dim`` 2048: the hidden width of its three-layer SiLU projector.

The rest of REPA's training recipe belongs to the base config: SiT's AdamW at 1e-4 without weight decay, batch 256,
``train.grad_clip`` 1.0 (REPA's ``--max-grad-norm``; SiT's release does not clip) and mixed precision.
"""
from libs.config import d

REPA = dict(weight=0.5, depth=8, encoder='dinov2', encoder_path='', projector_dim=2048)


def with_repa(config, **overrides):
    """``config`` (resolved or not) with ``config.repa`` set to REPA's recipe, with ``overrides`` (keys of
    ``REPA``); returns it."""
    unknown = sorted(set(overrides) - set(REPA))
    if unknown:
        raise KeyError(f'unknown REPA setting {unknown[0]!r}; known: {", ".join(REPA)}')
    config.repa = d(**{**REPA, **overrides})
    return config
