"""The default run: a small class-conditional U-ViT on scikit-learn's bundled 8x8 digits (offline, CPU).

Sized to finish within 10 minutes on the slowest 2-core CPU seen (an AMD EPYC of the first generation, AVX2 at half
width: 65 GFLOP/s in a float32 matmul) and scored at the end with the offline digit classifier (accuracy on the
conditioning labels, Frechet distance in the classifier's features). The recipe, and what each change bought
(BENCHMARKS.md, "The default run: recipes against wall time", has the table with three seeds):

- A narrower, shallower network: width 128, depth 4 (five blocks), MLP ratio 2, 0.73M parameters instead of the
  4.3M of width 192 / depth 8 / ratio 4. A forward pass costs 26 MFLOP instead of 154, so 2000 steps of batch 64
  (more, smaller steps) cost 0.14x the training compute of the old 1200 x 128, and the Frechet distance fell from
  33 to about 20.
- The noise schedule and learning rate of the digits HybViT (configs/digits_hybvit.py): the cosine schedule, AdamW
  at 2e-3 with cosine decay, EMA 0.995.
- Classifier-free guidance: 10% of the training labels are replaced by the "no class" label (num_classes = 10 + 1)
  and samples are guided with scale 0.5. The small network alone put 0.93-0.95 of its samples in their class;
  guided, 0.99, at the same Frechet distance.
- The network predicts x0 rather than the noise: a noise-predicting net's high-noise error is multiplied by
  1/alpha(t) (about 150 at t = 1 on the VP SDE), and after a few hundred CPU steps its samples drift off the data.
  v prediction and Min-SNR-5 weighting were measured too and were worse here (BENCHMARKS.md).

Sampler: UniPC (``unipc``, UniPC-3 with its corrector) at 10 NFE, for the final score and the one at step 1000.
On this network's checkpoint (docs/digits_nfe.md, 1000 samples per point) UniPC and DPM-Solver++ reach their
50-NFE score by 10 NFE (Frechet distance 23.2 and 22.8 against 22.7 and 22.4; accuracy within 0.003), so 25 NFE
would cost 2.5x the sampling time for nothing; at 5 NFE both lose 7-9. Of the two, UniPC has half the error of
DPM-Solver++ at 10 NFE on Gaussian data in closed form (docs/solvers.md). The release's DPM-Solver-3
(singlestep) needs 15 NFE here. Euler on the probability-flow ODE scores as well even at 5 NFE on these 8x8
digits, but its closed-form error is six times UniPC's: the digit score does not see that error, FID on
larger images may.
"""
from libs.config import d, resolve


def get_config():
    return resolve(d(
        seed=1234,
        pred='x0_pred',
        train=d(n_steps=2000, batch_size=64, mode='cond', log_interval=50, eval_interval=1000, save_interval=1000,
                ema_rate=0.995, num_workers=0, keep_ckpts=2, grid_size=100, p_uncond=0.1),
        optimizer=d(name='adamw', lr=0.002, weight_decay=0.03, betas=(0.9, 0.999)),
        lr_scheduler=d(name='cosine', warmup_steps=50),
        nnet=d(name='uvit', img_size=8, patch_size=2, in_chans=1, embed_dim=128, depth=4, num_heads=4,
               mlp_ratio=2, qkv_bias=False, mlp_time_embed=False, num_classes=11),
        schedule=d(name='cosine'),
        dataset=d(name='digits'),
        sample=d(sample_steps=10, n_samples=1000, mini_batch_size=500, algorithm='unipc', path='', scale=0.5),
        eval=d(metric='digits', train_n_samples=500, train_algorithm='unipc', train_sample_steps=10),
    ))
