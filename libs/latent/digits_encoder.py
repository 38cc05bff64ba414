"""The digits' frozen representation encoder for REPA: a small ViT trained once, self-supervised, on the training
split of the 8x8 digits, and cached to ``assets/digits_encoder.pt`` like the digit classifier.

Why not the digit classifier (libs/metrics/digits_score.py)? The digit score is computed in that classifier's
features: a model aligned to them would be trained against its own scorer, and its score would no longer be
evidence. This encoder is another network (a ViT over 2x2 patches, not a CNN), trained with another objective (no
labels: SimCLR's contrastive loss between two augmented views, Chen et al. 2020) on another split (the diffusion
model's 'train' split of libs/data/datasets.py's Digits, not the classifier's). DINOv2, REPA's encoder, is
self-supervised too; at 8x8 pixels a contrastive ViT is what trains in seconds on a CPU.

``DigitsEncoder(x)``: ``(B, 1, 8, 8)`` in [-1, 1] -> ``(B, 16, dim)`` tokens, one per 2x2 patch in row-major order
(the 4x4 grid of the digits U-ViT's patch-2 tokens), after a final LayerNorm, as DINOv2's patch tokens are. Its
positions are learned for that grid only (``grid``), so it serves backbones whose image tokens form a 4x4 grid.

Training (``RECIPE``): two views of each image (a shift of up to one pixel, a random 3x3 square erased to black with
probability one half, contrast scaled by U(0.6, 1), Gaussian noise of std 0.1), the mean of the tokens through a
two-layer head, NT-Xent at temperature 0.2 over the 2 x 256 views of a batch; AdamW, one-cycle learning rate. The
head is dropped after training. The recipe's hash is stored with the weights: a changed recipe retrains the cache.
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from libs.data.augment import random_shift
from libs.data.datasets import Digits
from libs.fileio import cached_model
from libs.nets.layers import Block, PatchEmbed, init_vit_weights

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_ENCODER_PATH = os.path.join(REPO_ROOT, 'assets', 'digits_encoder.pt')

RECIPE = dict(version=1, architecture='vit-patch2-dim64-depth4-heads4-mlp2-layernorm', objective='simclr-nt-xent',
              head='mean-linear256-relu-linear64', temperature=0.2, split='train', seed=0, epochs=120, batch_size=256,
              lr=2e-3, weight_decay=0.05, shift=1, erase=3, erase_prob=0.5, contrast=(0.6, 1.0), noise_std=0.1)
WIDTH, DEPTH, HEADS, PATCH = 64, 4, 4, 2


class DigitsEncoder(nn.Module):
    """A ViT over the 16 patches of an 8x8 digit: ``x (B, 1, 8, 8)`` in [-1, 1] -> ``(B, 16, dim)`` patch tokens."""

    patch_size = PATCH
    grid = (4, 4)
    channels = 1

    def __init__(self, dim: int = WIDTH, depth: int = DEPTH, num_heads: int = HEADS):
        super().__init__()
        self.dim = dim
        self.patch_embed = PatchEmbed(PATCH, 1, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], dim))
        self.blocks = nn.ModuleList([Block(dim, num_heads, mlp_ratio=2.0) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_vit_weights)

    def forward(self, x):
        x = self.patch_embed(x)
        if x.shape[1] != self.pos_embed.shape[1]:
            raise ValueError(f'DigitsEncoder takes 8x8 images (a 4x4 grid of patches), got {x.shape[1]} patches')
        x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


def augmented_view(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random view of each digit (B, 1, 8, 8) in [-1, 1]: shift, erased square, contrast, noise (``RECIPE``)."""
    b, _, h, w = x.shape
    x = random_shift(x, RECIPE['shift'], generator)
    side = RECIPE['erase']
    top = torch.randint(0, h - side + 1, (b,), generator=generator)
    left = torch.randint(0, w - side + 1, (b,), generator=generator)
    rows, cols = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    square = ((rows >= top[:, None, None]) & (rows < top[:, None, None] + side)
              & (cols >= left[:, None, None]) & (cols < left[:, None, None] + side))
    erase = (torch.rand(b, generator=generator) < RECIPE['erase_prob'])[:, None, None] & square
    x = torch.where(erase[:, None], torch.full_like(x, -1.0), x)
    low, high = RECIPE['contrast']
    contrast = low + (high - low) * torch.rand(b, 1, 1, 1, generator=generator)
    x = (x + 1) * contrast - 1
    x = x + RECIPE['noise_std'] * torch.randn(x.shape, generator=generator)
    return x.clamp(-1, 1)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: (B, K) embeddings of two views -> the mean cross-entropy of finding each view's partner among
    the other 2B - 1 views by cosine similarity / temperature."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float('-inf'))
    b = z1.shape[0]
    partners = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    return F.cross_entropy(logits, partners)


def train_digits_encoder(epochs: int = None) -> DigitsEncoder:
    """Train the encoder with ``RECIPE`` on the digits' training split (``epochs`` overrides the recipe's, for a
    quick look; the cache always holds the recipe's)."""
    generator = torch.Generator().manual_seed(RECIPE['seed'])
    torch.manual_seed(RECIPE['seed'])
    images = Digits(RECIPE['split']).images
    encoder = DigitsEncoder()
    head = nn.Sequential(nn.Linear(WIDTH, 256), nn.ReLU(), nn.Linear(256, 64))
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=RECIPE['lr'], weight_decay=RECIPE['weight_decay'])
    epochs = epochs or RECIPE['epochs']
    batch = RECIPE['batch_size']
    steps_per_epoch = len(images) // batch   # whole batches: every step sees as many negatives
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, RECIPE['lr'], total_steps=epochs * steps_per_epoch)
    encoder.train()
    # about 90 s of CPU, once: a bar, so that the first REPA run on the digits is not silent while it trains
    for _ in tqdm(range(epochs), desc='REPA digits encoder: training it once, then cached'):
        order = torch.randperm(len(images), generator=generator)[:steps_per_epoch * batch]
        for indices in order.split(batch):
            x = images[indices]
            z1 = head(encoder(augmented_view(x, generator)).mean(dim=1))
            z2 = head(encoder(augmented_view(x, generator)).mean(dim=1))
            loss = nt_xent(z1, z2, RECIPE['temperature'])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    return encoder.eval()


def load_digits_encoder(path: str = '') -> DigitsEncoder:
    """The trained encoder from its cache (default ``assets/digits_encoder.pt``); a missing, unreadable or stale one
    (another ``RECIPE``) is trained (90 s of CPU on one core of an AMD Zen 5) and written there."""
    return cached_model(path or DEFAULT_ENCODER_PATH, RECIPE, DigitsEncoder, lambda: train_digits_encoder())
