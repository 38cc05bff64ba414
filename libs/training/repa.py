"""Representation alignment (REPA; Yu et al. 2024, "Representation Alignment for Generation: Training Diffusion
Transformers Is Easier Than You Think", arXiv 2410.06940) as a training option of every ViT backbone.

The image tokens h of block ``config.repa.depth`` of the backbone (counted from 1 in execution order: U-ViT's in-,
mid- and out-blocks, DiT's and GenViT's blocks; time, label, text and class tokens left out; libs/nets/protocol.py)
go through a projector MLP (Linear, SiLU, Linear, SiLU, Linear; hidden width ``projector_dim``, REPA's 2048) to the
width of a frozen encoder's patch tokens y (libs/latent/vision_encoders.py: DINOv2, CLIP, the digits' encoder) of the
same clean images, and the training loss gains

    weight * mean over the batch and the tokens of  -cos(projector(h_n), y_n)

(REPA's ``proj_coeff`` 0.5 and ``encoder_depth`` 8 of SiT-XL's 28 blocks; its loss.py). The token grids are matched
by resizing the encoder's input to ``grid * patch_size`` (REPA's 224 px for DINOv2-B/14 and 16 x 16 tokens); an
encoder whose positions fit one grid only (the digits' encoder) must meet a backbone with that grid.

What stays as it was: the tokens come from the training forward itself (``forward_with_tokens``, no second pass),
inside the module accelerate wraps (``AlignedNet``: the backbone and the projector), so DDP sees the projector's
gradients; the projector is in the optimiser (after the backbone's parameters) and under gradient clipping, as in
REPA, whose projectors are part of its SiT. It is saved in the checkpoint as ``repa_projector.pth`` (plain tensors)
and restored on resume; ``nnet.pth`` and ``nnet_ema.pth`` hold the backbone alone, with the release's keys, and
sampling never needs the projector. REPA wraps any objective (``diffusion``, ``hybrid``) and any framework.
"""
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from libs.errors import UserError
from libs.latent.vision_encoders import load_encoder
from libs.nets import check_state_dict
from libs.nets.protocol import check_token_depth
from libs.rng import seeded

PROJECTOR_FILE = 'repa_projector.pth'


def projector_mlp(dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """REPA's projector: (..., dim) -> (..., out_dim) through Linear, SiLU, Linear, SiLU, Linear of hidden width
    ``hidden``; Xavier-uniform weights and zero biases (REPA initialises its SiT's Linears, projectors included, so)."""
    mlp = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                        nn.Linear(hidden, out_dim))
    for layer in mlp:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return mlp


def alignment_loss(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, L, K) projected tokens and (B, L, K) encoder tokens -> (B,) float32: minus the cosine similarity of each
    token pair, averaged over the L tokens (REPA's proj_loss per sample)."""
    if projected.shape != target.shape:
        raise ValueError(f'projected tokens {tuple(projected.shape)} and encoder tokens {tuple(target.shape)} differ')
    cosine = (F.normalize(projected.float(), dim=-1) * F.normalize(target.float(), dim=-1)).sum(dim=-1)
    return -cosine.mean(dim=1)


class AlignedNet(nn.Module):
    """The backbone with REPA's projector, called like the backbone: ``forward(x, model_time, **cond)`` runs
    ``nnet.forward_with_tokens`` once, returns the backbone's output and appends the projected tokens of block
    ``depth`` (B, L, K) to ``recorded``, which the objective reads after the call. ``classify`` and the protocol's
    declarations (``classifies``, ``condition``, ...) are the backbone's, so any objective takes it for one."""

    def __init__(self, nnet: nn.Module, projector: nn.Sequential, depth: int):
        super().__init__()
        self.nnet = nnet  # registered first: the optimiser lists the backbone's parameters, then the projector's
        self.projector = projector
        self.depth = depth
        self.recorded = []

    def forward(self, x, model_time, **cond):
        output, tokens = self.nnet.forward_with_tokens(x, model_time, self.depth, **cond)
        self.recorded.append(self.projector(tokens))
        return output

    def classify(self, x):
        return self.nnet.classify(x)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)   # parameters, buffers and submodules (the backbone, the projector)
        except AttributeError:
            if name == 'nnet':
                raise
            return getattr(self.nnet, name)


