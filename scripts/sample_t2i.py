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

from libs import cli  # noqa: E402

FLAGS = flags.FLAGS
cli.define_config_flag('Text-to-image config (configs/mscoco_uvit_small.py).')
flags.DEFINE_string('nnet_path', None, 'Weights file (.pth / .safetensors) or a training checkpoint directory.')
flags.DEFINE_bool('ema', True, 'In a checkpoint directory: use the EMA weights.')
flags.DEFINE_string('prompts', None, 'Text file with one prompt per line.')
flags.DEFINE_integer('n_per_prompt', 4, 'Samples per prompt (one grid row each).')
flags.DEFINE_string('out', 'samples_t2i', 'Output folder.')
flags.DEFINE_integer('seed', None, 'Sampling seed (default: config.seed).')
flags.mark_flags_as_required(['config', 'nnet_path', 'prompts'])


def main(_):
    import torch

    from libs.config import resolve
    from libs.diffusion.conditioning import TextContexts
    from libs.errors import UserError
    from libs.evaluation.harness import EvalRun, draw_samples
    from libs.images import save_grid, save_pngs
    from libs.latent.extract import read_prompts
    from libs.latent.text_encoder import load_text_encoder
    from libs.rng import SampleRandom

    cli.setup_logging()
    config = resolve(FLAGS.config)
    if config.train.mode != 'text':
        raise UserError(f"{FLAGS['config'].config_filename} is not a text-to-image config (train.mode='text')")
    prompts = read_prompts(FLAGS.prompts)
    run = EvalRun.load(config, FLAGS.nnet_path, FLAGS.ema, mode='sample_t2i')
    space = run.space()  # a missing autoencoder fails before the slow part
    encoder = load_text_encoder(config.text_encoder.pretrained_path or None, device=run.device)
    conditioning = TextContexts(encoder.empty_context())
    sampler = run.framework.build_sampler(config.sample)
    seed = config.seed if FLAGS.seed is None else FLAGS.seed

    n = FLAGS.n_per_prompt
    images = []
    for i, prompt in enumerate(prompts):
        context = encoder.encode([prompt]).expand(n, -1, -1)
        random = SampleRandom(seed, range(i * n, (i + 1) * n), run.device)  # image i * n + j: its own generator
        with torch.no_grad(), run.accelerator.autocast():
            latents, _ = draw_samples(run.framework, run.denoiser(), sampler, run.spec.data_shape, conditioning,
                                      random, config.sample.scale, cond={'context': context})
        images.append(space.decode(latents).cpu())
    images = torch.cat(images)
    weights = run.weights
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
