"""The frozen autoencoder that maps images to the latents of a latent diffusion model.

Any diffusers autoencoder folder (``config.json`` and ``diffusion_pytorch_model.safetensors`` or ``.bin``) whose class
``AUTOENCODERS`` lists: ``AutoencoderKL`` (Stable Diffusion 1/2 ft-EMA and ft-MSE, SDXL, SD3, FLUX.1) and
``AutoencoderDC`` (DC-AE). The folder's config gives the class, the latent channels, the down-sampling factor,
``scaling_factor`` and ``shift_factor``: latents = (z - shift) * scale (libs/data/latent_format.py). The original
CompVis / Stable Diffusion state dict that the U-ViT release ships as ``assets/stable-diffusion/autoencoder_kl.pth``
loads too, as an ``AutoencoderKL`` of ``SD_CONFIG``; ``compvis_to_diffusers`` and ``diffusers_to_compvis`` translate
between the two key layouts.
"""
import dataclasses
import inspect
import json
import os
from typing import Callable

import torch
from diffusers import AutoencoderKL

from libs.data.latent_format import LEGACY_SCALE, LatentFormat
from libs.errors import UserError
from libs.fileio import load_state_file
from libs.latent.moments import latents_from_features

SCALE_FACTOR = LEGACY_SCALE

# The autoencoder of Stable Diffusion 1 (CompVis ddconfig: ch 128, ch_mult 1,2,4,4, num_res_blocks 2, z_channels 4).
SD_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=('DownEncoderBlock2D',) * 4,
    up_block_types=('UpDecoderBlock2D',) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn='silu',
    latent_channels=4,
    norm_num_groups=32,
    sample_size=256,
    scaling_factor=SCALE_FACTOR,
)

# The published architectures (their diffusers config.json files), for benchmarks with random weights.
# SD3's autoencoder (stabilityai/stable-diffusion-3-medium-diffusers, vae/): SD 1's with 16 channels, no quant convs.
# FLUX.1's (black-forest-labs/FLUX.1-dev, vae/) is the same network with scaling_factor 0.3611, shift_factor 0.1159.
SD3_CONFIG = dict(SD_CONFIG, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False, sample_size=1024,
                  scaling_factor=1.5305, shift_factor=0.0609)


def _dc_ae_config(latent_channels: int, widths: tuple, encoder_depths: tuple, decoder_depths: tuple,
                  scaling_factor: float) -> dict:
    """A DC-AE-in-1.0 config (mit-han-lab/dc-ae-f*c*-in-1.0-diffusers): three ResBlock levels (batch norm and ReLU
    in the decoder), then EfficientViT levels (RMS norm and SiLU), pixel (un)shuffle resampling. ``scaling_factor``
    is the one DC-AE's repository trains with."""
    vit = len(widths) - 3
    return dict(latent_channels=latent_channels, attention_head_dim=32,
                encoder_block_types=('ResBlock',) * 3 + ('EfficientViTBlock',) * vit,
                decoder_block_types=('ResBlock',) * 3 + ('EfficientViTBlock',) * vit,
                encoder_block_out_channels=widths, decoder_block_out_channels=widths,
                encoder_layers_per_block=encoder_depths, decoder_layers_per_block=decoder_depths,
                encoder_qkv_multiscales=((),) * len(widths), decoder_qkv_multiscales=((),) * len(widths),
                decoder_norm_types=('batch_norm',) * 3 + ('rms_norm',) * vit,
                decoder_act_fns=('relu',) * 3 + ('silu',) * vit, scaling_factor=scaling_factor)


DC_AE_F32C32_CONFIG = _dc_ae_config(32, (128, 256, 512, 512, 1024, 1024), (0, 4, 8, 2, 2, 2), (0, 5, 10, 2, 2, 2),
                                    0.3189)
DC_AE_F64C128_CONFIG = _dc_ae_config(128, (128, 256, 512, 512, 1024, 1024, 2048), (0, 4, 8, 2, 2, 2, 2),
                                     (0, 5, 10, 2, 2, 2, 2), 0.2889)

# name -> (diffusers class, config): Stable Diffusion 1/2's (ft-EMA, ft-MSE), SD3's (and FLUX.1's), DC-AE's.
ARCHITECTURES = {
    'sd-vae-f8': ('AutoencoderKL', SD_CONFIG),
    'sd3-vae': ('AutoencoderKL', SD3_CONFIG),
    'dc-ae-f32c32': ('AutoencoderDC', DC_AE_F32C32_CONFIG),
    'dc-ae-f64c128': ('AutoencoderDC', DC_AE_F64C128_CONFIG),
}


# ------------------------------------------------------------------------------------------ the known classes

