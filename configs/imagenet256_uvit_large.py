"""U-ViT-L/2 on ImageNet 256x256 latents, class-conditional with classifier-free guidance (286.8M parameters;
FID 3.40 with guidance scale 0.4 in the paper).

Trains on stored autoencoder moments (scripts/extract_imagenet_feature.py): `accelerate launch train_ldm.py
--config=configs/imagenet256_uvit_large.py`. Label 1000 of the 1001-way embedding means "no class"; training drops
the label at rate 0.15 and sampling guides with eps_c + 0.4 (eps_c - eps_u).
"""
from libs.config import d, resolve


def get_config():
    return resolve(d(
        seed=1234,
        pred='noise_pred',
        autoencoder=d(pretrained_path='assets/stable-diffusion/autoencoder_kl.pth'),  # its scale 0.18215
        train=d(n_steps=300000, batch_size=1024, mode='cond', p_uncond=0.15, log_interval=10, eval_interval=5000,
                save_interval=50000, grid_size=50),
        optimizer=d(name='adamw', lr=0.0002, weight_decay=0.03, betas=(0.99, 0.99)),
        lr_scheduler=d(name='customized', warmup_steps=5000),
        nnet=d(name='uvit', img_size=32, patch_size=2, in_chans=4, embed_dim=1024, depth=20, num_heads=16,
               mlp_ratio=4, qkv_bias=False, mlp_time_embed=False, num_classes=1001, use_checkpoint=True),
        dataset=d(name='imagenet_features', path='assets/datasets/imagenet256_features'),
        sample=d(sample_steps=50, n_samples=50000, mini_batch_size=50, algorithm='dpm_solver', scale=0.4, path=''),
    ))
