"""Turn your own prompts into images with a text-to-image U-ViT.

    python scripts/sample_t2i.py --config=configs/mscoco_uvit_small.py --nnet_path=assets/mscoco_uvit_small.pth \
        --prompts=prompts.txt [--n_per_prompt=4] [--out=samples_t2i] [--config.sample.scale=1.0]
        [--config.sample.sample_steps=50]

``prompts.txt`` holds one prompt per line. The prompts are encoded with the CLIP text encoder of
``config.text_encoder.pretrained_path``, sampled with ``config.sample`` (DPM-Solver, guidance scale against the empty
prompt) and decoded with ``config.autoencoder``. Writes ``grid.png`` (one row per prompt), one PNG per sample and
``prompts.json`` (which file shows which prompt, with the settings).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from libs import cli  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Text-to-image config (configs/mscoco_uvit_small.py).',
                                lock_config=False)
flags.DEFINE_string('nnet_path', None, 'Weights file (.pth / .safetensors) or a training checkpoint directory.')
flags.DEFINE_bool('ema', True, 'In a checkpoint directory: use the EMA weights.')
flags.DEFINE_string('prompts', None, 'Text file with one prompt per line.')
flags.DEFINE_integer('n_per_prompt', 4, 'Samples per prompt (one grid row each).')
flags.DEFINE_string('out', 'samples_t2i', 'Output folder.')
flags.DEFINE_integer('seed', None, 'Sampling seed (default: config.seed).')
flags.mark_flags_as_required(['config', 'nnet_path', 'prompts'])


def main(_):
    import torch

    from libs.conditioning import TextContexts
    from libs.config import resolve
    from libs.errors import UserError
    from libs.evaluation import load_denoiser, sample_batch, seeded
    from libs.features import read_prompts
    from libs.images import save_grid, save_pngs
    from libs.samplers import build_sampler
    from libs.spaces import LatentSpace
    from libs.text_encoder import load_text_encoder

    cli.setup_logging()
    config = resolve(FLAGS.config)
    if config.train.mode != 'text':
        raise UserError(f"{FLAGS['config'].config_filename} is not a text-to-image config (train.mode='text')")
    prompts = read_prompts(FLAGS.prompts)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if config.train.tf32:
        cli.enable_tf32(device)
    ae = config.autoencoder
    space = LatentSpace(ae.pretrained_path, ae.scale_factor, device, ae.decode_batch_size)
    space.autoencoder  # noqa: B018 -- fail on a missing autoencoder before the slow part
    encoder = load_text_encoder(config.text_encoder.pretrained_path or None, device=device)
    conditioning = TextContexts(encoder.empty_context())
    denoiser, schedule, weights = load_denoiser(config, FLAGS.nnet_path, FLAGS.ema, device=device)
    sampler = build_sampler(config.sample, schedule)
    latent_shape = (config.nnet.in_chans, config.nnet.img_size, config.nnet.img_size)

    n = FLAGS.n_per_prompt
    images = []
    with seeded(config.seed if FLAGS.seed is None else FLAGS.seed, device):
        for prompt in prompts:
            context = encoder.encode([prompt]).expand(n, -1, -1)
            latents = sample_batch(denoiser, sampler, latent_shape, {'context': context}, n, config.sample.scale,
                                   conditioning, device)
            images.append(space.decode(latents).cpu())
    images = torch.cat(images)
    os.makedirs(FLAGS.out, exist_ok=True)
    save_grid(images, os.path.join(FLAGS.out, 'grid.png'), nrow=n)
    save_pngs(images, FLAGS.out, 0)
    record = {
        'weights': weights, 'ema': FLAGS.ema, 'algorithm': config.sample.algorithm,
        'nfe': config.sample.sample_steps, 'guidance_scale': config.sample.scale, 'n_per_prompt': n,
        'prompts': [{'prompt': p, 'files': [f'{i * n + j:06d}.png' for j in range(n)]}
                    for i, p in enumerate(prompts)],
    }
    with open(os.path.join(FLAGS.out, 'prompts.json'), 'w') as f:
        json.dump(record, f, indent=2)
    print(f'{len(images)} images for {len(prompts)} prompts in {FLAGS.out}/ (grid.png: one row per prompt)')


if __name__ == '__main__':
    app.run(lambda argv: cli.run(main, argv), flags_parser=cli.parse_flags)
