"""HybViT (Yang et al. 2022) on the 8x8 digits, CPU-sized: one GenViT trained as a classifier and an unconditional
diffusion model at once (cross-entropy on the batch + alpha * L_simple on the same clean batch).

Measured on the shared 2-core CPU with other jobs running (times are upper bounds): test accuracy of the EMA
classifier on the 359 held-out digits, Frechet distance of 1000 unconditional samples (DPM-Solver++, 25 NFE) in
the digit classifier's features (real digits ~2.6, real digits + N(0, 0.5^2) noise ~80, Gaussian noise ~730):

==========================================================  =====  ==========  ========  =======
run (GenViT 128 wide, depth 6, patch 2, 0.83M parameters)   steps  wall time   test acc  Frechet
==========================================================  =====  ==========  ========  =======
before: alpha 1, lr 1e-3, EMA 0.99, batch 128                 600  --            0.91     ~400
alpha 100, lr 1e-3, EMA 0.99, batch 128                      1000  24 min (a)    0.928    176.7
alpha 100, lr 2e-3, EMA 0.995, batch 128                     1000   9 min (a)    0.961    104.5
alpha 100, lr 2e-3, EMA 0.995, batch 128                     1500  17 min (a)    0.958     35.6
alpha 100, lr 2e-3, EMA 0.995, batch 64                      1200   5.3 min (b)  0.967     84.3
alpha 100, lr 2e-3, EMA 0.995, batch 32                      2000   5.2 min (b)  0.978     47.1
  the same, seed 7                                           2000   3.4 min (b)  0.969     51.4
this config (alpha 100, lr 2e-3, EMA 0.995, batch 64)        2000   6.0 min (b)  0.967     26.5
  the same, default two threads                              2000   4.4 min (c)  0.964     27.2
==========================================================  =====  ==========  ========  =======
(a) one thread, load 5-9 on the two cores; (b) one thread, load 2-3; (c) ``python train.py
--config=configs/digits_hybvit.py`` from start to final score, with one other job on the machine.

What mattered: alpha 100 (the paper's default; alpha 1 left the denoiser undertrained, samples were blobs), a
higher learning rate, and more, smaller steps for the same compute. Departures from the paper's CIFAR recipe, for
a few CPU minutes: a smaller network, AdamW instead of SGD, no augmentation of the classification batch (a 1-pixel
shift of an 8x8 digit slowed learning: 0.87 vs 0.95 test accuracy after 800 steps of a small GenViT), and x0
prediction (see digits_uvit_tiny.py for why). The hybrid U-ViT of the same width (digits_hybrid_uvit.py) reached
60.9 at the same settings with batch 128 for 1500 steps.
"""
from libs.config import d, resolve


def get_config():
    return resolve(d(
        seed=1234,
        pred='x0_pred',
        train=d(n_steps=2000, batch_size=64, mode='uncond', log_interval=50, eval_interval=1000, save_interval=1000,
                ema_rate=0.995, num_workers=0, keep_ckpts=2, grid_size=100),
        objective=d(name='hybrid', alpha=100.0, augment='none'),
        optimizer=d(name='adamw', lr=0.002, weight_decay=0.03, betas=(0.9, 0.999)),
        lr_scheduler=d(name='cosine', warmup_steps=50),
        nnet=d(name='genvit', img_size=8, patch_size=2, in_chans=1, embed_dim=128, depth=6, num_heads=4,
               mlp_ratio=2.0, num_classes=10),
        schedule=d(name='cosine'),
        dataset=d(name='digits'),
        sample=d(sample_steps=25, n_samples=1000, mini_batch_size=500, algorithm='dpm_solver++', path=''),
        eval=d(metric='digits', train_n_samples=500, train_algorithm='dpm_solver++', train_sample_steps=25),
    ))
