"""Train a pixel-space diffusion model.

    python train.py --config=configs/digits_uvit_tiny.py
    accelerate launch --multi_gpu --num_processes 4 --mixed_precision bf16 train.py \
        --config=configs/cifar10_uvit_small.py [--config.train.batch_size=256] [--workdir=DIR]

Re-running with the same work directory resumes from its latest checkpoint.
"""
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from libs import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration file (configs/*.py).', lock_config=False)
flags.mark_flags_as_required(['config'])
flags.DEFINE_string('workdir', None, 'Output directory (default: workdir/<config>/<overrides>); '
                                     'a re-run with the same directory resumes.')


def main(_):
    from libs.config import resolve
    from libs.training.loop import Trainer
    config = resolve(FLAGS.config)
    workdir = FLAGS.workdir or cli.default_workdir(sys.argv)
    cli.setup_logging(os.path.join(workdir, 'output.log'))
    result = Trainer(config, workdir).fit()
    if result and cli.is_main_process():
        print(f'final score ({config.sample.algorithm}, {config.sample.sample_steps} NFE, '
              f'{config.sample.n_samples} samples, EMA): ' + ' '.join(f'{k}={v:.4f}' for k, v in result.items()))


if __name__ == '__main__':
    app.run(lambda argv: cli.run(main, argv), flags_parser=cli.parse_flags)
