"""Autoencoder features of the MS-COCO 2014 images and CLIP features of their captions, for text-to-image models.

    python scripts/extract_mscoco_feature.py --path=assets/datasets/coco --split=train
    python scripts/extract_mscoco_feature.py --path=assets/datasets/coco --split=val
    accelerate launch --multi_gpu --num_processes 4 scripts/extract_mscoco_feature.py --path=... --split=train

Writes <out>/<split>/ (default out: assets/datasets/mscoco<resolution>_features); re-running resumes.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from libs.latent import extract  # noqa: E402
from libs.cli import parse_flags, run, setup_logging  # noqa: E402

flags.DEFINE_string('path', None, 'The COCO 2014 root: train2014/, val2014/, annotations/captions_*2014.json.',
                    required=True)
flags.DEFINE_enum('split', 'train', ['train', 'val'], 'Which COCO 2014 split.')
flags.DEFINE_string('out', None, 'Feature root (default assets/datasets/mscoco<resolution>_features).')
flags.DEFINE_integer('resolution', 256, 'Centre-crop size of the images.')
flags.DEFINE_string('autoencoder', extract.DEFAULT_AUTOENCODER,
                    "The release's autoencoder_kl.pth or a diffusers autoencoder folder (AutoencoderKL, "
                    'AutoencoderDC).')
flags.DEFINE_string('text_encoder', extract.DEFAULT_TEXT_ENCODER, 'The CLIP ViT-L/14 folder (text model).')
flags.DEFINE_enum('dtype', 'fp32', list(extract.DTYPES), 'Autoencoder precision (features are stored as fp32).')
flags.DEFINE_integer('batch_size', 64, 'Images per autoencoder call and process (their captions go to CLIP).')
flags.DEFINE_integer('shard_size', 1000, 'Images per shard (the unit of resuming and of work per process).')
flags.DEFINE_integer('num_workers', 4, 'Image-decoding workers per process.')
FLAGS = flags.FLAGS


def main(_argv):
    setup_logging()
    out = FLAGS.out or f'assets/datasets/mscoco{FLAGS.resolution}_features'
    extract.extract_mscoco(FLAGS.path, out, FLAGS.split, FLAGS.resolution, FLAGS.autoencoder,
                            FLAGS.text_encoder, FLAGS.batch_size, FLAGS.shard_size, FLAGS.num_workers,
                            FLAGS.dtype)


if __name__ == '__main__':
    app.run(lambda argv: run(main, argv), flags_parser=parse_flags)
