"""Backbone registry, construction from a config, and strict weight loading with readable errors."""
import os

import torch

from libs.errors import UserError
from libs.fileio import load_state_file
from libs.nets.dit import DiT
from libs.nets.genvit import GenViT
from libs.nets.unet import UNet
from libs.nets.uvit import UViT
from libs.nets.uvit_t2i import UViT as UViTT2I

NNETS = {
    'uvit': UViT,
    'uvit_t2i': UViTT2I,
    'genvit': GenViT,
    'unet': UNet,
    'dit': DiT,
}

# Prefixes that wrappers add to parameter names (DistributedDataParallel, torch.compile).
_WRAPPER_PREFIXES = ('module.', '_orig_mod.')


def build_nnet(cfg) -> torch.nn.Module:
    """Build the backbone named ``cfg.name`` with the other entries of ``cfg`` as constructor arguments."""
    kwargs = dict(cfg)
    name = kwargs.pop('name', None)
    if name not in NNETS:
        raise UserError(f"unknown nnet name {name!r} in config.nnet; known: {', '.join(NNETS)}")
    try:
        return NNETS[name](**kwargs)
    except TypeError as exc:
        raise UserError(f'config.nnet does not fit {NNETS[name].__name__}: {exc}') from None


def count_parameters(nnet: torch.nn.Module) -> int:
    return sum(p.numel() for p in nnet.parameters())


def strip_wrapper_prefixes(state_dict: dict) -> dict:
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def check_state_dict(nnet: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Raise UserError naming the first key that is missing, unexpected or of the wrong shape."""
    expected = nnet.state_dict()
    for key, tensor in expected.items():
        if key not in state_dict:
            raise UserError(f'{source} does not fit the model: key {key!r} is missing '
                            f'(does config.nnet match the checkpoint?)')
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise UserError(f'{source} does not fit the model: {key!r} has shape {tuple(state_dict[key].shape)}, '
                            f'the model expects {tuple(tensor.shape)} (does config.nnet match the checkpoint?)')
    for key in state_dict:
        if key not in expected:
            raise UserError(f'{source} does not fit the model: unexpected key {key!r} '
                            f'(does config.nnet match the checkpoint?)')


def resolve_nnet_path(path: str, ema: bool = True) -> str:
    """A weights file, or a training checkpoint directory (then its nnet_ema.pth, or nnet.pth with ema=False)."""
    if os.path.isdir(path):
        return os.path.join(path, 'nnet_ema.pth' if ema else 'nnet.pth')
    return path


def load_nnet_weights(nnet: torch.nn.Module, path: str, ema: bool = True) -> str:
    """Load weights strictly into ``nnet``; returns the file that was read."""
    path = resolve_nnet_path(path, ema)
    state_dict = load_state_file(path)
    if not isinstance(state_dict, dict):
        raise UserError(f'{path} does not hold a state dict')
    state_dict = strip_wrapper_prefixes(state_dict)
    check_state_dict(nnet, state_dict, path)
    nnet.load_state_dict(state_dict, strict=True)
    return path
