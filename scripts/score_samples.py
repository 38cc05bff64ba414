"""The numbers papers report, for samples given as files: FID, sFID, Inception Score, precision, recall (as ADM's
evaluator computes them), KID and FD-DINOv2, from one pass of each network, against ADM's reference batches, the
U-ViT release's statistics or a folder of images. One command, one JSON (``eval_files_<name>_n<N>_<metrics>.json``
beside the samples, with every setting: the reference and its SHA-256, the networks, k, the IS split, the KID
subsets; ``<metrics>`` is ``fid`` or the metrics joined by '-').

    python scripts/score_samples.py --samples=samples.npz --reference=VIRTUAL_imagenet256_labeled.npz \
        --metrics=fid,sfid,is,prec,recall
    python scripts/score_samples.py --samples=DIR_OF_PNGS \
        --reference=assets/fid_stats/fid_stats_cifar10_train_pytorch.npz
    accelerate launch scripts/score_samples.py ...   # images split across processes

Samples: a folder of images, or an .npz whose arr_0 holds uint8 images (N, H, W, C) (ADM's sample batches).
``scripts/compute_fid.py`` is the same command under its old name (``--ref_stats`` is ``--reference``).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from libs.cli import parse_flags, run, setup_logging  # noqa: E402

flags.DEFINE_string('samples', None, 'A folder of images, or an .npz whose arr_0 holds uint8 images (N, H, W, C).')
flags.DEFINE_string('reference', None, 'An .npz of statistics (mu, sigma [, mu_s, sigma_s]), an ADM reference batch '
                    '(.npz with arr_0, with or without statistics) or a folder of images.')
flags.DEFINE_string('ref_stats', None, 'The old name of --reference.')
flags.DEFINE_string('metrics', 'fid,is', 'Comma-separated: fid, sfid, is, prec, recall, kid, fd_dinov2.')
flags.DEFINE_string('inception', '', 'FID Inception weights file (default: assets/fid_inception/ or torch hub).')
flags.DEFINE_string('dinov2', '', 'DINOv2 folder for fd_dinov2 (default: assets/dinov2-vitl14/).')
flags.DEFINE_string('out', '', 'Folder for the JSON (default: beside the samples).')
flags.DEFINE_integer('batch_size', 50, 'Images per network call and process.')
flags.DEFINE_integer('is_splits', 0, 'Inception Score over this many equal parts (10: improved-GAN, HybViT); '
                     '0: consecutive parts of --is_split_size.')
flags.DEFINE_integer('is_split_size', 5000, 'Inception Score: samples per part (ADM: 5000).')
flags.DEFINE_integer('pr_k', 3, 'Precision and recall: the k of the k-nearest-neighbour radii (ADM: 3).')
flags.DEFINE_integer('kid_subsets', 100, 'KID: number of random subsets.')
flags.DEFINE_integer('kid_subset_size', 1000, 'KID: features per subset.')
flags.DEFINE_integer('kid_seed', 0, 'KID: seed of the subsets.')
flags.DEFINE_bool('check_reference', False, 'Also recompute the statistics stored in a reference batch (mu, mu_s) '
                  'from its images and report the distance: with the real Inception weights, a check of the layers.')
flags.mark_flags_as_required(['samples'])
FLAGS = flags.FLAGS


def main(_argv):
    from libs.errors import UserError
    from libs.evaluation.sample_files import score_sample_files
    from libs.metrics.metric_set import MetricSettings
    setup_logging()
    if (FLAGS.reference is None) == (FLAGS.ref_stats is None):
        raise UserError('give the reference as --reference (or its old name --ref_stats), once')
    settings = MetricSettings(metrics=FLAGS.metrics, inception_path=FLAGS.inception, dinov2_path=FLAGS.dinov2,
                              is_splits=FLAGS.is_splits, is_split_size=FLAGS.is_split_size, pr_k=FLAGS.pr_k,
                              kid_subsets=FLAGS.kid_subsets, kid_subset_size=FLAGS.kid_subset_size,
                              kid_seed=FLAGS.kid_seed, batch_size=FLAGS.batch_size)
    result = score_sample_files(FLAGS.samples, FLAGS.reference or FLAGS.ref_stats, settings, FLAGS.out,
                                FLAGS.check_reference)
    if result:
        print(' '.join(f'{k}={v:.6g}' for k, v in result.items()))


if __name__ == '__main__':
    app.run(lambda argv: run(main, argv), flags_parser=parse_flags)
