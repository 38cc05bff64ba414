"""Sampling from a trained network and scoring the samples, shared by training and ``eval.py``.

``generate`` splits ``n_samples`` across processes in rounds of ``mini_batch_size`` per process; every round's
samples are scored in-process (Inception activations for FID, or the digit classifier) and optionally written as
PNGs, so no PNG round trip is needed for the score. Results are written as JSON with every setting that changes
the number (sampler, NFE, guidance, EMA, sample count, reference statistics), next to the weights they score.
"""
import contextlib
import json
import logging
import math
import os

import torch
from tqdm.auto import tqdm

from libs.denoiser import Denoiser
from libs.errors import UserError
from libs.fileio import atomic_open
from libs.guidance import bind_condition, classifier_free_guidance
from libs.images import save_pngs
from libs.samplers import build_sampler

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def seeded(seed: int, device):
    """Run a block with its own seeded RNG streams, leaving the caller's (the training run's) untouched."""
    devices = [device] if torch.device(device).type == 'cuda' else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def make_eps_fn(denoiser: Denoiser, cond: dict, scale: float, conditioning):
    """The noise-prediction function a sampler integrates: conditioned on ``cond``, and guided when scale > 0
    (one batched forward pass for the conditional and the unconditional prediction)."""
    if scale > 0:
        return classifier_free_guidance(denoiser.noise, cond, conditioning.null(cond), scale)
    return bind_condition(denoiser.noise, cond)


@torch.no_grad()
def sample_batch(denoiser: Denoiser, sampler, data_shape, cond: dict, n: int, scale: float = 0.0, conditioning=None,
                 device='cpu') -> torch.Tensor:
    """``n`` samples (n, *data_shape) in the model's space (pixels or latents), conditioned on ``cond``."""
    x_T = torch.randn(n, *data_shape, device=device)
    return sampler(make_eps_fn(denoiser, cond, scale, conditioning), x_T)


class Scorer:
    """Accumulates what a metric needs from each batch of samples; ``result()`` on the main process."""

    def __init__(self, metric: str, device, ref_stats: str = '', inception_path: str = ''):
        self.metric = metric
        self.parts = []
        self.labels = []
        if metric == 'fid':
            from libs.metrics import fid
            self.ref_mu, self.ref_sigma = fid.load_stats(ref_stats)
            self.features = fid.InceptionFeatures(fid.load_inception(inception_path or None, device=device))
        elif metric != 'digits':
            raise UserError(f"unknown metric {metric!r}; known: fid, digits")

    def add(self, samples: torch.Tensor, labels) -> None:
        if self.metric == 'fid':
            self.parts.append(torch.from_numpy(self.features(samples)).to(samples.device))
        else:
            self.parts.append(samples.float())
            if labels is not None:
                self.labels.append(labels)

    def local(self):
        return torch.cat(self.parts), (torch.cat(self.labels) if self.labels else None)

    def result(self, gathered: torch.Tensor, labels) -> dict:
        if self.metric == 'fid':
            from libs.metrics import fid
            mu, sigma = fid.activation_statistics(gathered.double().cpu().numpy())
            return {'fid': fid.frechet_distance(mu, sigma, self.ref_mu, self.ref_sigma)}
        from libs.metrics.digits_score import digits_score
        score = digits_score(gathered.cpu(), None if labels is None else labels.cpu())
        result = {'digits_frechet_distance': score['frechet_distance']}
        if score['accuracy'] is not None:  # only class-conditional samples have labels to check
            result['digits_accuracy'] = score['accuracy']
        return result


def generate(accelerator, denoiser: Denoiser, sample_cfg, schedule, data_shape, n_samples: int, mini_batch_size: int,
             conditioning, space, scorer: Scorer = None, png_dir: str = '', seed: int = 0,
             desc: str = 'sample') -> dict:
    """Sample ``n_samples`` across processes, decode them to images (``space``), score them and/or write PNGs.

    ``conditioning`` (libs/conditioning.py) draws each round's conditions. Returns the score on every process.
    """
    sampler = build_sampler(sample_cfg, schedule)
    world, rank = accelerator.num_processes, accelerator.process_index
    rounds = math.ceil(n_samples / (mini_batch_size * world))
    with seeded(seed * 1000003 + rank, accelerator.device):
        for r in tqdm(range(rounds), desc=desc, disable=not accelerator.is_main_process):
            cond, labels = conditioning.draw(mini_batch_size, accelerator.device)
            samples = sample_batch(denoiser, sampler, data_shape, cond, mini_batch_size, sample_cfg.get('scale', 0.0),
                                   conditioning, accelerator.device)
            images = space.decode(samples)
            start = (r * world + rank) * mini_batch_size
            keep = max(0, min(mini_batch_size, n_samples - start))
            if png_dir and keep:
                save_pngs(images[:keep], png_dir, start)
            if scorer is not None:
                scorer.add(images, labels)
    if scorer is None:
        return {}
    local, labels = scorer.local()
    gathered = accelerator.gather(local.contiguous())
    gathered_labels = accelerator.gather(labels.contiguous()) if labels is not None else None
    assert gathered.shape[0] == local.shape[0] * world
    order = gathered_order(world, rounds, mini_batch_size, n_samples).to(gathered.device)
    gathered = gathered[order]
    if gathered_labels is not None:
        gathered_labels = gathered_labels[order]
    result = scorer.result(gathered, gathered_labels) if accelerator.is_main_process else {}
    return broadcast_dict(accelerator, result)


