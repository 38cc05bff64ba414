"""Regional compilation: torch.compile on each repeated block of a backbone instead of on the whole network.

The blocks of a ViT backbone are instances of one class, so one compiled graph serves them all (torch >= 2.5
traces a module's parameters as inputs): the compile time is that of one block, not of the whole depth, for about the
same speed. ``nn.Module.compile`` compiles a module in place, so parameter names, ``state_dict`` keys and
checkpoints stay the release's (no ``_orig_mod.`` prefix).

A backbone names its repeated blocks with ``repeated_blocks()`` (libs/nets/protocol.py); one that names none is
compiled whole, in place.
"""
import logging

import torch

logger = logging.getLogger(__name__)

BACKEND = 'inductor'  # torch.compile's default backend; the tests use 'aot_eager', which generates no code


def compile_regions(nnet: torch.nn.Module, backend: str = None) -> int:
    """Compile each of ``nnet.repeated_blocks()`` in place (or ``nnet`` itself when it names none); returns how many
    modules were compiled. Without ``nn.Module.compile`` (torch < 2.2) one warning and nothing is compiled."""
    if not hasattr(torch.nn.Module, 'compile'):
        logger.warning('torch %s has no nn.Module.compile (torch >= 2.2): the network runs uncompiled',
                       torch.__version__)
        return 0
    blocks = list(nnet.repeated_blocks()) if hasattr(nnet, 'repeated_blocks') else []
    for module in blocks or [nnet]:
        module.compile(backend=backend or BACKEND)
    return len(blocks) or 1


def compiled_modules(nnet: torch.nn.Module) -> list:
    """Names of the modules of ``nnet`` compiled in place ('' for ``nnet`` itself)."""
    return [name for name, module in nnet.named_modules() if getattr(module, '_compiled_call_impl', None) is not None]
