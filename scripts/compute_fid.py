"""FID and Inception Score of samples given as files, without a model: a folder of images or an .npz of ``arr_0``
uint8 images (N, H, W, C), the ADM / DiT evaluation layout; the result is written as JSON beside the samples.

    python scripts/compute_fid.py --samples=DIR_OR_NPZ --ref_stats=assets/fid_stats/fid_stats_cifar10_train_pytorch.npz
    accelerate launch scripts/compute_fid.py ...   # images split across processes
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from libs.cli import parse_flags, run, setup_logging  # noqa: E402

flags.DEFINE_string('samples', None, 'A folder of images, or an .npz whose arr_0 holds uint8 images (N, H, W, C).')
flags.DEFINE_string('ref_stats', None, 'Reference statistics (.npz with mu, sigma; scripts/compute_fid_stats.py).')
flags.DEFINE_string('inception', '', 'FID Inception weights file (default: assets/fid_inception/ or torch hub).')
flags.DEFINE_string('out', '', 'Folder for the JSON (default: beside the samples).')
flags.DEFINE_integer('batch_size', 50, 'Images per Inception batch and process.')
flags.DEFINE_integer('is_splits', 10, 'Inception Score splits.')
flags.mark_flags_as_required(['samples', 'ref_stats'])
FLAGS = flags.FLAGS


def main(_argv):
    from libs.evaluation.sample_files import score_sample_files
    setup_logging()
    result = score_sample_files(FLAGS.samples, FLAGS.ref_stats, FLAGS.inception, FLAGS.out, FLAGS.batch_size,
                                FLAGS.is_splits)
    if result:
        print(' '.join(f'{k}={v:.4f}' for k, v in result.items()))


if __name__ == '__main__':
    app.run(lambda argv: run(main, argv), flags_parser=parse_flags)
