"""The UNet of DDAE (Xiang et al. 2023, "Denoising Diffusion Autoencoders are Unified Self-supervised Learners").

One class builds both of the paper's UNets:

- "DDPM" (the defaults): Ho et al.'s CIFAR-10 UNet, 4 resolutions with channel multipliers (1, 2, 2, 2), attention
  at the second one, 2 blocks per resolution, strided-convolution downsampling and nearest+convolution upsampling;
  35,746,307 parameters.
- "DDPM++" (``ch_mults=(2, 2, 2), is_attn=(False, True, False), n_blocks=4, use_res_for_updown=True``): 3
  resolutions, 4 blocks each, and BigGAN-style residual blocks that resample (average pooling / nearest neighbour
  inside the block) in place of the plain up/down layers; ``augment_dim=9`` adds EDM's augmentation labels.

Constructor arguments, module names and the forward math follow the paper's release (model/unet.py and
model/block.py of FutureXiang/ddae), so its state dicts load with ``strict=True``:

- time: a sinusoidal embedding of the raw time value, width ``n_channels``, [sin | cos] halves at frequencies
  10000^(-k / (n_channels/2 - 1)); plus ``aug_emb(augment_labels)`` (no bias) when given; then
  lin1 -> SiLU -> lin2 to ``4 * n_channels``;
- residual blocks: GroupNorm(32) -> SiLU -> conv1, + Linear(SiLU(time)), GroupNorm(32) -> SiLU -> Dropout -> conv2,
  plus a 1x1-convolution shortcut where the width changes;
- attention: single head over the H*W positions, GroupNorm(32) in front, q and k each scaled by C^(-1/4), residual;
- skips: the image projection and every down-path output, concatenated (channels) in front of each up-path block;
- output: GroupNorm(8) -> SiLU -> 3x3 convolution to the image channels.

The backbone knows nothing about noise schedules: ``timesteps`` is whatever the diffusion framework feeds it (DDAE
fed its DDPM models the step over the number of steps, i / 1000 in (0, 1], and its EDM models EDM's
c_noise = log(sigma) / 4).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from libs.nets.layers import per_sample
from libs.nets.protocol import OUTPUT_IMAGE, check_feature_layers


def norm32(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels)


def sinusoidal_time(t: torch.Tensor, width: int) -> torch.Tensor:
    """(B,) times -> (B, width) float32: [sin | cos] of t * 10000^(-k / (width/2 - 1)), k = 0 .. width/2 - 1."""
    half = width // 2
    step = -math.log(10000.0) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * step)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class TimeEmbedding(nn.Module):
    """(B,) times and optional (B, augment_dim) augmentation labels -> (B, n_channels) embedding."""

    def __init__(self, n_channels: int, augment_dim: int):
        super().__init__()
        self.n_channels = n_channels
        base = n_channels // 4
        self.aug_emb = nn.Linear(augment_dim, base, bias=False) if augment_dim > 0 else None
        self.lin1 = nn.Linear(base, n_channels)
        self.act = nn.SiLU()
        self.lin2 = nn.Linear(n_channels, n_channels)

    def forward(self, t, augment_labels=None):
        emb = sinusoidal_time(t, self.n_channels // 4)
        if self.aug_emb is not None and augment_labels is not None:
            emb = emb + self.aug_emb(augment_labels.to(emb.dtype))
        return self.lin2(self.act(self.lin1(emb)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then (with ``use_conv``) a 3x3 convolution. Takes and ignores the time embedding."""

    def __init__(self, n_channels: int, use_conv: bool = True):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(n_channels, n_channels, kernel_size=3, padding=1)

    def forward(self, x, emb=None):
        x = F.interpolate(x, scale_factor=2, mode='nearest')
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """A stride-2 3x3 convolution, or (without ``use_conv``) 2x2 average pooling. Ignores the time embedding."""

    def __init__(self, n_channels: int, use_conv: bool = True):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(n_channels, n_channels, kernel_size=3, stride=2, padding=1)
        else:
            self.pool = nn.AvgPool2d(2)

    def forward(self, x, emb=None):
        return self.conv(x) if self.use_conv else self.pool(x)


