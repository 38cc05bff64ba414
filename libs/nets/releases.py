"""The releases' own networks, imported at run time from a clone, for side-by-side checks (scripts/benchmark.py
--against): U-ViT's ``libs/uvit.py`` (github.com/baofff/U-ViT) and DiT's ``models.py``
(github.com/facebookresearch/DiT). Nothing of theirs is vendored; a clone is read where the user keeps it.

Our backbones keep the releases' parameter names, so a release's network can share our network's very tensors
(``share_weights``): one set of weights that both train, with one optimizer.
"""
import contextlib
import importlib
import inspect
import os
import sys
import types
import zlib
from typing import NamedTuple

import torch

from libs.errors import UserError
from libs.nets import check_state_dict


class Release(NamedTuple):
    file: str          # the network's file, relative to the clone
    name: str          # its class
    repository: str
    needs: str         # what it imports that this suite does not need


RELEASES = {  # config.nnet.name -> the release of that backbone
    'uvit': Release('libs/uvit.py', 'UViT', 'github.com/baofff/U-ViT', 'einops'),
    'dit': Release('models.py', 'DiT', 'github.com/facebookresearch/DiT', 'timm'),
}
OURS_ONLY = ('attention_backend',)  # constructor arguments of ours that the releases lack and that touch no weight


def load_release(clone: str, nnet_name: str):
    """The release's network class from its clone, imported as a package of its own (U-ViT's ``libs`` would clash
    with ours; its relative imports still work); what it prints on import goes to stderr."""
    if nnet_name not in RELEASES:
        raise UserError(f"--against compares U-ViT and DiT configs; config.nnet.name is {nnet_name!r}")
    release = RELEASES[nnet_name]
    path = os.path.abspath(os.path.join(clone, release.file))
    if not os.path.isfile(path):
        raise UserError(f'--against={clone}: no {release.file} there; for config.nnet.name={nnet_name!r} it is a '
                        f'clone of {release.repository}')
    package = f'release_{zlib.crc32(path.encode()):08x}'
    if package not in sys.modules:
        module = types.ModuleType(package)
        module.__path__ = [os.path.dirname(path)]
        sys.modules[package] = module
    try:
        with contextlib.redirect_stdout(sys.stderr):
            module = importlib.import_module(f'{package}.{os.path.splitext(os.path.basename(path))[0]}')
    except ImportError as exc:
        raise UserError(f'cannot import {os.path.join(clone, release.file)}: {exc} (the release needs '
                        f'{release.needs}: pip install {release.needs})') from None
    return getattr(module, release.name)


def share_weights(source: torch.nn.Module, target: torch.nn.Module, where: str) -> None:
    """Make ``target``'s parameters and buffers the very tensors of ``source`` (the same names and shapes, checked
    first: UserError naming the first key that differs, with ``where`` for the target)."""
    check_state_dict(target, source.state_dict(), where)
    for kind, named in (('_parameters', source.named_parameters()), ('_buffers', source.named_buffers())):
        for name, tensor in named:
            owner, _, leaf = name.rpartition('.')
            getattr(target.get_submodule(owner), kind)[leaf] = tensor


def release_network(nnet_cfg, clone: str, ours: torch.nn.Module) -> torch.nn.Module:
    """The release's network for ``nnet_cfg`` (config.nnet), built on the meta device and then given ``ours``'s
    tensors. UserError when the release cannot build that config."""
    cls = load_release(clone, nnet_cfg['name'])
    accepted = inspect.signature(cls).parameters
    kwargs = {key: value for key, value in nnet_cfg.items() if key != 'name' and key not in OURS_ONLY}
    missing = [key for key in kwargs if key not in accepted]
    if missing:
        raise UserError(f"the release's {cls.__name__} has no {', '.join(missing)} (config.nnet): compare a config "
                        f'it can build')
    with torch.device('meta'):  # no memory: each tensor is ours
        theirs = cls(**kwargs)
    share_weights(ours, theirs, f"the release's {cls.__name__} ({clone})")
    shared = {id(tensor) for tensor in [*ours.parameters(), *ours.buffers()]}
    left = [name for name, tensor in [*theirs.named_parameters(), *theirs.named_buffers()] if id(tensor) not in shared]
    if left:
        raise UserError(f"the release's {cls.__name__} has tensors ours lacks: {', '.join(left[:3])}")
    return theirs
