"""Transformer building blocks shared by the ViT backbones.

Parameter names (``norm1``, ``attn.qkv``, ``mlp.fc1``, ``skip_linear``, ...) follow the U-ViT release so that its
checkpoints load with ``strict=True``.
"""
import math

import einops
import torch
import torch.nn as nn
import torch.utils.checkpoint

from libs.nets.attention import attention, check_backend


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) possibly fractional timesteps -> (B, dim) float32, [cos | sin] halves."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def per_sample(value, x: torch.Tensor, name: str) -> torch.Tensor:
    """A per-sample conditioning input (times, noise levels) as a (B,) tensor on x's device; a scalar is broadcast."""
    value = torch.as_tensor(value, device=x.device)
    if value.ndim == 0:
        value = value.expand(x.shape[0])
    if value.shape != (x.shape[0],):
        raise ValueError(f'{name} has shape {tuple(value.shape)}; expected ({x.shape[0]},) or a scalar')
    return value


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C) with patches in row-major order."""
    return einops.rearrange(imgs, 'B C (h p1) (w p2) -> B (h w) (p1 p2 C)', p1=patch_size, p2=patch_size)


def unpatchify(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, L, p*p*C) -> (B, C, H, W); inverse of ``patchify`` for square images."""
    patch_size = int(round((x.shape[2] // channels) ** 0.5))
    h = int(round(x.shape[1] ** 0.5))
    if h * h != x.shape[1] or patch_size ** 2 * channels != x.shape[2]:
        raise ValueError(f'cannot unpatchify tokens of shape {tuple(x.shape)} into {channels} channels')
    return einops.rearrange(x, 'B (h w) (p1 p2 C) -> B C (h p1) (w p2)', h=h, p1=patch_size, p2=patch_size)


def logits_from_patches(x: torch.Tensor, channels: int, num_states: int) -> torch.Tensor:
    """(B, L, p*p*C*S) decoded tokens -> (B, C, H, W, S) logits over each pixel's S values (the discrete heads)."""
    out = unpatchify(x, channels * num_states)
    return out.view(out.shape[0], channels, num_states, *out.shape[2:]).permute(0, 1, 3, 4, 2)


def alias(name: str, value, default, seed_name: str, seed_value):
    """A constructor argument that may come under the discrete seed's name instead: ``seed_value`` when given
    (then ``value`` must be its default or agree)."""
    if seed_value is None:
        return value
    if value != default and value != seed_value:
        raise ValueError(f'{name}={value!r} and its alias {seed_name}={seed_value!r} disagree')
    return seed_value


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, L, D) tokens with one strided convolution."""

    def __init__(self, patch_size: int, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        if x.shape[2] % self.patch_size or x.shape[3] % self.patch_size:
            raise ValueError(f'image size {tuple(x.shape[2:])} is not divisible by patch size {self.patch_size}')
        return self.proj(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """Two linear layers with GELU between them (``approximate='tanh'``: DiT's GELU)."""

    def __init__(self, in_features: int, hidden_features: int, approximate: str = 'none'):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention over (B, L, D) tokens; the kernel is chosen by ``backend``. ``dropout``: on the
    branch's output while training (the discrete seed's ``dropout_attention``; no parameters)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_scale: float = None,
                 backend: str = 'sdpa', dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.backend = check_backend(backend)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x):
        q, k, v = einops.rearrange(self.qkv(x), 'B L (K H D) -> K B H L D', K=3, H=self.num_heads)
        x = attention(q, k, v, self.backend, self.scale)
        x = self.proj(einops.rearrange(x, 'B H L D -> B L (H D)'))
        return nn.functional.dropout(x, self.dropout, self.training) if self.dropout else x


class JoinSkip(torch.autograd.Function):
    """``torch.cat([x, skip], dim=-1)`` whose backward hands each input a compact gradient of its own.

    The gradient of a concatenation is two slices of one (B, L, 2D) tensor. The slice for ``skip`` (a U-ViT's long
    skip connection) is used only when the backward reaches the shallow block that made it, and until then it keeps
    the whole (B, L, 2D) tensor alive: with non-reentrant gradient checkpointing, one such tensor per deep block.
    Compact copies let it go at once. U-ViT-H/2 at batch 128 with checkpointing (fp32, counted on the meta device):
    the backward's peak beyond the weights falls from 12.36 to 10.66 GiB, below the 10.80 GiB of the release's
    reentrant checkpointing, whose gradient accumulation copies the slices too (BENCHMARKS.md). The forward and the
    gradients are the same numbers."""

    @staticmethod
    def forward(x, skip):
        return torch.cat([x, skip], dim=-1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.split = inputs[0].shape[-1]

    @staticmethod
    def backward(ctx, grad):
        return grad[..., :ctx.split].contiguous(), grad[..., ctx.split:].contiguous()


class Block(nn.Module):
    """Pre-norm transformer block; with ``skip`` it first fuses a long skip connection: Linear([x, skip])."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 qk_scale: float = None, skip: bool = False, use_checkpoint: bool = False,
                 attention_backend: str = 'sdpa', attention_dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                              backend=attention_backend, dropout=attention_dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.use_checkpoint = use_checkpoint

    def forward(self, x, skip=None):
        if self.use_checkpoint and torch.is_grad_enabled():
            # Non-reentrant checkpointing: works with DDP, torch.compile and inputs that need no grad.
            return torch.utils.checkpoint.checkpoint(self._forward, x, skip, use_reentrant=False)
        return self._forward(x, skip)

    def _forward(self, x, skip=None):
        if self.skip_linear is not None:
            x = self.skip_linear(JoinSkip.apply(x, skip))
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


def init_vit_weights(module: nn.Module) -> None:
    """Truncated-normal(0.02) linear weights, zero biases, unit LayerNorms (the ViT / U-ViT initialisation)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.zeros_(module.bias)
        nn.init.ones_(module.weight)
