"""The noise-conditional WideResNet, DDAE's supervised baseline for classifying noisy images.

A Wide ResNet (Zagoruyko & Komodakis 2016) whose residual blocks are told the noise level, as the noise-conditional
classifier of Song et al. 2021 (score SDE, appendix I.1; its JAX file models/wideresnet_noise_conditional.py) and
its PyTorch port in DDAE (FutureXiang/ddae, model/wideresnet_noise_song.py). Layout, and the module names of that
port (so its state dicts load):

- per-image standardisation of the input: (x - mean) / max(std, 1/sqrt(C*H*W)) over each image (std with Bessel's
  correction, as torch.std in the port; the JAX original divides by N);
- noise embedding: Gaussian Fourier features of log(sigma) -- [sin | cos](2 pi log(sigma) W), W a fixed (not
  trained) draw of 128 N(0, 16^2) frequencies, stored as the buffer ``time_emb.W`` -- then Linear(256, 512) -> SiLU
  -> Linear(512, 512) (``time_emb_mlp``);
- a 3x3 convolution to 16 channels, then three groups of (depth - 4) / 6 pre-activation blocks of widths 16k, 32k,
  64k (k = ``widen_factor``), the second and third starting with stride 2. A block: GroupNorm -> ReLU -> conv1,
  + Linear(SiLU(noise embedding)) per channel, GroupNorm -> ReLU -> (dropout) -> conv2, plus the shortcut: the
  input, average-pooled by the stride and zero-padded in channels where the width changes (no 1x1 convolution).
  The very first block activates its input before the split, so its shortcut carries the activated input.
  GroupNorms have min(channels / 4, 32) groups; the convolutions have no bias;
- GroupNorm -> ReLU, global average pooling (adaptive: any image size whose stride-4 map is not empty, e.g. 8x8),
  Linear to the logits.

One difference from DDAE's port, on purpose: the port computes the noise embedding but never hands it to the
groups (``group1(x)`` without it), so its blocks are *not* conditioned and their noise Linears stay untrained; here
every block gets it, as in Song's original. The weights have the same names and shapes either way.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from libs.nets.layers import per_sample

EMBED_FREQUENCIES = 128   # Gaussian Fourier frequencies: 256 features
EMBED_SCALE = 16.0        # their standard deviation
NOISE_CHANNELS = 512      # width of the noise embedding


def group_norm_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.GroupNorm(min(channels // 4, 32), channels, eps=1e-5), nn.ReLU())


class GaussianFourierFeatures(nn.Module):
    """(B,) values -> (B, 2 * n) [sin | cos] of 2 pi value W, with n fixed random frequencies W (a buffer)."""

    def __init__(self, n: int = EMBED_FREQUENCIES, scale: float = EMBED_SCALE):
        super().__init__()
        self.register_buffer('W', torch.randn(n) * scale)

    def forward(self, values):
        angles = values[:, None] * self.W[None, :] * (2 * math.pi)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def add_shortcut(block_out: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """block_out + shortcut, the shortcut average-pooled to block_out's size and zero-padded to its channels where the
    widths differ."""
    if block_out.shape[1] != shortcut.shape[1]:
        stride = shortcut.shape[-2] // block_out.shape[-2]
        if stride > 1:
            shortcut = F.avg_pool2d(shortcut, stride, stride)
        shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, block_out.shape[1] - shortcut.shape[1]))
    return block_out + shortcut


class NoiseConditionalBlock(nn.Module):
    """Pre-activation wide residual block with the noise embedding added after its first convolution."""

    def __init__(self, in_planes: int, planes: int, noise_channels: int, stride: int = 1,
                 activate_before_residual: bool = False, dropout: float = 0.0):
        super().__init__()
        self.activate_before_residual = activate_before_residual
        self.init_bn = group_norm_relu(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn_2 = group_norm_relu(planes)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.time_emb = nn.Sequential(nn.SiLU(), nn.Linear(noise_channels, planes))

    def forward(self, x, emb):
        if self.activate_before_residual:
            x = self.init_bn(x)
            h = x
        else:
            h = self.init_bn(x)
        h = self.conv1(h) + self.time_emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(self.bn_2(h)))
        return add_shortcut(h, x)


class NoiseConditionalGroup(nn.Module):
    def __init__(self, n_blocks: int, in_planes: int, planes: int, noise_channels: int, stride: int = 1,
                 activate_before_residual: bool = False, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList([
            NoiseConditionalBlock(in_planes if i == 0 else planes, planes, noise_channels, stride if i == 0 else 1,
                                  activate_before_residual and i == 0, dropout)
            for i in range(n_blocks)])

    def forward(self, x, emb):
        for blk in self.blocks:
            x = blk(x, emb)
        return x


class NoiseConditionalWideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` classifier of noisy images, conditioned on their noise level.

    forward(x, noise_level) -> (B, num_classes) logits.
        x: (B, in_chans, H, W) noisy images. The convention of DDAE's training script: clean images scaled to
        [-1, 1], plus sigma * N(0, I) (EDM's variance-exploding form). Each image is standardised first, so any
        positive rescaling of x gives the same logits: a variance-preserving sample sqrt(abar) x0 + sqrt(1 - abar)
        eps may be passed as it is, with its equivalent sigma = sqrt((1 - abar) / abar).
        noise_level: (B,) float sigma > 0, the standard deviation of the noise added to the [-1, 1] image (the
        network takes its log; a 0-d tensor or a python number is used for the whole batch). Clean images (sigma =
        0) are outside its domain: log(0) is -inf.

    ``depth`` must be 6n + 4 (28: 4 blocks per group). ``dropout`` (before each block's second convolution, the
    standard WRN place) is this suite's addition; DDAE and Song train with none. Convolution and linear weights
    start from Kaiming-normal, as in DDAE's port.
    """

    def __init__(self, depth=28, widen_factor=2, num_classes=10, in_chans=3, dropout=0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f'WideResNet depth must be 6n + 4 with n >= 1, got {depth}')
        n_blocks = (depth - 4) // 6
        self.depth, self.widen_factor = depth, widen_factor
        self.num_classes, self.in_chans = num_classes, in_chans
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]

        self.time_emb = GaussianFourierFeatures()
        self.time_emb_mlp = nn.Sequential(
            nn.Linear(2 * EMBED_FREQUENCIES, NOISE_CHANNELS),
            nn.SiLU(),
            nn.Linear(NOISE_CHANNELS, NOISE_CHANNELS),
        )
        self.init_conv = nn.Conv2d(in_chans, 16, kernel_size=3, padding=1, bias=False)
        self.group1 = NoiseConditionalGroup(n_blocks, 16, widths[0], NOISE_CHANNELS, 1, True, dropout)
        self.group2 = NoiseConditionalGroup(n_blocks, widths[0], widths[1], NOISE_CHANNELS, 2, False, dropout)
        self.group3 = NoiseConditionalGroup(n_blocks, widths[1], widths[2], NOISE_CHANNELS, 2, False, dropout)
        self.pre_pool_bn = group_norm_relu(widths[2])
        self.final_linear = nn.Linear(widths[2], num_classes)

        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x, noise_level):
        n = x[0].numel()
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1.0 / math.sqrt(n))
        x = (x - mean) / std

        emb = self.time_emb_mlp(self.time_emb(per_sample(noise_level, x, 'noise_level').float().log()).to(x.dtype))
        h = self.init_conv(x)
        h = self.group3(self.group2(self.group1(h, emb), emb), emb)
        h = self.pre_pool_bn(h).mean(dim=(2, 3))
        return self.final_linear(h)
