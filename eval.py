"""Evaluate a trained network: the sample score (default), or a GenViT / HybViT evaluation mode.

    accelerate launch --multi_gpu --num_processes 4 eval.py --config=configs/cifar10_uvit_small.py \
        --nnet_path=assets/cifar10_uvit_small.pth [--config.sample.algorithm=dpm_solver --config.sample.sample_steps=50]
        [--config.sample.path=DIR to keep the samples as PNG files]
    python eval.py --config=configs/digits_hybvit.py --nnet_path=CKPT_DIR --eval=test_clf
    python eval.py --config=configs/digits_edm_uvit.py --nnet_path=CKPT_DIR --eval=linear_probe --grid

--eval=sample (the default) samples ``config.sample.n_samples`` and scores them (FID, or the digit score); sweep scores
that over samplers x NFE (config.eval.sweep_algorithms, sweep_nfes); test_clf,
gen, nll, cali, ood and attack evaluate GenViT / HybViT (libs/evaluation/, docs/hybvit.md); linear_probe (--grid),
contrastive and noisy_clf are DDAE's evaluations of the network's features (config.probe, docs/ddae.md). Every mode
prints its numbers and writes them, with every setting that changes them, as eval_*.json next to the weights.
"""
from libs.entrypoints import run_evaluation

if __name__ == '__main__':
    run_evaluation(('pixel',))
