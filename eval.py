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
    from libs.config import resolve
    from libs.evaluation import run_sample_eval
    cli.setup_logging()
    run_sample_eval(resolve(FLAGS.config), FLAGS.nnet_path, FLAGS.ema)


if __name__ == '__main__':
    app.run(lambda argv: cli.run(main, argv), flags_parser=cli.parse_flags)
