"""U-ViT (Bao et al. 2022, "All are Worth Words: A ViT Backbone for Diffusion Models").

A ViT over tokens [label?, time, patches] with long skip connections from each shallow block to its mirror deep
block. Constructor arguments, parameter names and forward semantics match the paper's release, so its checkpoints
(cifar10_uvit_small.pth, imagenet64_uvit_mid.pth, imagenet256_uvit_huge.pth, ...) load with ``strict=True``.

The backbone knows nothing about noise schedules: ``timesteps`` is whatever the diffusion framework feeds it
(``libs.diffusion.schedules`` maps continuous time to it, e.g. 999 t for the released pixel models).
"""
import torch
import torch.nn as nn

from libs.nets.layers import (Block, PatchEmbed, alias, init_vit_weights, logits_from_patches, timestep_embedding,
                              unpatchify)
from libs.nets.protocol import OUTPUT_IMAGE, OUTPUT_LOGITS, PatchTokens, SquareImageInput, check_feature_layers


class UViTTrunk(PatchTokens, SquareImageInput, nn.Module):
    """What every U-ViT shares: patch and time embeddings, positions, the U-shaped block stack and the decoder.

    Subclasses add their condition embedding (``condition_name`` / ``condition_module``, created between the time
    embedding and the positions, the release's parameter order) and build the token sequence
    (``token_sequence(x, timesteps, **cond)``). Declares the backbone protocol (libs/nets/protocol.py), with image
    tokens for REPA (``forward_with_tokens``: block k of the in-, mid- and out-blocks in execution order, the extra
    tokens left out); subclasses set ``condition`` and ``classifies``.
    """

    condition = 'none'
    classifies = False
    output = OUTPUT_IMAGE

    def __init__(self, img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, qk_scale,
                 mlp_time_embed, use_checkpoint, conv, skip, attention_backend, extras, condition_name=None,
                 condition_module=None, num_states=0, out_chans=None, attention_dropout=0.0):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f'img_size {img_size} is not divisible by patch_size {patch_size}')
        self.num_features = self.embed_dim = self.token_dim = embed_dim
        self.in_chans = in_chans
        self.img_size = img_size
        self.patch_size = patch_size
        self.extras = extras
        # the discrete head: logits over num_states values for each of out_chans channels, no final convolution
        self.num_states = num_states
        self.out_chans = in_chans if out_chans is None else out_chans
        if num_states:
            self.output = OUTPUT_LOGITS
        elif self.out_chans != in_chans:
            raise ValueError(f'out_chans {self.out_chans} differs from in_chans {in_chans}: only the discrete '
                             f'head (num_states > 0) has its own output channels')

        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        num_patches = (img_size // patch_size) ** 2
        self.time_embed = nn.Sequential(
            nn.Linear(embed_dim, 4 * embed_dim),
            nn.SiLU(),
            nn.Linear(4 * embed_dim, embed_dim),
        ) if mlp_time_embed else nn.Identity()
        if condition_name is not None:
            setattr(self, condition_name, condition_module)
        self.pos_embed = nn.Parameter(torch.zeros(1, extras + num_patches, embed_dim))

        def block(skip_connection=False):
            return Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                         skip=skip_connection, use_checkpoint=use_checkpoint, attention_backend=attention_backend,
                         attention_dropout=attention_dropout)

        self.in_blocks = nn.ModuleList([block() for _ in range(depth // 2)])
        self.mid_block = block()
        self.out_blocks = nn.ModuleList([block(skip) for _ in range(depth // 2)])

        self.norm = nn.LayerNorm(embed_dim)
        self.patch_dim = patch_size ** 2 * self.out_chans * max(num_states, 1)
        self.decoder_pred = nn.Linear(embed_dim, self.patch_dim, bias=True)
        self.final_layer = nn.Conv2d(in_chans, in_chans, 3, padding=1) if conv and not num_states else nn.Identity()

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_vit_weights)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {'pos_embed'}

    def time_token(self, timesteps, dtype):
        """(B,) timesteps -> (B, 1, D) time token."""
        return self.time_embed(timestep_embedding(timesteps, self.embed_dim).to(dtype)).unsqueeze(1)

    def positioned(self, tokens):
        """(B, extras + L, D) tokens (condition tokens first, patch tokens last) plus their positions."""
        if tokens.shape[1] != self.pos_embed.shape[1]:
            raise ValueError(f'got {tokens.shape[1]} tokens, the model has positions for {self.pos_embed.shape[1]} '
                             f'(is the condition given exactly when the model has one?)')
        return tokens + self.pos_embed

    def trunk(self, tokens):
        """(B, extras + L, D) tokens (condition tokens first, patch tokens last) -> (B, C, H, W) prediction, or
        (B, C, H, W, S) logits with the discrete head."""
        return self.trunk_with_tokens(tokens, 0)[0]

    def trunk_with_tokens(self, tokens, depth: int):
        """``trunk``, and the patch tokens (B, L, D) of block ``depth`` (1-based, execution order; 0: None)."""
        taken = None
        for index, x in enumerate(self.block_outputs(self.positioned(tokens)), start=1):
            if index == depth:
                taken = x[:, self.extras:]
        x = self.decoder_pred(self.norm(x))[:, self.extras:, :]
        if self.num_states:
            return logits_from_patches(x, self.out_chans, self.num_states), taken
        return self.final_layer(unpatchify(x, self.in_chans)), taken

    def forward_with_tokens(self, x, timesteps, depth: int, **cond):
        """(``forward``'s output, (B, L, embed_dim) patch tokens of block ``depth``), one pass (the token protocol of
        libs/nets/protocol.py)."""
        return self.trunk_with_tokens(self.token_sequence(x, timesteps, **cond), depth)

    def token_blocks(self) -> int:
        return len(self.in_blocks) + 1 + len(self.out_blocks)

    def repeated_blocks(self) -> list:
        """The transformer blocks in execution order (in, mid, out blocks), what regional compilation compiles."""
        return [*self.in_blocks, self.mid_block, *self.out_blocks]

    def feature_layers(self) -> list:
        """``block_0``, ``block_1``, ...: the transformer blocks in execution order (in, mid, out blocks)."""
        return [f'block_{i}' for i in range(self.token_blocks())]

    def stack_features(self, tokens, layers) -> dict:
        """(B, extras + L, D) tokens -> {name: (B, D) float32}, each named block's output averaged over the patch
        tokens; the stack runs only as far as the deepest requested block."""
        wanted = set(check_feature_layers(self, layers))
        found = {}
        if not wanted:
            return found
        for index, x in enumerate(self.block_outputs(self.positioned(tokens))):
            if f'block_{index}' in wanted:
                found[f'block_{index}'] = x[:, self.extras:].float().mean(dim=1)
                if len(found) == len(wanted):
                    break
        return found

    def block_outputs(self, x):
        """The U-shaped stack, lazily: (B, N, D) positioned tokens -> each block's (B, N, D) output in execution order
        (in-blocks, whose outputs are kept for the long skips, the mid-block, then the out-blocks, each fed the skip of
        its mirror in-block); any number of tokens N."""
        skips = []
        for blk in self.in_blocks:
            x = blk(x)
            skips.append(x)
            yield x
        x = self.mid_block(x)
        yield x
        for blk in self.out_blocks:
            x = blk(x, skips.pop())
            yield x

    def stack(self, x):
        """The U-shaped stack: (B, N, D) positioned tokens -> (B, N, D), any number of tokens N."""
        for x in self.block_outputs(x):
            pass
        return x


class ClassifierHead(nn.Module):
    """A learnable class token and the head that reads it: LayerNorm -> Linear, (B, D) -> (B, num_classes)."""

    def __init__(self, embed_dim: int, num_classes: int):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_vit_weights)

    def forward(self, cls_features):
        return self.head(self.norm(cls_features))


class UViT(UViTTrunk):
    """Noise-prediction U-ViT, optionally also an image classifier (a hybrid U-ViT, trained like HybViT).

    forward(x, timesteps, y=None):
        x: (B, in_chans, img_size, img_size); timesteps: (B,) float; y: (B,) int64 class labels or None.
        Returns a tensor shaped like x.
    With ``num_classes > 0`` the label is one extra token placed before the time token.
    ``attention_backend`` (libs/nets/attention.py's ``ATTENTION_BACKENDS``: 'sdpa', 'xformers', 'math', 'flash',
    'cudnn', 'efficient') is this suite's addition and does not touch the weights.

    classify(x), only with ``clf_classes > 0``:
        x: (B, in_chans, img_size, img_size) clean images -> (B, clf_classes) logits. The sequence is
        [class token, patches] through the same U-shaped stack, then LayerNorm -> Linear on the class token. As in
        GenViT (the HybViT paper) the classifier has no time input: the time token is left out rather than set to
        "t = 0", which lies outside the trained times (0, 1] and whose model time depends on the schedule, which
        the backbone does not know. The label token is left out too; the patches keep their positions.
    ``clf_classes`` (this suite's addition) only adds parameters, after all the release's ones (``classifier.*``,
    created last, so the release's weights also start from the same values); with the default 0 the keys, shapes,
    order and initial values are the release's.
    ``classifies`` tells whether the network has the head (what the hybrid objective checks).

    The discrete-state head (libs/diffusion/ctmc.py): ``num_states`` S > 0 makes the output (B, out_chans, H, W, S)
    logits (``output = 'logits'``; ``out_chans`` defaults to in_chans, the absorbing rate feeds 2 x out_chans
    input channels); no final convolution. The discrete seed's constructor names are accepted as aliases:
    ``in_channels`` (in_chans), ``hidden_dim`` (embed_dim) and ``dropout_attention`` (dropout on each attention
    branch's output while training).
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.,
                 qkv_bias=False, qk_scale=None, norm_layer=nn.LayerNorm, mlp_time_embed=False, num_classes=-1,
                 use_checkpoint=False, conv=True, skip=True, attention_backend='sdpa', clf_classes=0, num_states=0,
                 out_chans=None, in_channels=None, hidden_dim=None, dropout_attention=0.0):
        if norm_layer is not nn.LayerNorm:
            raise ValueError('UViT supports only nn.LayerNorm as norm_layer')
        in_chans = alias('in_chans', in_chans, 3, 'in_channels', in_channels)
        embed_dim = alias('embed_dim', embed_dim, 768, 'hidden_dim', hidden_dim)
        labelled = num_classes > 0
        super().__init__(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, qk_scale,
                         mlp_time_embed, use_checkpoint, conv, skip, attention_backend, extras=2 if labelled else 1,
                         condition_name='label_emb' if labelled else None,
                         condition_module=nn.Embedding(num_classes, embed_dim) if labelled else None,
                         num_states=num_states, out_chans=out_chans, attention_dropout=dropout_attention)
        self.num_classes = num_classes
        self.condition = 'labels' if labelled else 'none'
        self.clf_classes = clf_classes
        self.classifies = clf_classes > 0
        if self.classifies:
            self.classifier = ClassifierHead(embed_dim, clf_classes)

    @torch.jit.ignore
    def no_weight_decay(self):
        return super().no_weight_decay() | ({'classifier.cls_token'} if self.classifies else set())

    def token_sequence(self, x, timesteps, y=None):
        """The token sequence [label?, time, patches], before the positions."""
        x = self.patch_embed(x)
        tokens = [self.time_token(timesteps, x.dtype), x]
        if y is not None:
            tokens.insert(0, self.label_emb(y).unsqueeze(1))
        return torch.cat(tokens, dim=1)

    def forward(self, x, timesteps, y=None):
        return self.trunk(self.token_sequence(x, timesteps, y))

    def features(self, x, timesteps, layers, y=None) -> dict:
        """{``block_k``: (B, embed_dim) float32}: block k's output tokens averaged over the patch tokens (the
        feature protocol of libs/nets/protocol.py; ``feature_layers()`` lists the names)."""
        return self.stack_features(self.token_sequence(x, timesteps, y), layers)

    def classify(self, x):
        if not self.classifies:
            raise ValueError('this UViT has no classification head (build it with clf_classes > 0)')
        x = self.patch_embed(x) + self.pos_embed[:, self.extras:]
        x = self.stack(torch.cat([self.classifier.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1))
        return self.classifier(x[:, 0])
