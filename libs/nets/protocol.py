"""The backbone protocol: what every network of libs/nets declares about itself, written down once.

A backbone is an ``nn.Module`` called as ``nnet(x, model_time, **cond) -> output``. It knows nothing about noise
schedules: the framework (libs/diffusion) chooses ``model_time`` and reads ``output``. Each backbone sets:

- ``condition``: what it is conditioned on, and so the keyword it takes --
  ``'none'`` (nothing), ``'labels'`` (``y``: (B,) int64, possibly with an extra "no class" label) or ``'text'``
  (``context``: (B, L, D) text-encoder features). A backbone with ``augment_dim`` A > 0 (the UNet) also takes EDM's
  augmentation labels, ``augment_labels``: (B, A) floats (libs/data/edm_augment.py; None: not augmented).
- ``num_classes``: the size of the label embedding when ``condition == 'labels'``.
- ``classifies``: True when it has a classification head, ``classify(x) -> (B, K)`` logits of clean images.
- ``output``: the layout of its output -- ``'image'`` (shaped like x; eps, x0 or EDM's F as the framework's
  parameterisation says), ``'image+variance'`` (2C channels, a learned variance as DiT's) or ``'logits'``
  ((B, C, H, W, S) over S states, the discrete framework).
- ``input_shape``: (C, H, W), the data it takes.

A transformer backbone also names its repeated blocks, ``repeated_blocks()`` (U-ViT: in, mid and out blocks; DiT
and GenViT: their blocks), which regional compilation compiles one by one (libs/nets/compile.py); a backbone without
it is compiled whole.

Backbones that serve DDAE's probes (#12) also give intermediate features: ``feature_layers()`` lists the layer
names, in execution order, and ``features(x, model_time, layers, **cond)`` returns ``{name: (B, channels) float32}``
for each requested name -- that layer's output averaged over space (the UNet: over H x W) or over the patch tokens
(the ViTs: condition, time and class tokens left out). A backbone may stop once the deepest requested layer is
computed. An unknown name is a ``UserError`` listing the valid ones (``check_feature_layers``). Names: the UNet's are
DDAE's, ``out_1``, ``out_2``, ... for the blocks of its up path; the ViTs' are ``block_0``, ``block_1``, ... for
their transformer blocks.

Backbones that serve representation alignment (REPA, libs/training/repa.py; U-ViT, GenViT, DiT) give the image tokens
of one of their blocks from the training forward itself, without a second pass: ``token_blocks()`` is the number of
transformer blocks, counted in execution order (U-ViT: its in-blocks, the mid-block, then the out-blocks, whatever
long skip each takes); ``token_grid`` is (h, w), the grid of image tokens (row-major, one per patch); ``token_dim``
their width; and ``forward_with_tokens(x, model_time, depth, **cond) -> (output, tokens)`` gives ``forward``'s output
and the output of block ``depth`` (1 .. token_blocks(), REPA's ``encoder_depth``) restricted to the image tokens,
``(B, h * w, token_dim)``: time, condition, class and text tokens left out. ``check_token_depth`` turns a backbone
without them, or a depth out of range, into one error line.
"""
from libs.errors import UserError

CONDITIONS = ('none', 'labels', 'text')
OUTPUT_IMAGE = 'image'
OUTPUT_IMAGE_AND_VARIANCE = 'image+variance'
OUTPUT_LOGITS = 'logits'
OUTPUTS = (OUTPUT_IMAGE, OUTPUT_IMAGE_AND_VARIANCE, OUTPUT_LOGITS)

# config.train.mode (the release's field) of each condition
TRAIN_MODES = {'none': 'uncond', 'labels': 'cond', 'text': 'text'}
CONDITION_NAMES = {'none': 'unconditional', 'labels': 'class-conditional', 'text': 'text-conditional'}


def _declared(nnet, name: str, known=None):
    if not hasattr(nnet, name):
        raise UserError(f'{type(nnet).__name__} does not declare {name!r} (the backbone protocol of '
                        f'libs/nets/protocol.py)')
    value = getattr(nnet, name)
    if known is not None and value not in known:
        raise UserError(f'{type(nnet).__name__} declares {name}={value!r}; known: {", ".join(known)}')
    return value


def backbone_condition(nnet) -> str:
    return _declared(nnet, 'condition', CONDITIONS)


def backbone_output(nnet) -> str:
    return _declared(nnet, 'output', OUTPUTS)


def backbone_classifies(nnet) -> bool:
    return bool(_declared(nnet, 'classifies'))


def check_train_mode(nnet, mode: str, nnet_name: str = '') -> str:
    """The network's condition; a config.train.mode that contradicts it is one error line."""
    condition = backbone_condition(nnet)
    if TRAIN_MODES[condition] != mode:
        raise UserError(f"config.train.mode={mode!r} does not fit the network, which is "
                        f"{CONDITION_NAMES[condition]} (config.nnet.name={nnet_name!r}, "
                        f"num_classes={getattr(nnet, 'num_classes', -1)})")
    return condition


class SquareImageInput:
    """Mixin for a backbone that takes (in_chans, img_size, img_size) inputs: its ``input_shape``."""

    @property
    def input_shape(self):
        return self.in_chans, self.img_size, self.img_size


def check_feature_layers(nnet, layers) -> list:
    """The requested feature names as a list (one name may be given as a string); an unknown one is a UserError
    whose one line lists the valid names."""
    valid = list(nnet.feature_layers())
    names = [layers] if isinstance(layers, str) else list(layers)
    unknown = [name for name in names if name not in valid]
    if unknown:
        raise UserError(f'{type(nnet).__name__} has no feature layer {unknown[0]!r}; valid names: '
                        f'{", ".join(valid)}')
    return names


def check_token_depth(nnet, depth: int, key: str = 'config.repa.depth') -> int:
    """``depth`` as an int when ``nnet`` gives the image tokens of its block ``depth`` (the token protocol above);
    otherwise a UserError: a backbone without image tokens, or a depth outside 1 .. token_blocks()."""
    if not callable(getattr(nnet, 'forward_with_tokens', None)):
        raise UserError(f'{type(nnet).__name__} gives no image tokens of its blocks (forward_with_tokens, the token '
                        f'protocol of libs/nets/protocol.py), which representation alignment needs: use a ViT '
                        f'backbone (uvit, dit, genvit)')
    blocks = int(nnet.token_blocks())
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= blocks:
        raise UserError(f'{key}={depth!r} is out of range for {type(nnet).__name__}: its blocks are 1..{blocks}, '
                        f'counted in execution order')
    return depth


class PatchTokens:
    """Mixin for a ViT over ``img_size // patch_size`` squared patch tokens: its ``token_grid`` (h, w)."""

    @property
    def token_grid(self) -> tuple:
        side = self.img_size // self.patch_size
        return side, side
