"""Frozen vision encoders whose patch tokens are REPA's alignment targets (libs/training/repa.py), one registry.

``ENCODERS`` maps ``config.repa.encoder`` to an ``EncoderEntry``: how to load the network and how to prepare its
input. ``load_encoder(name, path, device)`` gives a ``FrozenEncoder`` whose ``tokens(images, grid)`` turns a batch of
images into ``(B, h * w, dim)`` float32 patch tokens on the backbone's ``grid`` (h, w):

1. images ``(B, C, H, W)`` in [-1, 1] (the suite's convention; 8-bit pixels v map to v / 127.5 - 1) become
   [0, 1], as REPA's ``x / 255``; grey images are repeated to RGB for an RGB encoder;
2. they are resized (bicubic, as REPA's ``preprocess_raw_image``) to ``grid * patch_size``, so the encoder's token
   grid is the backbone's: REPA's 224 x 224 for DINOv2-B/14 at 256 px (SiT's 16 x 16 tokens of 32 x 32 latents);
   an image already of that size is not resampled;
3. they are normalised with the entry's mean and std (ImageNet's for DINOv2, OpenAI's for CLIP). REPA normalises
   before resizing for DINOv2 and after for CLIP; bicubic weights sum to one, so the order changes only rounding;
4. the first ``prefix_tokens`` of the output are dropped (the class token, and DINOv2's register tokens).

The tokens are REPA's: DINOv2's ``x_norm_patchtokens`` (transformers' ``last_hidden_state``, after the final
LayerNorm) and CLIP's transformer output before ``ln_post`` (transformers' ``last_hidden_state`` too). One known
difference: transformers resamples DINOv2's 37 x 37 positions to the grid at every call (bicubic), REPA once at
load time with timm's antialiased bicubic; at 16 x 16 the two differ slightly.

Weights are read from a local folder (a Hugging Face download, ``from_pretrained(path, local_files_only=True)``) and
never downloaded; a missing folder is one error line naming it and its default place under assets/. The digits'
encoder (libs/latent/digits_encoder.py) is trained once and cached instead. Another frozen encoder is one entry.
"""
import dataclasses
import os
from typing import Callable

import torch
import torch.nn.functional as F

from libs.errors import UserError, first_line
from libs.fileio import check_model_folder
from libs.latent.dinov2 import IMAGENET_MEAN, IMAGENET_STD, REPO_ROOT
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class Loaded:
    """What a loader gives: the network, a function ``run(model, pixels) -> (B, prefix + h * w, dim)``, and its
    geometry: ``patch_size`` (pixels per token side), ``prefix_tokens`` (dropped: class / register tokens), ``dim``,
    ``channels`` and ``grid`` (the only token grid it gives, for learned positions that are not resampled; None:
    any grid)."""
    model: torch.nn.Module
    run: Callable
    patch_size: int
    prefix_tokens: int
    dim: int
    channels: int = 3
    grid: tuple = None


@dataclasses.dataclass(frozen=True)
class EncoderEntry:
    """One kind of encoder: ``load(path) -> Loaded``, the input's ``mean`` and ``std`` per channel (of [0, 1] pixels),
    the ``default_path`` (under the repository root), what goes there (``source``), ``random() -> Loaded``, the same
    architecture with random weights (for timing where the weights are not, as on a GPU machine without them), and
    whether the path is a folder that must exist (``folder``; the digits' cached encoder is trained when missing)."""
    load: Callable
    mean: tuple
    std: tuple
    default_path: str
    source: str
    random: Callable
    folder: bool = True


def _hidden_states(model, pixels):
    return model(pixel_values=pixels).last_hidden_state


def _clip_hidden_states(model, pixels):
    return model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state


def _geometry(model, run, registers: bool) -> Loaded:
    """A transformers vision model's geometry, from its config."""
    config = model.config
    prefix = 1 + (int(getattr(config, 'num_register_tokens', 0)) if registers else 0)
    return Loaded(model, run, int(config.patch_size), prefix, int(config.hidden_size),
                  int(getattr(config, 'num_channels', 3)))


