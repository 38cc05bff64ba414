"""Sample from a trained network and score the samples (FID, or the digit score for the digits configs).

    accelerate launch --multi_gpu --num_processes 4 eval.py --config=configs/cifar10_uvit_small.py \
        --nnet_path=assets/cifar10_uvit_small.pth [--config.sample.algorithm=dpm_solver --config.sample.sample_steps=50]
        [--config.sample.path=DIR to keep the samples as PNG files]

The score is printed and written, with every setting that changes it, as eval_*.json next to the weights.
"""
from absl import app, flags
from ml_collections import config_flags

from libs import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Configuration file (configs/*.py).', lock_config=False)
flags.DEFINE_string('nnet_path', None, 'Weights file (.pth / .safetensors) or a training checkpoint directory.')
flags.DEFINE_bool('ema', True, 'The weights are EMA weights (in a checkpoint directory: use nnet_ema.pth).')
flags.mark_flags_as_required(['config', 'nnet_path'])


def main(_):
    from accelerate import Accelerator

    from libs.config import resolve
    from libs.data import build_dataset
    from libs.denoiser import CONFIG_PREDICTIONS, Denoiser
    from libs.evaluation import evaluate, make_scorer
    from libs.nnets import build_nnet, load_nnet_weights
    from libs.schedules import build_schedule

    cli.setup_logging()
    config = resolve(FLAGS.config)
    accelerator = Accelerator(mixed_precision=config.mixed_precision or None)
    if config.train.tf32:
        cli.enable_tf32(accelerator.device)
    dataset = build_dataset(config.dataset, split='train')
    scorer = make_scorer(config, dataset, accelerator.device)  # fails early if FID files are missing
    nnet = build_nnet(config.nnet)
    weights = load_nnet_weights(nnet, FLAGS.nnet_path, ema=FLAGS.ema)
    nnet = accelerator.prepare(nnet.eval())
    schedule = build_schedule(config.schedule)
    denoiser = Denoiser(nnet, schedule, CONFIG_PREDICTIONS[config.pred])
    result = evaluate(accelerator, denoiser, schedule, config, config.sample, config.sample.n_samples, dataset,
                      scorer, weights, ema=FLAGS.ema, png_dir=config.sample.path)
    if accelerator.is_main_process:
        print(' '.join(f'{k}={v:.4f}' for k, v in result.items()))


if __name__ == '__main__':
    app.run(lambda argv: cli.run(main, argv), flags_parser=cli.parse_flags)
