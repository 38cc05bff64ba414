"""Train a text-to-image latent diffusion model (MS-COCO, CLIP ViT-L/14 contexts) on the discrete 1000-step
schedule of Stable Diffusion; the network sees the step index n in 1..1000.

    accelerate launch scripts/extract_mscoco_feature.py --split train ...   # once, and --split val,
    python scripts/extract_empty_feature.py; python scripts/extract_test_prompt_feature.py
    accelerate launch --multi_gpu --num_processes 4 --mixed_precision fp16 train_t2i_discrete.py \
        --config=configs/mscoco_uvit_small.py [--config.nnet.depth=16] [--workdir=DIR]

Re-running with the same work directory resumes.
"""
from libs.entrypoints import run_training

if __name__ == '__main__':
    run_training('text')