def _transformers_random(class_name: str, run=_hidden_states, registers: bool = False, **architecture):
    """The released architecture of a transformers vision model (its published config values), randomly initialised."""
    def random() -> Loaded:
        import transformers
        cls = getattr(transformers, class_name)
        return _geometry(cls(cls.config_class(**architecture)), run, registers)
    return random


def _transformers_loader(class_name: str, run=_hidden_states, registers: bool = False):
    """A loader of a transformers vision model class from a local folder."""
    def load(path: str) -> Loaded:
        import transformers
        cls = getattr(transformers, class_name)
        verbosity = transformers.utils.logging.get_verbosity()
        transformers.utils.logging.set_verbosity_error()  # a full CLIP folder's text tower is unused, not a problem
        try:
            model, info = cls.from_pretrained(path, local_files_only=True, dtype=torch.float32,
                                              output_loading_info=True)
        finally:
            transformers.utils.logging.set_verbosity(verbosity)
        if info['missing_keys']:  # a frozen encoder with random weights would give targets without meaning
            missing = sorted(info['missing_keys'])
            raise ValueError(f'the folder has no weights for {len(missing)} parameters of {class_name} (first: '
                             f'{missing[0]})')
        return _geometry(model, run, registers)
    return load


def _digits(model) -> Loaded:
    return Loaded(model, lambda m, pixels: m(pixels), model.patch_size, 0, model.dim, model.channels, model.grid)


def _digits_loader(path: str) -> Loaded:
    from libs.latent.digits_encoder import load_digits_encoder
    return _digits(load_digits_encoder(path))


def _digits_random() -> Loaded:
    from libs.latent.digits_encoder import DigitsEncoder
    return _digits(DigitsEncoder())


# The released architectures (their Hugging Face config.json values), for timing with random weights.
DINOV2_B14 = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4, patch_size=14,
                  image_size=518, layerscale_value=1.0)
CLIP_L14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
                image_size=224, projection_dim=768, hidden_act='quick_gelu')


ENCODERS = {
    # REPA's default: DINOv2 ViT-B/14 (facebook/dinov2-base; -small, -large, -giant load the same way)
    'dinov2': EncoderEntry(_transformers_loader('Dinov2Model'), IMAGENET_MEAN, IMAGENET_STD,
                           os.path.join('assets', 'dinov2-vit-b14'), 'facebook/dinov2-base',
                           _transformers_random('Dinov2Model', **DINOV2_B14)),
    'dinov2_reg': EncoderEntry(_transformers_loader('Dinov2WithRegistersModel', registers=True), IMAGENET_MEAN,
                               IMAGENET_STD, os.path.join('assets', 'dinov2-with-registers-vit-b14'),
                               'facebook/dinov2-with-registers-base',
                               _transformers_random('Dinov2WithRegistersModel', registers=True, num_register_tokens=4,
                                                    **DINOV2_B14)),
    # CLIP ViT-L/14's vision tower; the full CLIP folder of the text encoder serves (only the vision tower is read)
    'clip': EncoderEntry(_transformers_loader('CLIPVisionModel', run=_clip_hidden_states), CLIP_MEAN, CLIP_STD,
                         os.path.join('assets', 'clip-vit-large-patch14'), 'openai/clip-vit-large-patch14',
                         _transformers_random('CLIPVisionModel', run=_clip_hidden_states, **CLIP_L14)),
    # the digits: a small self-supervised ViT, not the digit score's classifier (libs/latent/digits_encoder.py)
    'digits': EncoderEntry(_digits_loader, (0.5,), (0.5,), os.path.join('assets', 'digits_encoder.pt'),
                           'trained once by the suite (libs/latent/digits_encoder.py)', _digits_random, folder=False),
}