def gathered_order(world: int, rounds: int, mini_batch_size: int, n_samples: int) -> torch.Tensor:
    """Rows of the gathered tensor in sample order, cut to ``n_samples``.

    ``accelerator.gather`` concatenates per process, so row ``rank * rounds * mb + r * mb + i`` holds sample
    ``(r * world + rank) * mb + i`` (the index in the PNG file names); element k of the result is the row of sample k.
    """
    order = torch.arange(world * rounds * mini_batch_size).view(world, rounds, mini_batch_size)
    return order.permute(1, 0, 2).reshape(-1)[:n_samples]


def broadcast_dict(accelerator, result: dict) -> dict:
    """Send the main process's dict of floats to every process (so all return the same score)."""
    if accelerator.num_processes == 1:
        return result
    from accelerate.utils import broadcast_object_list
    box = [result]
    broadcast_object_list(box, from_process=0)
    return box[0]


def settings_record(sample_cfg, n_samples: int, ema: bool, metric: str, ref_stats: str, weights: str) -> dict:
    """Everything that changes a score, stored beside it."""
    return {
        'metric': metric,
        'weights': weights,
        'ema': ema,
        'n_samples': n_samples,
        'algorithm': sample_cfg.algorithm,
        'nfe': sample_cfg.sample_steps,
        'guidance_scale': sample_cfg.get('scale', 0.0),
        'order': sample_cfg.get('order', 0),
        'method': sample_cfg.get('method', ''),
        'skip_type': sample_cfg.get('skip_type', ''),
        'reference_statistics': ref_stats if metric == 'fid' else 'sklearn digits (all 1797)',
    }


def write_result(directory: str, record: dict) -> str:
    """Write one evaluation as JSON beside the weights; the file name carries the settings."""
    name = (f"eval_{record['metric']}_{record['algorithm']}_nfe{record['nfe']}_n{record['n_samples']}"
            f"_scale{record['guidance_scale']:g}_{'ema' if record['ema'] else 'raw'}.json")
    path = os.path.join(directory, name)
    with atomic_open(path, 'w') as f:
        json.dump(record, f, indent=2)
    return path


def ref_stats_path(config, dataset) -> str:
    """config.eval.ref_stats, else the dataset's default reference statistics ('' if neither)."""
    return config.eval.ref_stats or getattr(dataset, 'fid_stats', None) or ''


def make_scorer(config, dataset, device) -> Scorer:
    return Scorer(config.eval.metric, device, ref_stats_path(config, dataset), config.eval.inception_path)


def evaluate(accelerator, denoiser: Denoiser, schedule, config, sample_cfg, n_samples: int, dataset, scorer: Scorer,
             weights_path: str, conditioning, space, ema: bool = True, png_dir: str = '', step=None) -> dict:
    """Sample, score, and write the score with its settings as JSON beside ``weights_path``."""
    mini_batch = min(config.sample.mini_batch_size, n_samples)
    result = generate(accelerator, denoiser, sample_cfg, schedule, dataset.data_shape, n_samples, mini_batch,
                      conditioning, space, scorer, png_dir=png_dir, seed=config.seed, desc=config.eval.metric)
    if accelerator.is_main_process:
        record = settings_record(sample_cfg, n_samples, ema, config.eval.metric, ref_stats_path(config, dataset),
                                 weights_path)
        if step is not None:
            record['step'] = step
        record.update(result)
        path = write_result(os.path.dirname(os.path.abspath(weights_path)), record)
        logger.info('%s (%s)', ', '.join(f'{k}={v:.4f}' for k, v in result.items() if isinstance(v, float)), path)
    return result


def eval_accelerator(config):
    """The accelerator of an evaluation: the config's mixed precision, TF32 on GPU when config.train.tf32."""
    from accelerate import Accelerator

    from libs.cli import enable_tf32
    accelerator = Accelerator(mixed_precision=config.mixed_precision or None)
    if config.train.tf32:
        enable_tf32(accelerator.device)
    return accelerator


def load_denoiser(config, nnet_path: str, ema: bool = True, accelerator=None, device='cpu'):
    """(denoiser, schedule, weights file) for a weights file or checkpoint directory, in eval mode; the network is
    prepared by ``accelerator`` (mixed precision) when one is given, else moved to ``device``."""
    from libs.nnets import build_nnet, load_nnet_weights
    from libs.schedules import build_schedule

    nnet = build_nnet(config.nnet)
    weights = load_nnet_weights(nnet, nnet_path, ema=ema)
    nnet = accelerator.prepare(nnet.eval()) if accelerator is not None else nnet.eval().to(device)
    schedule = build_schedule(config.schedule)
    return Denoiser.from_config(nnet, schedule, config), schedule, weights


def run_sample_eval(config, nnet_path: str, ema: bool = True) -> dict:
    """What ``eval.py`` does by default: load the weights, sample ``config.sample.n_samples``, score them, write the
    JSON beside the weights (and PNGs to ``config.sample.path`` if set). Returns the score on every process."""
    from libs.conditioning import build_conditioning
    from libs.data import build_dataset
    from libs.spaces import build_space

    accelerator = eval_accelerator(config)
    dataset = build_dataset(config.dataset, split='train')
    conditioning = build_conditioning(config, dataset)
    space = build_space(config, dataset, accelerator.device)
    if space.latent:
        space.autoencoder  # noqa: B018 -- load it now: a missing file should fail before sampling, not after
    scorer = make_scorer(config, dataset, accelerator.device)  # fails early if FID files are missing
    denoiser, schedule, weights = load_denoiser(config, nnet_path, ema, accelerator)
    result = evaluate(accelerator, denoiser, schedule, config, config.sample, config.sample.n_samples, dataset,
                      scorer, weights, conditioning, space, ema=ema, png_dir=config.sample.path)
    if accelerator.is_main_process:
        print(' '.join(f'{k}={v:.4f}' for k, v in result.items()))
    return result