class Repa:
    """An objective (libs/training/objectives.py) plus REPA's alignment term; see the module docstring.

    ``encoder``: a FrozenEncoder on the training device; ``image_channels``: of the images the loader gives it;
    ``autocast``: the context the encoder runs in (accelerate's, so it runs in the run's mixed precision as REPA's
    does). One Repa serves one training module."""

    needs_images = True
    files = (PROJECTOR_FILE,)

    def __init__(self, inner, cfg, encoder, image_channels: int, autocast=contextlib.nullcontext):
        self.inner = inner
        self.weight = float(cfg.weight)
        self.depth = cfg.depth
        self.projector_dim = int(cfg.projector_dim)
        self.encoder = encoder
        self.image_channels = image_channels
        self.autocast = autocast
        self.aligned = None
        self.grid = None

    def training_module(self, nnet):
        depth = check_token_depth(nnet, self.depth)
        self.grid = tuple(nnet.token_grid)
        self.encoder.check_grid(self.grid, self.image_channels, f'{type(nnet).__name__} (config.nnet)')
        projector = projector_mlp(nnet.token_dim, self.projector_dim, self.encoder.dim)
        projector.to(next(nnet.parameters()).device)
        self.aligned = AlignedNet(nnet, projector, depth)
        return self.inner.training_module(self.aligned)

    def backbone(self, module):
        return self.inner.backbone(module).nnet

    def target(self, images: torch.Tensor) -> torch.Tensor:
        """(B, L, K) encoder tokens of the batch's clean images (B, C, H, W) in [-1, 1]."""
        with self.autocast():
            return self.encoder.tokens(images, self.grid)

    def __call__(self, module, x, cond, labels, images=None):
        if images is None:
            raise ValueError('REPA needs the images of the batch (the Trainer gives them when needs_images is set)')
        target = self.target(images)
        self.aligned.recorded.clear()
        loss, metrics = self.inner(module, x, cond, labels)
        projected, self.aligned.recorded = self.aligned.recorded, []
        if not projected:
            raise RuntimeError('the objective did not call the aligned network')
        alignment = torch.stack([alignment_loss(p, target).mean() for p in projected]).mean()
        return loss + self.weight * alignment, {**metrics, 'diffusion_loss': loss.detach(),
                                                'repa_loss': alignment.detach()}

    def state_files(self, module) -> dict:
        """{file name: state dict} the checkpoint holds for this objective: the projector, as plain CPU tensors."""
        projector = self.inner.backbone(module).projector
        return {PROJECTOR_FILE: {k: v.detach().cpu() for k, v in projector.state_dict().items()}}

    def load_state_files(self, module, contents: dict, ckpt: str) -> None:
        """The projector from ``contents`` (read_checkpoint's, with weights_only=True), checked key by key."""
        projector, state = self.inner.backbone(module).projector, contents[PROJECTOR_FILE]
        check_state_dict(projector, state, f'{ckpt}/{PROJECTOR_FILE}')
        projector.load_state_dict(state)


def with_repa(objective, config, device, image_channels: int, autocast=contextlib.nullcontext):
    """``objective`` with REPA's alignment term when ``config.repa.weight`` > 0, else ``objective`` itself. The encoder
    is loaded (or, for the digits, trained once) in RNG streams of its own, so the run's streams do not move."""
    cfg = config.repa
    if not cfg.weight:
        return objective
    if cfg.weight < 0:
        raise UserError(f'config.repa.weight={cfg.weight} is negative; 0 switches REPA off, REPA uses 0.5')
    if cfg.projector_dim < 1:
        raise UserError(f'config.repa.projector_dim={cfg.projector_dim} must be positive (REPA: 2048)')
    with seeded(config.seed, device):
        encoder = load_encoder(cfg.encoder, cfg.encoder_path, device)
    return Repa(objective, cfg, encoder, image_channels, autocast)
