"""CLIP features of the empty prompt "", the unconditional context of classifier-free guidance.

    python scripts/extract_empty_feature.py --out=assets/datasets/mscoco256_features

Writes <out>/empty_context.npy (77, D).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from libs.latent import extract  # noqa: E402
from libs.cli import parse_flags, run, setup_logging  # noqa: E402

flags.DEFINE_string('out', 'assets/datasets/mscoco256_features', 'The MS-COCO feature root.')
flags.DEFINE_string('text_encoder', extract.DEFAULT_TEXT_ENCODER, 'The CLIP ViT-L/14 folder (text model).')
FLAGS = flags.FLAGS


def main(_argv):
    setup_logging()
    extract.extract_empty_context(FLAGS.out, FLAGS.text_encoder)


if __name__ == '__main__':
    app.run(lambda argv: run(main, argv), flags_parser=parse_flags)
