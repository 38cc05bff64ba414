"""Discrete-state diffusion on the bundled 8x8 digits: each pixel is one of its 17 values (0..16), corrupted by a
continuous-time Markov chain and restored by tau-leaping (Campbell et al. 2022; libs/diffusion/ctmc.py).

The chain is the absorbing ("masked") one: each pixel is replaced by a mask state at the log-linear rate, so that
it is still unmasked at time t with probability 1 - (1 - 0.001) t, and the loss is the masked-diffusion ELBO
(Shi et al. 2024; Sahoo et al. 2024): the cross-entropy of the masked pixels, weighted by 1 / t. The network sees
[value, mask] per pixel (two input channels) and returns (B, 1, 8, 8, 17) logits of p(x_0 | x_t); it is the
default run's U-ViT (configs/digits_uvit_tiny.py: width 128, depth 4, MLP ratio 2, patch 2) with the discrete
head, and the rest of the recipe is the default run's, read from it: 2000 steps of batch 64, AdamW at 2e-3 with
cosine decay, EMA 0.995, 10% label dropout for classifier-free guidance, which acts on the logits here (scale 0.5).

Sampler: tau-leaping with 25 steps (and the final argmax), for the final score and the one at step 1000. On this
network's checkpoint the digit accuracy is 0.98-0.99 from 10 steps to 1000 (BENCHMARKS.md, "DiT and discrete-state
diffusion on the digits", 300 samples a point), and 50 steps made the run 7 min 49 s on the slowest 2-core CPU
(0.990 / 8.8). BENCHMARKS.md also has this chain against Campbell et al.'s Gaussian-target rate on the same network
and budget.
"""
from configs.digits_uvit_tiny import get_config as default_run_config
from libs.config import resolve


def get_config():
    config = default_run_config()
    config.framework = 'ctmc'    # config.schedule and config.pred are not read
    config.ctmc.update(num_states=17, rate='absorbing', profile='log_linear', final_kept=1e-3)
    config.loss.update(name='masked', min_time=0.01)
    config.nnet.update(num_states=17, in_chans=2, out_chans=1)
    config.sample.update(algorithm='tau_leaping', sample_steps=25, scale=0.5, min_t=0.01, is_ordinal=False)
    config.eval.update(train_algorithm='tau_leaping', train_sample_steps=25)
    return resolve(config)