@dataclasses.dataclass(frozen=True)
class AutoencoderClass:
    """How the suite uses one diffusers autoencoder class: ``factor(config)``, its down-sampling factor read from
    its config; ``stored``, what its encoder gives a feature store ('moments' of a Gaussian, or deterministic
    'latents'); ``encode(model, images)``, that output; ``since``, the first diffusers release that has it."""

    factor: Callable[[dict], int]
    stored: str
    encode: Callable
    since: str


def _kl_factor(config: dict) -> int:
    return 2 ** (len(config['block_out_channels']) - 1)


def _dc_factor(config: dict) -> int:
    # diffusers' development versions named the encoder's widths ``block_out_channels``
    return 2 ** (len(config.get('encoder_block_out_channels') or config['block_out_channels']) - 1)


def _gaussian_moments(model, images: torch.Tensor) -> torch.Tensor:
    return model.encode(images).latent_dist.parameters


def _deterministic_code(model, images: torch.Tensor) -> torch.Tensor:
    return model.encode(images).latent


AUTOENCODERS = {
    'AutoencoderKL': AutoencoderClass(_kl_factor, 'moments', _gaussian_moments, since='0.27'),
    'AutoencoderDC': AutoencoderClass(_dc_factor, 'latents', _deterministic_code, since='0.32'),
}


def _diffusers_class(name: str):
    import diffusers
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise UserError(f'diffusers {diffusers.__version__} has no {name}: install diffusers>='
                        f'{AUTOENCODERS[name].since} (pip install -r requirements.txt)')
    return cls


def _with_defaults(cls, config: dict) -> dict:
    """``config`` with the constructor defaults of ``cls`` for the keys it leaves out (as from_pretrained fills
    them), without diffusers' own ``_`` entries."""
    defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **{key: value for key, value in config.items() if not key.startswith('_')}}


def _check_exists(path: str) -> None:
    if not path or not os.path.exists(path):
        raise UserError(f"autoencoder not found at {path}: put a diffusers autoencoder folder there (config.json + "
                        f"diffusion_pytorch_model.safetensors; {', '.join(sorted(AUTOENCODERS))}) or the U-ViT "
                        f"release's autoencoder_kl.pth (assets/README.md lists them)")


def folder_config(path: str):
    """(class name, its full config) of the diffusers folder ``path``, from config.json alone."""
    file = os.path.join(path, 'config.json')
    if not os.path.isfile(file):
        raise UserError(f'{path} is not a diffusers autoencoder folder: config.json is missing (the folder holds '
                        f'config.json and diffusion_pytorch_model.safetensors)')
    try:
        with open(file) as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f'cannot read {file}: {exc}') from None
    name = config.get('_class_name') if isinstance(config, dict) else None
    if name not in AUTOENCODERS:
        raise UserError(f"{file} is a {name!r}, not a known autoencoder class; known: "
                        f"{', '.join(sorted(AUTOENCODERS))}")
    return name, _with_defaults(_diffusers_class(name), config)


def autoencoder_format(path: str, config=None) -> LatentFormat:
    """The latents of the autoencoder at ``path``, read from its config alone (no weights): a diffusers folder's
    config.json, or for a CompVis-format file ``config`` (default ``SD_CONFIG``). A missing path, a folder of an
    unknown class, or per-channel latent statistics (``latents_mean``) are one UserError line each."""
    _check_exists(path)
    if os.path.isdir(path):
        return config_format(*folder_config(path), source=path)
    return config_format('AutoencoderKL', SD_CONFIG if config is None else config, source=path)


def config_format(name: str, config: dict, source: str = '') -> LatentFormat:
    """The latents of an autoencoder of class ``name`` (a key of AUTOENCODERS) built from ``config``."""
    config = _with_defaults(_diffusers_class(name), config)
    if config.get('latents_mean') is not None or config.get('latents_std') is not None:
        raise UserError(f'{source}: per-channel latents_mean / latents_std normalisation is not supported, only '
                        f'scaling_factor and shift_factor')
    kind = AUTOENCODERS[name]
    return LatentFormat(name, int(config['latent_channels']), kind.factor(config), float(config['scaling_factor']),
                        float(config.get('shift_factor') or 0.0), kind.stored, source)


# -------------------------------------------------------------------------------- the CompVis state dict layout

# Parameter names inside one block: CompVis name -> diffusers name.
_RESNET = {'norm1': 'norm1', 'conv1': 'conv1', 'norm2': 'norm2', 'conv2': 'conv2', 'nin_shortcut': 'conv_shortcut'}
_ATTENTION = {'norm': 'group_norm', 'q': 'to_q', 'k': 'to_k', 'v': 'to_v', 'proj_out': 'to_out.0'}
# CompVis attention projections are 1x1 convolutions (weight (C, C, 1, 1)); diffusers uses Linear (weight (C, C)).
_ATTENTION_LINEAR = ('q', 'k', 'v', 'proj_out')