class FrozenEncoder:
    """A frozen encoder (eval mode, no gradients) and its preprocessing; ``tokens(images, grid)`` (module docstring)."""

    def __init__(self, name: str, entry: EncoderEntry, loaded: Loaded):
        self.name = name
        self.model = loaded.model.eval().requires_grad_(False)
        self.run = loaded.run
        self.patch_size = loaded.patch_size
        self.prefix_tokens = loaded.prefix_tokens
        self.dim = loaded.dim
        self.channels = loaded.channels
        self.grid = tuple(loaded.grid) if loaded.grid is not None else None
        if len(entry.mean) != self.channels or len(entry.std) != self.channels:
            raise ValueError(f'encoder {name!r}: {len(entry.mean)} means and {len(entry.std)} stds for '
                             f'{self.channels} channels')
        self.mean = torch.tensor(entry.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(entry.std, dtype=torch.float32).view(1, -1, 1, 1)

    def to(self, device):
        self.model.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def check_grid(self, grid, channels: int, what: str = 'the backbone') -> None:
        """UserError when this encoder cannot give tokens on ``grid`` (h, w) for images of ``channels`` channels."""
        grid = tuple(grid)
        if self.grid is not None and grid != self.grid:
            raise UserError(f"REPA encoder {self.name!r} gives a {self.grid[0]}x{self.grid[1]} grid of patch tokens "
                            f"only, but the image tokens of {what} form a {grid[0]}x{grid[1]} grid: choose "
                            f"config.nnet's patch size so that they match, or another config.repa.encoder")
        if channels != self.channels and not (channels == 1 and self.channels == 3):
            raise UserError(f'REPA encoder {self.name!r} takes {self.channels}-channel images, the data have '
                            f'{channels} channels: choose another config.repa.encoder')

    def input_size(self, grid) -> tuple:
        """(H, W) of the encoder's input that gives ``grid`` (h, w) patch tokens."""
        return grid[0] * self.patch_size, grid[1] * self.patch_size

    def preprocess(self, images: torch.Tensor, grid) -> torch.Tensor:
        """(B, C, H, W) images in [-1, 1] -> the encoder's normalised input at ``input_size(grid)``, float32."""
        x = (images.float() + 1) / 2
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        size = self.input_size(grid)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode='bicubic', align_corners=False)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    @torch.no_grad()
    def tokens(self, images: torch.Tensor, grid) -> torch.Tensor:
        """(B, h * w, dim) float32 patch tokens of ``images`` (B, C, H, W) in [-1, 1] on ``grid`` (h, w)."""
        hidden = self.run(self.model, self.preprocess(images, grid))
        tokens = hidden[:, self.prefix_tokens:]
        if tokens.shape[1] != grid[0] * grid[1]:
            raise ValueError(f'encoder {self.name!r} gave {tokens.shape[1]} patch tokens for a '
                             f'{grid[0]}x{grid[1]} grid')
        return tokens.float()


def encoder_entry(name: str) -> EncoderEntry:
    if name not in ENCODERS:
        raise UserError(f"unknown REPA encoder {name!r} in config.repa.encoder; known: {', '.join(ENCODERS)}")
    return ENCODERS[name]


def random_encoder(name: str, device='cpu') -> FrozenEncoder:
    """The encoder ``name`` with its released architecture and random weights: for timing, never for training."""
    entry = encoder_entry(name)
    return FrozenEncoder(name, entry, entry.random()).to(device)


def encoder_path(name: str, path: str = '') -> str:
    """Where encoder ``name``'s weights are read from: ``path``, or its default place under assets/."""
    return os.path.normpath(path or os.path.join(REPO_ROOT, encoder_entry(name).default_path))


def encoder_available(name: str, path: str = '') -> bool:
    """Whether encoder ``name``'s weights (its folder, or the digits' cache file) are there."""
    return os.path.exists(encoder_path(name, path))


def load_encoder(name: str, path: str = '', device='cpu') -> FrozenEncoder:
    """The frozen encoder ``name`` of ``ENCODERS`` from ``path`` ('' : its default place under assets/)."""
    entry = encoder_entry(name)
    path = encoder_path(name, path)
    if entry.folder:
        check_model_folder(path, 'REPA encoder', f'put the Hugging Face folder of {entry.source} (config.json and '
                           f'model.safetensors) there, or set config.repa.encoder_path (default place '
                           f'{entry.default_path}/, see assets/README.md)')
    try:
        loaded = entry.load(path)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f'cannot load REPA encoder {name!r} from {path}: {first_line(exc)}') from None
    return FrozenEncoder(name, entry, loaded).to(device)