class ResidualBlock(nn.Module):
    """Time-conditioned residual block; with ``up`` / ``down`` it also resamples, BigGAN-style: the main branch after
    its first activation, the shortcut branch at its input (both without parameters)."""

    def __init__(self, in_channels: int, out_channels: int, time_channels: int, dropout: float = 0.1,
                 up: bool = False, down: bool = False):
        super().__init__()
        self.norm1 = norm32(in_channels)
        self.act1 = nn.SiLU()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = norm32(out_channels)
        self.act2 = nn.SiLU()
        self.conv2 = nn.Sequential(nn.Dropout(dropout), nn.Conv2d(out_channels, out_channels, kernel_size=3,
                                                                  padding=1))
        self.shortcut = (nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels
                         else nn.Identity())
        self.time_emb = nn.Sequential(nn.SiLU(), nn.Linear(time_channels, out_channels))
        self.resamples = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(in_channels, use_conv=False), Upsample(in_channels, use_conv=False)
        elif down:
            self.h_upd, self.x_upd = Downsample(in_channels, use_conv=False), Downsample(in_channels, use_conv=False)
        else:
            self.h_upd = self.x_upd = nn.Identity()

    def forward(self, x, emb):
        h = self.act1(self.norm1(x))
        if self.resamples:
            h, x = self.h_upd(h), self.x_upd(x)
        h = self.conv1(h) + self.time_emb(emb)[:, :, None, None]
        h = self.conv2(self.act2(self.norm2(h)))
        return h + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of (B, C, H, W), with a residual connection."""

    def __init__(self, n_channels: int):
        super().__init__()
        self.norm = norm32(n_channels)
        self.projection = nn.Linear(n_channels, 3 * n_channels)
        self.output = nn.Linear(n_channels, n_channels)
        # q and k are each scaled by d^(-1/4) before their product (the release: steadier in float16)
        self.scale = n_channels ** -0.25

    def forward(self, x):
        b, c, height, width = x.shape
        seq = self.norm(x).reshape(b, c, height * width).transpose(1, 2)          # (B, L, C)
        q, k, v = self.projection(seq).chunk(3, dim=-1)
        weights = torch.bmm(q * self.scale, (k * self.scale).transpose(1, 2)).softmax(dim=-1)   # (B, Lq, Lk)
        out = self.output(torch.bmm(weights, v))                                   # (B, L, C)
        return out.transpose(1, 2).reshape(b, c, height, width) + x


class ResAttBlock(nn.Module):
    """A residual block, then attention or nothing."""

    def __init__(self, in_channels: int, out_channels: int, time_channels: int, has_attn: bool, dropout: float):
        super().__init__()
        self.res = ResidualBlock(in_channels, out_channels, time_channels, dropout=dropout)
        self.attn = AttentionBlock(out_channels) if has_attn else nn.Identity()

    def forward(self, x, emb):
        return self.attn(self.res(x, emb))


class MiddleBlock(nn.Module):
    def __init__(self, n_channels: int, time_channels: int, dropout: float):
        super().__init__()
        self.res1 = ResidualBlock(n_channels, n_channels, time_channels, dropout=dropout)
        self.attn = AttentionBlock(n_channels)
        self.res2 = ResidualBlock(n_channels, n_channels, time_channels, dropout=dropout)

    def forward(self, x, emb):
        return self.res2(self.attn(self.res1(x, emb)), emb)


class UpsampleRes(nn.Module):
    """x2 upsampling by a resampling residual block (``op``)."""

    def __init__(self, n_channels: int, time_channels: int, dropout: float):
        super().__init__()
        self.op = ResidualBlock(n_channels, n_channels, time_channels, dropout=dropout, up=True)

    def forward(self, x, emb):
        return self.op(x, emb)


class DownsampleRes(nn.Module):
    """/2 downsampling by a resampling residual block (``op``)."""

    def __init__(self, n_channels: int, time_channels: int, dropout: float):
        super().__init__()
        self.op = ResidualBlock(n_channels, n_channels, time_channels, dropout=dropout, down=True)

    def forward(self, x, emb):
        return self.op(x, emb)


class UNet(nn.Module):
    """DDAE's UNet noise predictor.

    forward(x, timesteps, augment_labels=None):
        x: (B, C, H, W) with (C, H, W) = ``image_shape``; H and W divisible by 2^(len(ch_mults) - 1).
        timesteps: (B,) float model times (a 0-d tensor or a python number is used for the whole batch).
        augment_labels: (B, augment_dim) floats, EDM's non-leaking augmentation labels, or None for "not
        augmented" (as the release: the label embedding is then left out; with ``augment_dim == 0`` they are
        ignored, as there).
        Returns a tensor shaped like x.

    features(x, timesteps, layers, augment_labels=None) -> {name: (B, channels) float32}: the outputs of the named
    up-path blocks, averaged over space (DDAE's linear-probe features). ``feature_layers()`` lists the names:
    ``out_1``, ``out_2``, ... number the up path's residual(+attention) blocks in execution order, the up-sampling
    layers not counted (the release's names: its DDPM probe reads ``out_6`` or ``out_7``). Only the part of the
    network that the deepest requested block needs is run.
    """

    condition = 'none'
    classifies = False
    output = OUTPUT_IMAGE
    num_classes = -1

    def __init__(self, image_shape=(3, 32, 32), n_channels=128, ch_mults=(1, 2, 2, 2),
                 is_attn=(False, True, False, False), dropout=0.1, n_blocks=2, use_res_for_updown=False,
                 augment_dim=0):
        super().__init__()
        if len(is_attn) != len(ch_mults):
            raise ValueError(f'is_attn has {len(is_attn)} entries, ch_mults {len(ch_mults)}: one per resolution')
        self.image_shape = tuple(image_shape)
        self.n_channels = n_channels
        self.augment_dim = augment_dim
        n_resolutions = len(ch_mults)
        time_channels = 4 * n_channels

        self.image_proj = nn.Conv2d(self.image_shape[0], n_channels, kernel_size=3, padding=1)
        self.time_emb = TimeEmbedding(time_channels, augment_dim)

        # Down path; skip_widths records the width of every tensor the up path will concatenate.
        down = []
        width = n_channels
        skip_widths = [width]
        for level, mult in enumerate(ch_mults):
            out_width = n_channels * mult
            for _ in range(n_blocks):
                down.append(ResAttBlock(width, out_width, time_channels, is_attn[level], dropout))
                width = out_width
                skip_widths.append(width)
            if level < n_resolutions - 1:
                down.append(DownsampleRes(width, time_channels, dropout) if use_res_for_updown
                            else Downsample(width))
                skip_widths.append(width)
        self.down = nn.ModuleList(down)

        self.middle = MiddleBlock(width, time_channels, dropout)

        up = []
        for level in reversed(range(n_resolutions)):
            out_width = n_channels * ch_mults[level]
            for _ in range(n_blocks + 1):
                up.append(ResAttBlock(width + skip_widths.pop(), out_width, time_channels, is_attn[level], dropout))
                width = out_width
            if level > 0:
                up.append(UpsampleRes(width, time_channels, dropout) if use_res_for_updown else Upsample(width))
        assert not skip_widths
        self.up = nn.ModuleList(up)

        self.norm = nn.GroupNorm(8, width)
        self.act = nn.SiLU()
        self.final = nn.Conv2d(width, self.image_shape[0], kernel_size=3, padding=1)

    @property
    def input_shape(self):
        return self.image_shape

    def feature_layers(self) -> list:
        count = sum(isinstance(m, ResAttBlock) for m in self.up)
        return [f'out_{i}' for i in range(1, count + 1)]

    def _run(self, x, timesteps, augment_labels, wanted=None):
        """The network; with ``wanted`` (a set of feature names) it stops after the last of them and returns
        (None, features), else (output, {})."""
        emb = self.time_emb(per_sample(timesteps, x, 'timesteps'), augment_labels)
        h = self.image_proj(x)
        skips = [h]
        for module in self.down:
            h = module(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        found, number = {}, 0
        for module in self.up:
            if isinstance(module, ResAttBlock):
                h = module(torch.cat([h, skips.pop()], dim=1), emb)
                number += 1
                if wanted is not None and f'out_{number}' in wanted:
                    found[f'out_{number}'] = h.float().mean(dim=(2, 3))
                    if len(found) == len(wanted):
                        return None, found
            else:
                h = module(h, emb)
        if wanted is not None:
            return None, found
        return self.final(self.act(self.norm(h))), found

    def forward(self, x, timesteps, augment_labels=None):
        return self._run(x, timesteps, augment_labels)[0]

    def features(self, x, timesteps, layers, augment_labels=None) -> dict:
        names = check_feature_layers(self, layers)
        if not names:
            return {}
        return self._run(x, timesteps, augment_labels, wanted=set(names))[1]
