"""CLIP features of the prompts shown in sample grids during text-to-image training.

    python scripts/extract_test_prompt_feature.py --out=assets/datasets/mscoco256_features [--prompts=my_prompts.txt]

Writes <out>/test_prompts/prompts.txt and contexts.npy; without --prompts, ten built-in COCO-style captions.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from libs.latent import extract  # noqa: E402
from libs.cli import parse_flags, run, setup_logging  # noqa: E402

flags.DEFINE_string('out', 'assets/datasets/mscoco256_features', 'The MS-COCO feature root.')
flags.DEFINE_string('prompts', None, 'A text file with one prompt per line (default: built-in captions).')
flags.DEFINE_string('text_encoder', extract.DEFAULT_TEXT_ENCODER, 'The CLIP ViT-L/14 folder (text model).')
flags.DEFINE_integer('batch_size', 64, 'Prompts per text-encoder call.')
FLAGS = flags.FLAGS


def main(_argv):
    setup_logging()
    extract.extract_test_prompts(FLAGS.out, FLAGS.prompts, FLAGS.text_encoder, FLAGS.batch_size)


if __name__ == '__main__':
    app.run(lambda argv: run(main, argv), flags_parser=parse_flags)
