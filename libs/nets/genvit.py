"""GenViT / HybViT (Yang et al. 2022, "Your ViT is Secretly a Hybrid Discriminative-Generative Diffusion Model").

A plain ViT over tokens [class, patches] that is at once a DDPM noise predictor (``forward``) and an image classifier
(``classify``, the HybViT use). Layout, as in the authors' release (sndnyang/Diffusion_ViT, models/DifViT.py and
models/vit.py):

- patch tokens from a linear patch embedding, a learnable class token in front, learnable 1-D positions;
- time: sinusoidal embedding of width ``embed_dim`` -> Linear -> GELU -> Linear, of width 4 * (number of tokens)
  (the suite's ``timestep_embedding``; the release orders sin before cos on a slightly different frequency grid,
  and its parameter names differ anyway, so its checkpoints do not load here);
- before every pre-norm block, each layer maps the time embedding (SiLU -> Linear) to one scale and one shift *per
  token* and applies x <- x * (1 + scale) + shift (a scalar pair per token, shared by all channels);
- blocks: pre-norm attention + pre-norm MLP with hidden width ``mlp_ratio * embed_dim`` (the paper uses 2);
- noise head: Linear from each patch token to its pixels, without a norm in front; class head: LayerNorm -> Linear
  on the class token.

The backbone knows nothing about noise schedules: ``timesteps`` is what ``Denoiser`` feeds it (999 t for the VP SDE,
N t for a discrete schedule; the paper trained with integer DDPM steps 0..999).
"""
import torch
import torch.nn as nn

from libs.nets.layers import Block, PatchEmbed, init_vit_weights, timestep_embedding, unpatchify
from libs.nets.protocol import OUTPUT_IMAGE, PatchTokens, SquareImageInput, check_feature_layers