def _full_config(config) -> dict:
    """``config`` with the block type lists filled in from the number of blocks where they are absent."""
    config = dict(config)
    n = len(config['block_out_channels'])
    config.setdefault('down_block_types', ('DownEncoderBlock2D',) * n)
    config.setdefault('up_block_types', ('UpDecoderBlock2D',) * n)
    return config


def _key_table(config) -> dict:
    """CompVis key -> (diffusers key, whether the weight is a 1x1 conv in CompVis and a Linear in diffusers).

    Lists every key a model of this config may have; shortcut convolutions, present only where a block changes
    its number of channels, are listed for every resnet block.
    """
    n = len(config['block_out_channels'])
    per_block = config.get('layers_per_block', 1)
    modules = []  # (CompVis prefix, diffusers prefix, names inside the module)

    def resnet(old, new):
        modules.append((old, new, _RESNET))

    def mid(part):
        resnet(f'{part}.mid.block_1', f'{part}.mid_block.resnets.0')
        if config.get('mid_block_add_attention', True):
            modules.append((f'{part}.mid.attn_1', f'{part}.mid_block.attentions.0', _ATTENTION))
        resnet(f'{part}.mid.block_2', f'{part}.mid_block.resnets.1')

    def ends(part):
        modules.append((f'{part}.conv_in', f'{part}.conv_in', None))
        modules.append((f'{part}.norm_out', f'{part}.conv_norm_out', None))
        modules.append((f'{part}.conv_out', f'{part}.conv_out', None))

    ends('encoder')
    for i in range(n):
        for j in range(per_block):
            resnet(f'encoder.down.{i}.block.{j}', f'encoder.down_blocks.{i}.resnets.{j}')
        if i < n - 1:
            modules.append((f'encoder.down.{i}.downsample.conv', f'encoder.down_blocks.{i}.downsamplers.0.conv', None))
    mid('encoder')

    ends('decoder')
    mid('decoder')
    for i in range(n):
        level = n - 1 - i  # CompVis numbers decoder levels by resolution, diffusers in the order they run
        for j in range(per_block + 1):
            resnet(f'decoder.up.{level}.block.{j}', f'decoder.up_blocks.{i}.resnets.{j}')
        if i < n - 1:
            modules.append((f'decoder.up.{level}.upsample.conv', f'decoder.up_blocks.{i}.upsamplers.0.conv', None))

    if config.get('use_quant_conv', True):
        modules.append(('quant_conv', 'quant_conv', None))
    if config.get('use_post_quant_conv', True):
        modules.append(('post_quant_conv', 'post_quant_conv', None))

    table = {}
    for old, new, names in modules:
        for param in ('weight', 'bias'):
            if names is None:
                table[f'{old}.{param}'] = (f'{new}.{param}', False)
                continue
            for old_name, new_name in names.items():
                linear = param == 'weight' and names is _ATTENTION and old_name in _ATTENTION_LINEAR
                table[f'{old}.{old_name}.{param}'] = (f'{new}.{new_name}.{param}', linear)
    return table


def _describe(config) -> str:
    return (f"block_out_channels={tuple(config['block_out_channels'])}, "
            f"layers_per_block={config.get('layers_per_block', 1)}")


def compvis_to_diffusers(state_dict: dict, config) -> dict:
    """Rename a CompVis / Stable Diffusion autoencoder state dict to ``AutoencoderKL`` keys for ``config``."""
    table = _key_table(config)
    out = {}
    for key, value in state_dict.items():
        if key not in table:
            raise UserError(f'autoencoder weights do not fit the CompVis layout for {_describe(config)}: '
                            f'key {key!r} has no diffusers name')
        new_key, linear = table[key]
        out[new_key] = value[:, :, 0, 0] if linear and value.ndim == 4 else value
    return out


def diffusers_to_compvis(state_dict: dict, config) -> dict:
    """Rename an ``AutoencoderKL`` state dict for ``config`` to CompVis / Stable Diffusion autoencoder keys."""
    inverse = {new: (old, linear) for old, (new, linear) in _key_table(config).items()}
    out = {}
    for key, value in state_dict.items():
        if key not in inverse:
            raise UserError(f'autoencoder weights do not fit AutoencoderKL for {_describe(config)}: '
                            f'key {key!r} has no CompVis name')
        old_key, linear = inverse[key]
        out[old_key] = value[:, :, None, None] if linear and value.ndim == 2 else value
    return out


