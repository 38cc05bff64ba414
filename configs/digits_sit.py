"""Flow matching (SiT's recipe, Ma et al. 2024) on the bundled 8x8 digits: the default run's U-ViT and budget
(configs/digits_uvit_tiny.py) trained with the linear interpolant x_t = (1 - t) x_0 + t eps and velocity prediction,
the network regressing dx_t / dt = eps - x_0 at training times uniform in [0, 1] (SiT's loss, unweighted).

Everything else is read from the default run's config: width 128, depth 4, MLP ratio 2, 2000 steps of batch 64,
AdamW at 2e-3 with cosine decay, EMA 0.995, 10% label dropout, guidance 0.5, the digit score. The U-ViT sees 1000 t
(``schedule.time_scale``), the range of the default run's 1000-step cosine schedule, rather than SiT's 1 - t in
[0, 1], whose sinusoidal time features barely vary over a step of the low frequencies.

Sampler: SiT's ODE by Heun's method (``flow_heun``) at 10 network evaluations, from t = 1 (a velocity model is
finite there), second order in closed form (tests/test_flow.py). Measured once on a shared 2-core Zen 5 with one
thread (BENCHMARKS.md, "Flow matching on the digits"): 186 CPU seconds, digit accuracy 0.989 and Fréchet distance
13.6, against 200 s and 0.989 / 25.6 for the default run there; at 10 NFE DPM-Solver++ and UniPC score within 1.6 of
it, and it is within 0.5 of its own 20-NFE score.
"""
from configs.digits_uvit_tiny import get_config as default_run_config
from libs.config import d, resolve


def get_config():
    config = default_run_config()
    config.pred = 'velocity'
    config.schedule = d(name='linear', time_sampling='uniform', time_scale=1000.0, time_offset=0.0)
    config.sample.update(algorithm='flow_heun', sample_steps=10)
    config.eval.update(train_algorithm='flow_heun', train_sample_steps=10)
    return resolve(config)