class TokenTimeModulation(nn.Module):
    """Per-token affine modulation from the time embedding: x * (1 + scale) + shift.

    x: (B, L, D); emb: (B, time_dim) -> (B, L, D). ``scale`` and ``shift`` are (B, L, 1): one scalar per token.
    Kept outside ``Block`` because the paper modulates the block's input, not its sub-layers, so the shared block is
    reused unchanged.
    """

    def __init__(self, time_dim: int, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.act = nn.SiLU()
        self.proj = nn.Linear(time_dim, 2 * num_tokens)

    def forward(self, x, emb):
        scale, shift = self.proj(self.act(emb)).unsqueeze(-1).chunk(2, dim=1)
        return x * (1 + scale) + shift


class GenViT(PatchTokens, SquareImageInput, nn.Module):
    """Noise-prediction ViT with a classification head on its class token.

    forward(x, timesteps, y=None):
        x: (B, in_chans, img_size, img_size) in [-1, 1]; timesteps: (B,) float model times. ``y`` is accepted for the
        suite's calling convention and ignored (GenViT is unconditional). Returns eps, shaped like x.
    classify(x):
        x: (B, in_chans, img_size, img_size) clean images -> (B, num_classes) logits. As in the paper's HybViT the
        classifier runs *without* the time input: no time embedding is computed and the per-layer modulation is
        skipped (not "t = 0", which would still modulate the tokens).

    ``time_embed_dim`` defaults to the paper's 4 * (num_patches + 1). ``embed_dim`` must be divisible by
    ``num_heads``. ``attention_backend`` and ``use_checkpoint`` do not touch the weights.
    """

    condition = 'none'  # y is accepted and ignored: the label is what the head predicts, not a condition
    classifies = True   # has classify(); what the hybrid objective checks
    output = OUTPUT_IMAGE

    def __init__(self, img_size, patch_size, in_chans=3, embed_dim=384, depth=9, num_heads=12, mlp_ratio=2.0,
                 num_classes=10, qkv_bias=False, time_embed_dim=None, attention_backend='sdpa',
                 use_checkpoint=False):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f'img_size {img_size} is not divisible by patch_size {patch_size}')
        if embed_dim % num_heads:
            raise ValueError(f'embed_dim {embed_dim} is not divisible by num_heads {num_heads}')
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_features = self.embed_dim = self.token_dim = embed_dim
        self.num_classes = num_classes
        self.num_patches = (img_size // patch_size) ** 2
        num_tokens = self.num_patches + 1
        self.time_embed_dim = time_embed_dim or 4 * num_tokens

        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        self.time_embed = nn.Sequential(
            nn.Linear(embed_dim, self.time_embed_dim),
            nn.GELU(),
            nn.Linear(self.time_embed_dim, self.time_embed_dim),
        )
        self.time_mods = nn.ModuleList([TokenTimeModulation(self.time_embed_dim, num_tokens) for _ in range(depth)])
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, use_checkpoint=use_checkpoint,
                  attention_backend=attention_backend)
            for _ in range(depth)])

        self.patch_dim = patch_size ** 2 * in_chans
        self.decoder_pred = nn.Linear(embed_dim, self.patch_dim)
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_vit_weights)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {'pos_embed', 'cls_token'}

    def _embed(self, x):
        """(B, C, H, W) -> (B, L, D) positioned tokens [class, patches]."""
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        if x.shape[1] != self.pos_embed.shape[1]:
            raise ValueError(f'got {x.shape[1] - 1} patches, the model has positions for '
                             f'{self.pos_embed.shape[1] - 1} (img_size={self.img_size}, patch_size={self.patch_size})')
        return x + self.pos_embed

    def _block_outputs(self, x, emb):
        """Each block's (B, L, D) output over [class, patches], in order; ``emb`` (B, time_dim), or None for no time
        input (then the per-layer modulation is skipped)."""
        h = self._embed(x)
        for mod, blk in zip(self.time_mods, self.blocks):
            if emb is not None:
                h = mod(h, emb)
            h = blk(h)
            yield h

    def _tokens(self, x, emb):
        """Run the transformer on [class, patches]; ``emb`` (B, time_dim) or None for no time input -> (B, L, D)."""
        for h in self._block_outputs(x, emb):
            pass
        return h

    def _time(self, timesteps, x):
        return self.time_embed(timestep_embedding(timesteps, self.embed_dim).to(x.dtype))

    def forward(self, x, timesteps, y=None):
        return self.forward_with_tokens(x, timesteps, 0)[0]

    def forward_with_tokens(self, x, timesteps, depth: int, y=None):
        """(``forward``'s output, (B, L, embed_dim) patch tokens of block ``depth``, 1-based, the class token left
        out; None for 0), one pass (the token protocol of libs/nets/protocol.py). ``y`` is ignored."""
        taken = None
        for index, h in enumerate(self._block_outputs(x, self._time(timesteps, x)), start=1):
            if index == depth:
                taken = h[:, 1:]
        return unpatchify(self.decoder_pred(h[:, 1:]), self.in_chans), taken

    def token_blocks(self) -> int:
        return len(self.blocks)

    def repeated_blocks(self) -> list:
        """The transformer blocks, what regional compilation compiles (the per-token time modulations between them
        are one small Linear each and stay eager)."""
        return list(self.blocks)

    def feature_layers(self) -> list:
        """``block_0``, ``block_1``, ...: the transformer blocks in execution order."""
        return [f'block_{i}' for i in range(len(self.blocks))]

    def features(self, x, timesteps, layers, y=None) -> dict:
        """{``block_k``: (B, embed_dim) float32}: block k's output (with the time input, as in ``forward``) averaged
        over the patch tokens, the class token left out; runs only as far as the deepest requested block. ``y`` is
        ignored, as in ``forward``."""
        wanted = set(check_feature_layers(self, layers))
        found = {}
        if not wanted:
            return found
        for index, h in enumerate(self._block_outputs(x, self._time(timesteps, x))):
            if f'block_{index}' in wanted:
                found[f'block_{index}'] = h[:, 1:].float().mean(dim=1)
                if len(found) == len(wanted):
                    break
        return found

    def classify(self, x):
        return self.head(self.norm(self._tokens(x, None)[:, 0]))


def _config(img_size, patch_size, num_classes, embed_dim=384, num_heads=12):
    return dict(img_size=img_size, patch_size=patch_size, in_chans=3, embed_dim=embed_dim, depth=9,
                num_heads=num_heads, mlp_ratio=2.0, num_classes=num_classes)


# The paper's models (README table of sndnyang/Diffusion_ViT; depth 9, MLP ratio 2 from models/create_model.py).
# The table gives 12 heads for dims 512 and 1024 too, which the release realises with 42/85-wide heads and an inner
# attention width of 504/1020; this suite's attention needs embed_dim % num_heads == 0, so those two use 8 heads
# (the release's own default for dims not divisible by 12), which keeps the inner width at embed_dim.
GENVIT_CONFIGS = {
    'cifar10': _config(32, 4, 10),
    'cifar100': _config(32, 4, 100),
    'img32': _config(32, 4, 1000),
    'tinyimg': _config(64, 8, 200),
    'stl10': _config(96, 8, 10),
    'celeba128': _config(128, 8, 10),
    'img128_10': _config(128, 8, 10, embed_dim=512, num_heads=8),
    'img224_10': _config(224, 14, 10, embed_dim=1024, num_heads=8),
}
