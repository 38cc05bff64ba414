"""DiT (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers", arXiv 2212.09748).

A plain ViT over the patches whose blocks are conditioned on the time and the class through adaLN-Zero: each
block's LayerNorms carry no parameters of their own, a per-block Linear(SiLU(t + y)) gives the shift, scale and
gate of the attention and MLP branches, and it starts at zero, so a fresh block is the identity. Fixed 2-D sin-cos
positions; a label table with one extra "no class" row when ``class_dropout_prob > 0`` (the release drops labels
inside the model while training); ``learn_sigma`` doubles the output channels (the variance half).

Constructor, call (``forward(x, t, y)``) and parameter names are the release's (``models.py``), so its
``DiT-XL-2-256x256.pt`` and ``DiT-XL-2-512x512.pt`` load with ``strict=True``; ``DiT_models`` holds its twelve
configurations. The released checkpoints see the step index n - 1 in 0..999 as ``t``.

This suite's additions, which leave the release's keys as they are: the discrete-state head (``num_states`` S > 0:
(B, out_chans, H, W, S) logits for libs/diffusion/ctmc.py), gradient checkpointing (``use_checkpoint``), and the
discrete seed's constructor names as aliases (``img_size``, ``hidden_dim``, ``dropout_attention``).
"""
import numpy as np
import torch
import torch.nn as nn
import torch.utils.checkpoint

from libs.nets.layers import Attention, Mlp, PatchEmbed, alias, logits_from_patches, timestep_embedding, unpatchify
from libs.nets.protocol import OUTPUT_IMAGE, OUTPUT_IMAGE_AND_VARIANCE, OUTPUT_LOGITS, PatchTokens, SquareImageInput

FREQUENCY_EMBEDDING_SIZE = 256   # the release's sinusoidal time features


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_2d(dim: int, grid: int) -> np.ndarray:
    """(grid * grid, dim) fixed positions: half the channels encode the column, half the row, each [sin | cos] of
    log-spaced frequencies (MAE's layout, which DiT uses)."""
    def one_axis(d, positions):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum('m,d->md', positions.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    coords = np.arange(grid, dtype=np.float32)
    columns, rows = np.meshgrid(coords, coords)   # (w, h) order as the release
    return np.concatenate([one_axis(dim // 2, columns), one_axis(dim // 2, rows)], axis=1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQUENCY_EMBEDDING_SIZE, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t):
        return self.mlp(timestep_embedding(t, FREQUENCY_EMBEDDING_SIZE).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """The label table; with ``dropout_prob > 0`` its last row is "no class", and training drops labels to it."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def forward(self, labels, train: bool):
        if train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


class DiTBlock(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, attention_backend: str = 'sdpa',
                 attention_dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True, backend=attention_backend,
                              dropout=attention_dropout)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), approximate='tanh')
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(PatchTokens, SquareImageInput, nn.Module):
    """The release's DiT. Declares the backbone protocol: class-conditional, output 'image+variance' with
    ``learn_sigma`` (2C channels: eps, then the variance interpolation), 'logits' with ``num_states`` > 0, else
    'image'. Gives the tokens of its blocks for REPA (``forward_with_tokens``)."""

    condition = 'labels'
    classifies = False

    def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
                 mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True,
                 attention_backend='sdpa', num_states=0, out_chans=None, use_checkpoint=False, img_size=None,
                 hidden_dim=None, dropout_attention=0.0):
        super().__init__()
        input_size = alias('input_size', input_size, 32, 'img_size', img_size)
        hidden_size = alias('hidden_size', hidden_size, 1152, 'hidden_dim', hidden_dim)
        if input_size % patch_size:
            raise ValueError(f'input_size {input_size} is not divisible by patch_size {patch_size}')
        if num_states and learn_sigma:
            raise ValueError('the discrete head (num_states > 0) has no variance: set learn_sigma=False')
        self.learn_sigma = learn_sigma
        self.in_channels = self.in_chans = in_channels
        self.num_states = num_states
        self.out_chans = in_channels if out_chans is None else out_chans
        if num_states:
            self.out_channels = self.out_chans * num_states
        else:
            if self.out_chans != in_channels:
                raise ValueError(f'out_chans {self.out_chans} differs from in_channels {in_channels}: only the '
                                 f'discrete head (num_states > 0) has its own output channels')
            self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.img_size = input_size
        self.token_dim = hidden_size
        self.use_checkpoint = use_checkpoint
        self.output = (OUTPUT_LOGITS if num_states else
                       OUTPUT_IMAGE_AND_VARIANCE if learn_sigma else OUTPUT_IMAGE)

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.num_classes = self.y_embedder.embedding_table.num_embeddings   # the protocol's: the table's size
        grid = input_size // patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio, attention_backend, dropout_attention)
                                     for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights(grid)

    def initialize_weights(self, grid: int) -> None:
        """The release's initialisation: Xavier-uniform Linears, sin-cos positions, the patch projection as a
        Linear, N(0, 0.02) labels and time MLP, and zero adaLN modulations and output layer (adaLN-Zero)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
        if self.pos_embed.device.type != 'meta':
            self.pos_embed.data.copy_(torch.from_numpy(sincos_2d(self.pos_embed.shape[-1], grid)).float()[None])
        weight = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.constant_(self.x_embedder.proj.bias, 0)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.constant_(layer.weight, 0)
            nn.init.constant_(layer.bias, 0)

    def repeated_blocks(self) -> list:
        """The DiT blocks, what regional compilation compiles."""
        return list(self.blocks)

    def forward(self, x, t, y):
        """x (B, C, H, W), t (B,) the step index, y (B,) labels -> (B, out_channels, H, W), or (B, out_chans, H, W,
        S) logits with the discrete head."""
        return self.forward_with_tokens(x, t, 0, y)[0]

    def forward_with_tokens(self, x, t, depth: int, y):
        """(``forward``'s output, (B, L, hidden_size) tokens of block ``depth``, 1-based; None for 0), one pass (the
        token protocol of libs/nets/protocol.py; REPA takes SiT's block ``encoder_depth`` so)."""
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, self.training)
        taken = None
        for index, block in enumerate(self.blocks, start=1):
            if self.use_checkpoint and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, c, use_reentrant=False)
            else:
                x = block(x, c)
            if index == depth:
                taken = x
        x = self.final_layer(x, c)
        if self.num_states:
            return logits_from_patches(x, self.out_chans, self.num_states), taken
        return unpatchify(x, self.out_channels), taken

    def token_blocks(self) -> int:
        return len(self.blocks)


def _config(depth, hidden_size, num_heads, patch_size):
    def build(**kwargs):
        return DiT(depth=depth, hidden_size=hidden_size, patch_size=patch_size, num_heads=num_heads, **kwargs)
    build.__name__ = f'DiT_{depth}_{hidden_size}_{patch_size}'
    return build


# The release's twelve configurations: (depth, hidden size, heads) of S / B / L / XL, with patches 2, 4, 8.
SIZES = {'S': (12, 384, 6), 'B': (12, 768, 12), 'L': (24, 1024, 16), 'XL': (28, 1152, 16)}
DiT_models = {f'DiT-{size}/{patch}': _config(depth, hidden, heads, patch)
              for size, (depth, hidden, heads) in SIZES.items() for patch in (2, 4, 8)}

__all__ = ['DiT', 'DiT_models', 'DiTBlock', 'FinalLayer', 'sincos_2d']
