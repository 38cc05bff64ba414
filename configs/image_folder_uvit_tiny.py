"""A first try on your own images, on a CPU: a small unconditional U-ViT on any folder of images at 32x32.

    python train.py --config=configs/image_folder_uvit_tiny.py --config.dataset.path=/data/my_images

The digits' recipe (configs/digits_uvit_tiny.py: width 128, depth 4, MLP ratio 2, x0 prediction, the cosine
schedule, AdamW at 2e-3 with cosine decay, EMA 0.995) on 3 x 32 x 32 images in 64 patches of 4 x 4 (0.75M
parameters). What keeps it short on a CPU: 1000 steps of batch 32, a 16-image sample grid at the end (and every 500
steps), UniPC at 10 NFE, no score during training (``eval.train_n_samples=0``) and a final score of 1000 samples
that runs only once reference statistics exist (``dataset.fid_stats``, written by scripts/compute_fid_stats.py
--folder=... --resolution=32; without them it is skipped with one line). Classes: add
``--config.dataset.labels_from_subfolders=True --config.train.mode=cond --config.nnet.num_classes=K+1`` for K
subfolders (the extra label is the "no class" one that ``train.p_uncond`` drops labels to).
"""
from libs.config import d, resolve


def get_config():
    return resolve(d(
        seed=1234,
        pred='x0_pred',
        train=d(n_steps=1000, batch_size=32, mode='uncond', log_interval=50, eval_interval=500, save_interval=500,
                ema_rate=0.995, keep_ckpts=2, grid_size=16),
        optimizer=d(name='adamw', lr=0.002, weight_decay=0.03, betas=(0.9, 0.999)),
        lr_scheduler=d(name='cosine', warmup_steps=50),
        nnet=d(name='uvit', img_size=32, patch_size=4, in_chans=3, embed_dim=128, depth=4, num_heads=4,
               mlp_ratio=2, qkv_bias=False, mlp_time_embed=False, num_classes=-1),
        schedule=d(name='cosine'),
        dataset=d(name='image_folder', path='', resolution=32, labels_from_subfolders=False, fid_stats='',
                  random_flip=True),
        sample=d(sample_steps=10, n_samples=1000, mini_batch_size=250, algorithm='unipc', path=''),
        eval=d(metric='fid', train_n_samples=0, train_algorithm='unipc', train_sample_steps=10),
    ))
