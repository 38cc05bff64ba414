"""Regional compilation: torch.compile on each repeated block of a backbone instead of on the whole network.

The blocks of a ViT backbone are instances of one class, so one compiled graph serves them all (torch >= 2.5
traces a module's parameters as inputs): the compile time is that of one block, not of the whole depth, for about the
same speed. ``nn.Module.compile`` compiles a module in place, so parameter names, ``state_dict`` keys and
checkpoints stay the release's (no ``_orig_mod.`` prefix).

A backbone names its repeated blocks with ``repeated_blocks()`` (libs/nets/protocol.py); one that names none is
compiled whole, in place.
"""
import logging
import re

import torch

logger = logging.getLogger(__name__)

BACKEND = 'inductor'  # torch.compile's default backend; the tests use 'aot_eager', which generates no code


def blocks_share_graphs() -> bool:
    """Whether dynamo traces a module's parameters as graph inputs (torch >= 2.5), so that one compiled graph serves
    every block of a kind; before, each block was a compilation of its own, and past dynamo's limit of 8 the rest
    ran uncompiled."""
    version = re.match(r'(\d+)\.(\d+)', str(torch.__version__))
    return version is not None and tuple(int(v) for v in version.groups()) >= (2, 5)


def compile_regions(nnet: torch.nn.Module, backend: str = None, whole: bool = False) -> int:
    """Compile each of ``nnet.repeated_blocks()`` in place (``nnet`` itself when ``whole``, when it names no blocks,
    or when blocks cannot share graphs: one warning); returns how many modules were compiled. Without
    ``nn.Module.compile`` (torch < 2.2) one warning and nothing is compiled."""
    if not hasattr(torch.nn.Module, 'compile'):
        logger.warning('torch %s has no nn.Module.compile (torch >= 2.2): the network runs uncompiled',
                       torch.__version__)
        return 0
    blocks = list(nnet.repeated_blocks()) if hasattr(nnet, 'repeated_blocks') and not whole else []
    if blocks and not blocks_share_graphs():
        logger.warning('torch %s compiles each block on its own (regional compilation needs torch >= 2.5): the '
                       'network is compiled whole', torch.__version__)
        blocks = []
    for module in blocks or [nnet]:
        module.compile(backend=backend or BACKEND)
    return len(blocks) or 1


def compile_for_training(backbone: torch.nn.Module, module: torch.nn.Module, mode: str) -> int:
    """``train.compile``'s mode on a training step: 'full' compiles ``module``, the module the step calls (an
    objective's module, REPA's and the hybrid objective's, calls into the backbone past its ``__call__``, which a
    compiled backbone alone would leave eager); otherwise each of the backbone's blocks."""
    whole = mode == 'full'
    return compile_regions(module if whole else backbone, whole=whole)


def compiled_modules(nnet: torch.nn.Module) -> list:
    """Names of the modules of ``nnet`` compiled in place ('' for ``nnet`` itself)."""
    return [name for name, module in nnet.named_modules() if getattr(module, '_compiled_call_impl', None) is not None]
