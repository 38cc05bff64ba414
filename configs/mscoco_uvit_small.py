"""U-ViT-S/2 text-to-image on MS-COCO 256x256 latents with CLIP ViT-L/14 contexts (44.7M parameters; FID 5.95 in
the paper; 5.48 with depth 16: --config.nnet.depth=16).

Discrete 1000-step Stable Diffusion schedule (the network sees the step index n), trained with
`train_t2i_discrete.py`. The text is replaced by the empty prompt's context at rate 0.1, and sampling guides with
eps_c + 1.0 (eps_c - eps_u). The latent scale 0.23010 is the release's value for this model (ImageNet uses 0.18215).
Features: scripts/extract_mscoco_feature.py (train and val), extract_empty_feature.py, extract_test_prompt_feature.py.
"""
from libs.config import d, resolve


def get_config():
    return resolve(d(
        seed=1234,
        pred='noise_pred',
        autoencoder=d(pretrained_path='assets/stable-diffusion/autoencoder_kl.pth', scale_factor=0.23010),
        text_encoder=d(pretrained_path='assets/clip-vit-large-patch14'),
        train=d(n_steps=1000000, batch_size=256, mode='text', p_uncond=0.1, log_interval=10, eval_interval=5000,
                save_interval=50000, grid_size=50),
        optimizer=d(name='adamw', lr=0.0002, weight_decay=0.03, betas=(0.9, 0.9)),
        lr_scheduler=d(name='customized', warmup_steps=5000),
        schedule=d(name='stable_diffusion'),
        nnet=d(name='uvit_t2i', img_size=32, in_chans=4, patch_size=2, embed_dim=512, depth=12, num_heads=8,
               mlp_ratio=4, qkv_bias=False, mlp_time_embed=False, clip_dim=768, num_clip_token=77),
        dataset=d(name='mscoco_features', path='assets/datasets/mscoco256_features'),
        sample=d(sample_steps=50, n_samples=30000, mini_batch_size=50, algorithm='dpm_solver', scale=1.0, path=''),
    ))
