"""Reference FID statistics (Inception mu/sigma as .npz; with --spatial also sFID's mu_s/sigma_s, which
libs/metrics/reference.py reads) for a dataset of the suite or a folder of images.

    python scripts/compute_fid_stats.py --config=configs/X.py --out=assets/fid_stats/X.npz
    python scripts/compute_fid_stats.py --config=configs/mscoco_uvit_small.py --config.dataset.name=mscoco \
        --config.dataset.path=assets/datasets/coco --split=val --out=assets/fid_stats/fid_stats_mscoco256_val.npz
    python scripts/compute_fid_stats.py --folder=DIR [--resolution=64] --out=stats.npz
    python scripts/compute_fid_stats.py ... --spatial   # also mu_s, sigma_s: sFID against these statistics
    accelerate launch scripts/compute_fid_stats.py ...   # images split across processes
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from libs.cli import define_config_flag, parse_flags, run  # noqa: E402
from libs.errors import UserError  # noqa: E402

define_config_flag('Training config whose config.dataset gives the images.')
flags.DEFINE_string('folder', None, 'A folder of PNG/JPEG images (instead of --config).')
flags.DEFINE_string('out', None, 'Where to write the .npz statistics (keys mu, sigma).')
flags.DEFINE_string('inception', None, 'FID Inception weights file (default: assets/fid_inception/ or torch hub).')
flags.DEFINE_integer('dims', 2048, 'Inception feature size: 64, 192, 768 or 2048 (the standard FID).')
flags.DEFINE_integer('batch_size', 50, 'Images per Inception batch and process.')
flags.DEFINE_integer('resolution', None, 'With --folder: center-crop and resize every image to this size.')
flags.DEFINE_integer('num_workers', 0, 'Data loader workers per process.')
flags.DEFINE_boolean('spatial', False, "Also sFID's statistics of the spatial features (mu_s, sigma_s), from the "
                     'same pass; needs --dims=2048.')
flags.DEFINE_string('split', 'train', "With --config: the dataset split ('val' for MS-COCO's text-to-image FID).")
FLAGS = flags.FLAGS


def _images():
    if (FLAGS.config is None) == (FLAGS.folder is None):
        raise UserError('give exactly one of --config (a dataset of the suite) and --folder (a folder of images)')
    if FLAGS.folder is not None:
        from libs.data.datasets import ImageFolder
        return ImageFolder(FLAGS.folder, FLAGS.resolution)
    if 'dataset' not in FLAGS.config:
        raise UserError('the config has no `dataset` field to take the images from')
    from libs.data import build_dataset
    return build_dataset(FLAGS.config.dataset, split=FLAGS.split)


def compute(_argv):
    from accelerate import Accelerator

    from libs.metrics.fid import InceptionFeatures, dataset_statistics, save_stats

    if not FLAGS.out:
        raise UserError('--out is required (where to write the statistics, e.g. assets/fid_stats/NAME.npz)')
    if FLAGS.spatial and FLAGS.dims != 2048:
        raise UserError(f"--spatial takes sFID's features inside the full network: it needs --dims=2048, not "
                        f'{FLAGS.dims}')
    accelerator = Accelerator()
    images = _images()
    features = InceptionFeatures.from_file(FLAGS.inception, FLAGS.dims, accelerator.device, FLAGS.batch_size)
    stats = dataset_statistics(images, features, accelerator, FLAGS.batch_size, FLAGS.num_workers,
                               spatial=FLAGS.spatial)
    if accelerator.is_main_process:
        save_stats(FLAGS.out, *stats[:2], **dict(zip(('mu_s', 'sigma_s'), stats[2:])))
        kinds = f'{stats[0].shape[0]} features' + (f', {stats[2].shape[0]} spatial' if FLAGS.spatial else '')
        print(f'wrote statistics of {len(images)} images ({kinds}) to {FLAGS.out}')
    accelerator.wait_for_everyone()


if __name__ == '__main__':
    app.run(lambda argv: run(compute, argv), flags_parser=parse_flags)
