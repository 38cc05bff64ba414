"""U-ViT-H/2 on ImageNet 256x256 latents, class-conditional with guidance (500.8M parameters; FID 2.29 with guidance
scale 0.4 and 50 DPM-Solver steps in the paper).

The large recipe with the huge network (no final convolution), label dropout 0.1, 500k steps and the EMA
autoencoder weights (sd-vae-ft-ema, as the release's autoencoder_kl_ema.pth), on the discrete 1000-step Stable
Diffusion schedule (the network sees n in 1..1000): the release trains its U-ViT-H models with
train_ldm_discrete.py and U-ViT-L with the continuous VP SDE of train_ldm.py, so the released H checkpoints sample
correctly only with this schedule. The release samples them with DPM-Solver++ ('fast', time-uniform steps); this
config keeps the suite's 'dpm_solver' preset (DPM-Solver-3 on the noise prediction, log-SNR steps), as
mscoco_uvit_small does.
"""
import os

from libs.config import load_config_file


def get_config():
    config = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'imagenet256_uvit_large.py'))
    config.nnet.update(embed_dim=1152, depth=28, conv=False)
    config.train.update(n_steps=500000, p_uncond=0.1)
    config.autoencoder.pretrained_path = 'assets/stable-diffusion/autoencoder_kl_ema.pth'
    config.schedule.name = 'stable_diffusion'
    return config
