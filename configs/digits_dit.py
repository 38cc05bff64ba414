"""A small DiT (libs/nets/dit.py, the release's blocks: adaLN-Zero, fixed sin-cos positions, labels dropped inside
the network) on the bundled 8x8 digits in pixel space, with the default run's recipe, so that the two backbones
compare at equal forward FLOPs: hidden 128, depth 4, MLP ratio 4, patch 2 (16 tokens) costs 26.7 MFLOP per image,
the default U-ViT 26.8.

The recipe is read from configs/digits_uvit_tiny.py: 2000 steps of batch 64, AdamW at 2e-3 with cosine decay, EMA
0.995, the cosine schedule, x0 prediction, UniPC at 10 NFE, guidance 0.5, the digit score. DiT's conventions beside
it: labels are dropped inside the network (``class_dropout_prob`` 0.1; the "no class" row is label 10, which
guidance uses, so ``train.p_uncond`` is 0), and the network sees the step index n - 1 (``schedule.time_offset``).

DiT's learned variance (``learn_sigma``, ``config.learned_variance``, the ``ddpm_ancestral_learned`` sampler) is
left off here: in this CPU budget its variance output drifts far outside [-1, 1] at the low-noise steps, where the
bound gives it almost no gradient on the full chain, and a 25-step respaced chain then samples with a blown-up
variance (digit accuracy 0.13 after 1500 steps, BENCHMARKS.md). configs/imagenet256_dit_xl2.py trains it as DiT
does.
"""
from configs.digits_uvit_tiny import get_config as default_run_config
from libs.config import d, resolve


def get_config():
    config = default_run_config()
    config.nnet = d(name='dit', input_size=8, patch_size=2, in_channels=1, hidden_size=128, depth=4, num_heads=4,
                    mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=10, learn_sigma=False)
    config.train.p_uncond = 0.0
    config.schedule.time_offset = -1
    return resolve(config)
