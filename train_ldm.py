"""Train a latent diffusion model on stored autoencoder features (ImageNet 256 / 512; any autoencoder of
libs/latent/autoencoder.py: Stable Diffusion's, SD3's, FLUX's, DC-AE's).

    accelerate launch scripts/extract_imagenet_feature.py --resolution 256 --path <ImageNet>/train \
        --out assets/datasets/imagenet256_features                      # once
    accelerate launch --multi_gpu --num_processes 8 --mixed_precision fp16 train_ldm.py \
        --config=configs/imagenet256_uvit_large.py [--workdir=DIR]

The U-ViT-L configs use the continuous-time VP SDE, as the release's train_ldm.py; the U-ViT-H configs the discrete
1000-step Stable Diffusion schedule, as its train_ldm_discrete.py (``--config.schedule.name=`` switches either).
Re-running with the same work directory resumes.
"""
from libs.entrypoints import run_training

if __name__ == '__main__':
    run_training('latent')
