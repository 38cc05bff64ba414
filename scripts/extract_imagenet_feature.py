"""Autoencoder features of the ImageNet training images (and of their mirror images), for latent models: the
moments of a Gaussian encoder (Stable Diffusion, SD3, FLUX), the codes of a deterministic one (DC-AE).

    python scripts/extract_imagenet_feature.py --path=assets/datasets/ImageNet/train --resolution=256
    python scripts/extract_imagenet_feature.py --path=... --resolution=512 \
        --autoencoder=assets/dc-ae-f64c128-in-1.0-diffusers --out=assets/datasets/imagenet512_dcae_f64_features
    accelerate launch --multi_gpu --num_processes 4 scripts/extract_imagenet_feature.py --path=... --resolution=512

Writes <out>/train/ (default out: assets/datasets/imagenet<resolution>_features); re-running resumes.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from libs.latent import extract  # noqa: E402
from libs.cli import parse_flags, run, setup_logging  # noqa: E402

flags.DEFINE_string('path', None, 'The ImageNet train folder: <wnid>/*.JPEG class folders.', required=True)
flags.DEFINE_string('out', None, 'Feature root (default assets/datasets/imagenet<resolution>_features).')
flags.DEFINE_integer('resolution', 256, 'Centre-crop size of the images (256 or 512 for the paper).')
flags.DEFINE_bool('flip', True, 'Also store the features of the mirrored crops (--noflip: not).')
flags.DEFINE_string('autoencoder', extract.DEFAULT_AUTOENCODER,
                    "The release's autoencoder_kl.pth or a diffusers autoencoder folder (AutoencoderKL, "
                    'AutoencoderDC).')
flags.DEFINE_enum('dtype', 'fp32', list(extract.DTYPES), 'Autoencoder precision (features are stored as fp32).')
flags.DEFINE_integer('batch_size', 64, 'Images per autoencoder call and process.')
flags.DEFINE_integer('shard_size', 10000, 'Images per shard (the unit of resuming and of work per process).')
flags.DEFINE_integer('num_workers', 4, 'Image-decoding workers per process.')
FLAGS = flags.FLAGS


def main(_argv):
    setup_logging()
    out = FLAGS.out or f'assets/datasets/imagenet{FLAGS.resolution}_features'
    extract.extract_imagenet(FLAGS.path, out, FLAGS.resolution, FLAGS.autoencoder, FLAGS.flip,
                            FLAGS.batch_size, FLAGS.shard_size, FLAGS.num_workers, FLAGS.dtype)


if __name__ == '__main__':
    app.run(lambda argv: run(main, argv), flags_parser=parse_flags)
