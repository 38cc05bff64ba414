"""U-ViT-S/4 on CelebA 64x64 (the paper's crop), unconditional (44.3M parameters; FID 2.87)."""
from libs.config import d, resolve


def get_config():
    return resolve(d(
        seed=1234,
        pred='noise_pred',
        train=d(n_steps=500000, batch_size=128, mode='uncond', log_interval=10, eval_interval=5000,
                save_interval=50000),
        optimizer=d(name='adamw', lr=0.0002, weight_decay=0.03, betas=(0.99, 0.99)),
        lr_scheduler=d(name='customized', warmup_steps=5000),
        nnet=d(name='uvit', img_size=64, patch_size=4, embed_dim=512, depth=12, num_heads=8, mlp_ratio=4,
               qkv_bias=False, mlp_time_embed=False, num_classes=-1),
        dataset=d(name='celeba64', path='assets/datasets/celeba', resolution=64),
        sample=d(sample_steps=1000, n_samples=50000, mini_batch_size=500, algorithm='euler_maruyama_sde', path=''),
    ))
