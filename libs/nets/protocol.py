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
