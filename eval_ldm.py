"""Sample a latent (ImageNet 256/512) or text-to-image (MS-COCO) model and score the decoded images with FID.

    accelerate launch --multi_gpu --num_processes 8 eval_ldm.py --config=configs/imagenet256_uvit_huge.py \
        --nnet_path=assets/imagenet256_uvit_huge.pth [--config.sample.sample_steps=50 --config.sample.scale=0.4]
        [--config.sample.path=DIR to keep the images as PNG files]

DPM-Solver with 50 steps by default; latents are decoded by the autoencoder in mini-batches of
config.autoencoder.decode_batch_size. Text-to-image models sample with random MS-COCO validation captions (extracted
by scripts/extract_mscoco_feature.py --split val) and guide against the empty prompt. The FID is printed and written,
with every setting that changes it, as eval_*.json next to the weights.
"""
from libs.entrypoints import run_evaluation

if __name__ == '__main__':
    run_evaluation(('latent', 'text'))
