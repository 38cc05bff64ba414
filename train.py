"""Train a pixel-space diffusion model.

    python train.py --config=configs/digits_uvit_tiny.py
    accelerate launch --multi_gpu --num_processes 4 --mixed_precision bf16 train.py \
        --config=configs/cifar10_uvit_small.py [--config.train.batch_size=256] [--workdir=DIR]

Re-running with the same work directory resumes from its latest checkpoint.
"""
from libs.entrypoints import run_training

if __name__ == '__main__':
    run_training('pixel')
