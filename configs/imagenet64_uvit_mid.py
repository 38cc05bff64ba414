"""U-ViT-M/4 on ImageNet 64x64, class-conditional (131.0M parameters; FID 5.85 without guidance)."""
from libs.config import d, resolve


def get_config():
    return resolve(d(
        seed=1234,
        pred='noise_pred',
        train=d(n_steps=300000, batch_size=1024, mode='cond', log_interval=10, eval_interval=5000,
                save_interval=50000),
        optimizer=d(name='adamw', lr=0.0003, weight_decay=0.03, betas=(0.99, 0.99)),
        lr_scheduler=d(name='customized', warmup_steps=5000),
        nnet=d(name='uvit', img_size=64, patch_size=4, embed_dim=768, depth=16, num_heads=12, mlp_ratio=4,
               qkv_bias=False, mlp_time_embed=False, num_classes=1000, use_checkpoint=True),
        dataset=d(name='imagenet64', path='assets/datasets/ImageNet', resolution=64),
        sample=d(sample_steps=50, n_samples=50000, mini_batch_size=200, algorithm='dpm_solver', path=''),
    ))
