"""Text-to-image U-ViT (the paper's MS-COCO model): the prompt's CLIP token features are tokens too.

Constructor arguments, parameter names and ``forward(x, timesteps, context)`` follow the release, so its
mscoco_uvit_small checkpoint loads with ``strict=True``. Token order: [time, 77 context tokens, patches].
"""
import torch
import torch.nn as nn

from libs.nets.uvit import UViTTrunk


class UViT(UViTTrunk):
    """forward(x, timesteps, context): x (B, C, H, W) latents; timesteps (B,); context (B, num_clip_token, clip_dim)
    CLIP text features. Returns a tensor shaped like x."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.,
                 qkv_bias=False, qk_scale=None, norm_layer=nn.LayerNorm, mlp_time_embed=False, use_checkpoint=False,
                 clip_dim=768, num_clip_token=77, conv=True, skip=True, attention_backend='sdpa'):
        if norm_layer is not nn.LayerNorm:
            raise ValueError('UViT supports only nn.LayerNorm as norm_layer')
        super().__init__(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, qk_scale,
                         mlp_time_embed, use_checkpoint, conv, skip, attention_backend, extras=1 + num_clip_token,
                         condition_name='context_embed', condition_module=nn.Linear(clip_dim, embed_dim))
        self.num_clip_token = num_clip_token
        self.condition = 'text'

    def token_sequence(self, x, timesteps, context):
        """The token sequence [time, context, patches], before the positions."""
        x = self.patch_embed(x)
        return torch.cat([self.time_token(timesteps, x.dtype), self.context_embed(context), x], dim=1)

    def forward(self, x, timesteps, context):
        return self.trunk(self.token_sequence(x, timesteps, context))