def _unwrap(state_dict: dict) -> dict:
    """The autoencoder's own entries of a state dict, a Lightning checkpoint or a whole Stable Diffusion model."""
    if isinstance(state_dict.get('state_dict'), dict):
        state_dict = state_dict['state_dict']
    prefix = 'first_stage_model.'
    if any(key.startswith(prefix) for key in state_dict):
        state_dict = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
    # An autoencoder training checkpoint also holds its loss (LPIPS, discriminator), which is no part of the model.
    return {key: value for key, value in state_dict.items() if not key.startswith('loss.')}


def _load_compvis(path: str, config, device, dtype) -> AutoencoderKL:
    state_dict = load_state_file(path)
    if not isinstance(state_dict, dict):
        raise UserError(f'{path} does not hold a state dict')
    config = _full_config(config)
    compvis = _unwrap(state_dict)
    try:
        state_dict = compvis_to_diffusers(compvis, config)
    except UserError as exc:
        raise UserError(f'{path}: {exc}') from None
    with torch.device('meta'):
        vae = AutoencoderKL(**config)
    names = {new: old for old, (new, _) in _key_table(config).items()}
    for key, tensor in vae.state_dict().items():
        if key not in state_dict:
            raise UserError(f'{path} does not fit the Stable Diffusion autoencoder ({_describe(config)}): '
                            f'key {names.get(key, key)!r} is missing')
        if state_dict[key].shape != tensor.shape:
            raise UserError(f'{path} does not fit the Stable Diffusion autoencoder ({_describe(config)}): '
                            f'{names.get(key, key)!r} has shape {tuple(state_dict[key].shape)}, '
                            f'expected {tuple(tensor.shape)}')
    for key in state_dict:
        if key not in vae.state_dict():
            raise UserError(f'{path} does not fit the Stable Diffusion autoencoder ({_describe(config)}): '
                            f'unexpected key {names.get(key, key)!r}')
    state_dict = {key: value.to(device=device, dtype=dtype) for key, value in state_dict.items()}
    vae.load_state_dict(state_dict, strict=True, assign=True)
    return vae


def _load_diffusers(path: str, name: str, dtype):
    try:
        return _diffusers_class(name).from_pretrained(path, local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f'cannot load the diffusers {name} in {path}: {message}') from None


def load_autoencoder(path: str, device='cpu', dtype=torch.float32, config=None) -> 'FrozenAutoencoder':
    """The frozen autoencoder of a diffusers folder (its class from its config.json) or of a CompVis-format weights
    file (.pth, .ckpt, .safetensors; ``config`` is its ``AutoencoderKL`` config, default ``SD_CONFIG``)."""
    fmt = autoencoder_format(path, config)
    if os.path.isdir(path):
        vae = _load_diffusers(path, fmt.autoencoder, dtype).to(device)
    else:
        vae = _load_compvis(path, SD_CONFIG if config is None else config, device, dtype)
    return FrozenAutoencoder(vae, fmt)


class FrozenAutoencoder(torch.nn.Module):
    """A diffusers autoencoder in eval mode without gradients, speaking in scaled latents.

    images: (B, 3, H, W) in [-1, 1]; features (what a feature store holds, ``format.stored``): moments
    (B, 2C, H / f, W / f), mean and log-variance stacked on channels, or deterministic codes (B, C, H / f, W / f);
    latents: (B, C, H / f, W / f) = (z - shift) * scale. ``format`` (a LatentFormat) gives C, f, scale and shift.
    """

    def __init__(self, vae, fmt: LatentFormat):
        super().__init__()
        self.vae = vae
        self.format = fmt
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True):
        """Stays in eval mode: the autoencoder is never trained here."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @torch.no_grad()
    def encode_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> what a feature store holds: moments (B, 2C, h, w) or codes (B, C, h, w)."""
        images = images.to(device=self.device, dtype=self.dtype)
        return AUTOENCODERS[self.format.autoencoder].encode(self.vae, images)

    @torch.no_grad()
    def to_latents(self, features: torch.Tensor, generator: torch.Generator = None) -> torch.Tensor:
        """Features -> (B, C, h, w) latents (z - shift) * scale, z drawn from moments with ``generator``."""
        return latents_from_features(features, self.format, generator)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, C, h, w) latents (sampled from a Gaussian encoder)."""
        return self.to_latents(self.encode_features(images), generator)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = None) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, 3, H, W) images in about [-1, 1] from z = latents / scale + shift,
        ``batch_size`` at a time."""
        z = latents.to(device=self.device, dtype=self.dtype) / self.format.scale + self.format.shift
        if batch_size is None or batch_size >= len(z):
            return self.vae.decode(z).sample
        if batch_size < 1:
            raise UserError(f'decode batch_size must be at least 1, got {batch_size}')
        return torch.cat([self.vae.decode(chunk).sample for chunk in z.split(batch_size)])
