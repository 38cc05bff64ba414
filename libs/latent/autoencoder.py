"""The Stable Diffusion autoencoder (KL-f8) that maps images to the latents of latent U-ViT, frozen.

The network is ``diffusers.AutoencoderKL``. Weights come either from a diffusers folder (``config.json`` and
``diffusion_pytorch_model.safetensors`` or ``.bin``, e.g. sd-vae-ft-ema) or from the original CompVis / Stable
Diffusion state dict that the U-ViT release ships as ``assets/stable-diffusion/autoencoder_kl.pth``;
``compvis_to_diffusers`` and ``diffusers_to_compvis`` translate between the two key layouts.

Latents are ``scale_factor * z`` with ``z`` drawn from the encoder's Gaussian, as the released U-ViT models expect.
"""
import os

import torch
from diffusers import AutoencoderKL

from libs.errors import UserError
from libs.fileio import load_state_file
from libs.latent.moments import latents_from_moments

SCALE_FACTOR = 0.18215

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


def _load_diffusers(path: str, dtype) -> AutoencoderKL:
    if not os.path.isfile(os.path.join(path, 'config.json')):
        raise UserError(f'{path} is not a diffusers AutoencoderKL folder: config.json is missing')
    try:
        return AutoencoderKL.from_pretrained(path, local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f'cannot load the diffusers AutoencoderKL in {path}: {message}') from None


def load_autoencoder(path: str, device='cpu', dtype=torch.float32, config=None) -> 'FrozenAutoencoder':
    """The frozen autoencoder from a diffusers folder or a CompVis-format weights file (.pth, .ckpt, .safetensors).

    ``config`` is the ``AutoencoderKL`` config of a CompVis-format file (default ``SD_CONFIG``, Stable Diffusion 1);
    a diffusers folder brings its own.
    """
    if not os.path.exists(path):
        raise UserError(f"Stable Diffusion autoencoder not found at {path}: put the U-ViT release's "
                        f"autoencoder_kl.pth there, or a diffusers AutoencoderKL folder "
                        f"(config.json + diffusion_pytorch_model.safetensors)")
    if os.path.isdir(path):
        vae = _load_diffusers(path, dtype).to(device)
    else:
        vae = _load_compvis(path, SD_CONFIG if config is None else config, device, dtype)
    return FrozenAutoencoder(vae)


class FrozenAutoencoder(torch.nn.Module):
    """``AutoencoderKL`` in eval mode without gradients, speaking in scaled latents.

    images: (B, 3, H, W) in [-1, 1]; moments: (B, 2 C, H / f, W / f), mean and log-variance stacked on channels;
    latents: (B, C, H / f, W / f) = scale_factor * z. With the Stable Diffusion weights C = 4 and f = 8.
    """

    def __init__(self, vae: AutoencoderKL, scale_factor: float = SCALE_FACTOR):
        super().__init__()
        self.vae = vae
        self.scale_factor = scale_factor
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
    def encode_moments(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 2 C, h, w): mean and log-variance of the latent Gaussian."""
        images = images.to(device=self.device, dtype=self.dtype)
        return self.vae.encode(images).latent_dist.parameters

    @torch.no_grad()
    def sample(self, moments: torch.Tensor, generator: torch.Generator = None) -> torch.Tensor:
        """(B, 2 C, h, w) moments -> (B, C, h, w) scaled latents, scale_factor * (mean + std * noise)."""
        return latents_from_moments(moments, self.scale_factor, generator)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, C, h, w) scaled latents, sampled."""
        return self.sample(self.encode_moments(images), generator)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = None) -> torch.Tensor:
        """(B, C, h, w) scaled latents -> (B, 3, H, W) images in about [-1, 1], ``batch_size`` at a time."""
        z = latents.to(device=self.device, dtype=self.dtype) / self.scale_factor
        if batch_size is None or batch_size >= len(z):
            return self.vae.decode(z).sample
        if batch_size < 1:
            raise UserError(f'decode batch_size must be at least 1, got {batch_size}')
        return torch.cat([self.vae.decode(chunk).sample for chunk in z.split(batch_size)])
