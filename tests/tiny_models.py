"""Tiny, randomly initialised stand-ins for the autoencoders (Stable Diffusion's and SD3 / FLUX's AutoencoderKL,
DC-AE's AutoencoderDC) and the CLIP text encoder, for tests.

The real weights cannot be fetched here; these have the same classes and file layouts, a few thousand parameters,
and run in milliseconds on the CPU.
"""
import json
import os
import string

import torch
from diffusers import AutoencoderDC, AutoencoderKL
from transformers import CLIPTextConfig, CLIPTextModel

# Two levels (one downsampling: latents are images / 2), 4 latent channels as in Stable Diffusion.
TINY_AUTOENCODER = dict(block_out_channels=(8, 16), down_block_types=('DownEncoderBlock2D',) * 2,
                        up_block_types=('UpDecoderBlock2D',) * 2, layers_per_block=1, norm_num_groups=4,
                        latent_channels=4, sample_size=16)

# SD3 / FLUX.1 style: no quant convolutions, 16 channels in the real ones, and a shift besides the scale.
TINY_SHIFTED_AUTOENCODER = dict(TINY_AUTOENCODER, use_quant_conv=False, use_post_quant_conv=False, latent_channels=3,
                                scaling_factor=1.5305, shift_factor=0.0609)
# DC-AE style: a deterministic encoder, three levels (latents are images / 4), 8 channels, an EfficientViT level.
TINY_DC_AUTOENCODER = dict(
    latent_channels=8, attention_head_dim=4, encoder_block_types=('ResBlock', 'ResBlock', 'EfficientViTBlock'),
    decoder_block_types=('ResBlock', 'ResBlock', 'EfficientViTBlock'), encoder_block_out_channels=(8, 16, 16),
    decoder_block_out_channels=(8, 16, 16), encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
    encoder_qkv_multiscales=((), (), (5,)), decoder_qkv_multiscales=((), (), (5,)), upsample_block_type='interpolate',
    downsample_block_type='conv', decoder_norm_types='rms_norm', decoder_act_fns='silu', scaling_factor=0.4)

START, END = '<|startoftext|>', '<|endoftext|>'
WORDS = ('cat', 'dog', 'sat')  # single tokens in the tiny vocabulary; other words split into letters
TEXT_HIDDEN_SIZE = 32


def tiny_autoencoder(seed: int = 0) -> AutoencoderKL:
    """An ``AutoencoderKL`` of ``TINY_AUTOENCODER`` with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    return AutoencoderKL(**TINY_AUTOENCODER).eval()


def tiny_shifted_autoencoder(seed: int = 0) -> AutoencoderKL:
    """An ``AutoencoderKL`` of ``TINY_SHIFTED_AUTOENCODER`` with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    return AutoencoderKL(**TINY_SHIFTED_AUTOENCODER).eval()


def tiny_dc_autoencoder(seed: int = 0) -> AutoencoderDC:
    """An ``AutoencoderDC`` of ``TINY_DC_AUTOENCODER`` with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    return AutoencoderDC(**TINY_DC_AUTOENCODER).eval()


def save_tiny_autoencoder(path, seed: int = 0, make=tiny_autoencoder) -> str:
    """A diffusers autoencoder folder (config.json + weights) of ``make(seed)`` at ``path``, loadable by
    ``load_autoencoder``."""
    make(seed).save_pretrained(path)
    return str(path)


def write_tokenizer(path) -> dict:
    """vocab.json and merges.txt of a small CLIP-style BPE vocabulary in ``path``: the two special tokens, the
    letters (inside a word and with the ``</w>`` word ending) and merges that make ``WORDS`` single tokens."""
    os.makedirs(path, exist_ok=True)
    letters = string.ascii_lowercase
    tokens = [START, END] + list(letters) + [c + '</w>' for c in letters]
    merges = []
    for word in WORDS:
        merges += [f'{word[0]} {word[1]}', f'{word[:2]} {word[2]}</w>']
        tokens += [word[:2], word + '</w>']
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    with open(os.path.join(path, 'vocab.json'), 'w') as f:
        json.dump(vocab, f)
    with open(os.path.join(path, 'merges.txt'), 'w') as f:
        f.write('#version: 0.2\n' + '\n'.join(dict.fromkeys(merges)) + '\n')
    return vocab


def tiny_text_config(vocab_size: int, max_position_embeddings: int = 16) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=TEXT_HIDDEN_SIZE, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=max_position_embeddings,
                          bos_token_id=0, eos_token_id=1, pad_token_id=1)


def save_tiny_text_encoder(path, max_position_embeddings: int = 16, seed: int = 0) -> str:
    """A folder laid out like a downloaded CLIP text model (config.json, model.safetensors, vocab.json,
    merges.txt), loadable by ``load_text_encoder``; ``max_position_embeddings=77`` allows the real max_length."""
    vocab = write_tokenizer(path)
    torch.manual_seed(seed)
    CLIPTextModel(tiny_text_config(len(vocab), max_position_embeddings)).save_pretrained(path)
    return str(path)
