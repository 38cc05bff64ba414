"""The one evaluation harness, shared by ``eval.py``'s modes and by training's per-checkpoint scores.

``EvalRun.load`` loads the weights once (to the CPU, then onto the accelerator's device), builds the framework,
the data description (from the config: no dataset is read to sample or score) and the accelerator. Its methods
split work across processes and gather it back in order:

- ``per_image(dataset, fn)``: a function of test images, split by accelerate's data loader;
- ``generate(...)`` (also used by the Trainer): ``n`` samples, sample ``i`` drawn from its own generator seeded by
  ``(config.seed, i)`` (libs/rng.py), so samples and scores do not depend on the number of processes; each round's
  images are scored in-process and optionally written as PNGs. The eval modes pass a ``ShardStore``
  (libs/evaluation/shards.py): each mini-batch's scored rows are then kept on disk, and a re-run after a
  preemption samples only the mini-batches that are missing.

Every result is written by ``write`` as ``eval_<mode>_<dataset>_n<N>_<settings>_<ema|raw>.json`` beside the weights:
the mode, the weights, EMA or not, the dataset, the sample or image count, a ``settings`` dict with everything that
changes the numbers (sampler, NFE, guidance scale, reference statistics, ...), the numbers, and ``provenance``
(the suite's git commit, torch / accelerate versions, device and process count).
"""
import dataclasses
import functools
import json
import logging
import math
import os
import subprocess

import torch
from tqdm.auto import tqdm

from libs.config import compile_mode, to_json
from libs.errors import UserError
from libs.evaluation.shards import ShardStore
from libs.fileio import atomic_open, file_sha256
from libs.images import save_pngs
from libs.nets.compile import compile_regions
from libs.rng import SampleRandom, eval_process_seed

logger = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@functools.lru_cache(maxsize=1)
def suite_commit() -> str:
    """The git commit of this checkout ('+dirty' with uncommitted changes), or 'unknown' outside a git checkout."""
    try:
        commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return commit + ('+dirty' if dirty else '')
    except (OSError, subprocess.SubprocessError):
        return 'unknown'


def provenance(accelerator) -> dict:
    import accelerate
    device = accelerator.device
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else device.type
    return {'commit': suite_commit(), 'torch': torch.__version__, 'accelerate': accelerate.__version__,
            'device': name, 'num_processes': accelerator.num_processes,
            'mixed_precision': str(accelerator.mixed_precision)}


def json_safe(value):
    """NaN / inf (empty calibration bins) as null, so the files are strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def result_name(mode: str, dataset: str, n: int, tags, ema=None) -> str:
    """The one naming scheme of result files: eval_<mode>_<dataset>_n<N>_<tags...>_<ema|raw> (no extension; no
    ema|raw part when ``ema`` is None, for samples that come without weights)."""
    weights = [] if ema is None else ['ema' if ema else 'raw']
    return 'eval_' + '_'.join([mode, dataset, f'n{n}', *[str(t) for t in tags], *weights])


def write_record(accelerator, directory: str, name: str, record: dict) -> str:
    """Write ``record`` (with provenance added) as ``<directory>/<name>.json`` on the main process."""
    path = os.path.join(directory, name + '.json')
    if accelerator.is_main_process:
        with atomic_open(path, 'w') as f:
            json.dump(json_safe({**record, 'provenance': provenance(accelerator)}), f, indent=2)
        logger.info('wrote %s', path)
    return path


# The keys of a result record that are not the result: what write_result and write_record put around it (the
# Trainer's per-checkpoint scores add the training step).
RECORD_KEYS = ('mode', 'weights', 'ema', 'dataset', 'n', 'settings', 'provenance', 'step')


def write_result(accelerator, weights: str, ema: bool, mode: str, dataset: str, n: int, tags, settings: dict,
                 result: dict, **extra) -> str:
    """The record of one result (``extra``: e.g. the training step) as JSON beside ``weights``; returns its path."""
    record = {'mode': mode, 'weights': weights, 'ema': ema, 'dataset': dataset, 'n': n, **extra,
              'settings': settings, **result}
    return write_record(accelerator, os.path.dirname(os.path.abspath(weights)),
                        result_name(mode, dataset, n, tags, ema), record)


def read_result(path: str, weights: str, ema: bool, settings: dict):
    """The result in the record at ``path`` (as write_result wrote it, without ``extra``) if it was computed from
    these weights with exactly these settings; None when it was not, or is missing or unreadable."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if record.get('weights') != weights or record.get('ema') != ema or record.get('settings') != json_safe(settings):
        return None
    return {k: v for k, v in record.items() if k not in RECORD_KEYS}


def broadcast_dict(accelerator, result: dict) -> dict:
    """Send the main process's dict to every process (so all return the same score)."""
    if accelerator.num_processes == 1:
        return result
    from accelerate.utils import broadcast_object_list
    box = [result]
    broadcast_object_list(box, from_process=0)
    return box[0]


def gathered_order(world: int, rounds: int, mini_batch_size: int, n_samples: int) -> torch.Tensor:
    """Rows of the gathered tensor in sample order, cut to ``n_samples``.

    ``accelerator.gather`` concatenates per process, so row ``rank * rounds * mb + r * mb + i`` holds sample
    ``(r * world + rank) * mb + i`` (the index in the PNG file names); element k of the result is the row of sample k.
    """
    order = torch.arange(world * rounds * mini_batch_size).view(world, rounds, mini_batch_size)
    return order.permute(1, 0, 2).reshape(-1)[:n_samples]


def sample_settings(sample_cfg, n_samples: int, metric: str, scores: dict) -> dict:
    """Everything about sampling that changes a sample score, and ``scores``: the scorer's ``record()`` (its
    reference, networks and metric settings). ``t_start`` 0 (and ``t_end`` 0) are the sampler's default ends
    (libs/diffusion/samplers: t_start is 1, or the schedule's t_max = 1 - 1e-3 on the flow paths for the log-SNR
    solvers and noise / score models); ``guidance_interval`` is (lo, hi) in sigma / alpha, None when guidance
    applies at every level."""
    from libs.diffusion.guidance import guidance_interval
    return {
        'metric': metric,
        'n_samples': n_samples,
        'algorithm': sample_cfg.algorithm,
        'nfe': sample_cfg.sample_steps,
        'guidance_scale': sample_cfg.get('scale', 0.0),
        'guided_channels': sample_cfg.get('guided_channels', 0),
        'order': sample_cfg.get('order', 0),
        'method': sample_cfg.get('method', ''),
        'skip_type': sample_cfg.get('skip_type', ''),
        't_end': sample_cfg.get('t_end', 0.0),
        't_start': sample_cfg.get('t_start', 0.0),
        'guidance_interval': guidance_interval(sample_cfg),
        **{key: sample_cfg.get(key) for key in sampler_options(sample_cfg.algorithm)},
        **scores,
    }


def sampler_options(algorithm: str) -> tuple:
    """The ``config.sample`` keys of ``algorithm``'s own options (DDIM's eta, EDM's churn, SiT's SDE, the discrete
    samplers')."""
    from libs.diffusion.samplers import SAMPLER_OPTIONS
    from libs.diffusion.samplers.tau_leaping import CTMC_SAMPLER_OPTIONS
    return {**SAMPLER_OPTIONS, **CTMC_SAMPLER_OPTIONS}.get(algorithm, ())


def metric_tag(metric: str, scores: dict = None) -> str:
    """The file-name tag of a score's metrics: ``metric`` ('fid', 'digits'), or the scorer's metric list (its
    ``record()``) joined by '-' where it is more than FID alone (``fid-is-prec-recall``)."""
    return '-'.join((scores or {}).get('metrics', ())) or metric


def sample_tags(sample_cfg, metric: str, scores: dict = None) -> list:
    """The file-name tags of a sample score, so that two scores whose samples or metrics differ never share a file
    (the JSON's settings hold the same values in full): the metrics (``metric_tag``: ``scores`` is the scorer's
    record), sampler, NFE and guidance scale, then what is set of the guided channels (DiT's guidance of some channels
    only), the guidance interval, the start and end times, and each other sampling setting that is not the
    default of libs/config.py (``order2``, ``skiptypetime_uniform``, ``schurn40``: the key without underscores)."""
    from libs.config import defaults
    from libs.diffusion.guidance import guidance_interval
    tags = [metric_tag(metric, scores), sample_cfg.algorithm, f'nfe{sample_cfg.sample_steps}',
            f"scale{sample_cfg.get('scale', 0.0):g}"]
    channels = sample_cfg.get('guided_channels', 0)
    interval = guidance_interval(sample_cfg)
    t_start, t_end = sample_cfg.get('t_start', 0.0), sample_cfg.get('t_end', 0.0)
    tags += ([f'guided{channels}'] if channels else []) + \
        ([f'interval{interval[0]:g}-{interval[1]:g}'] if interval else []) + \
        ([f'start{t_start:g}'] if t_start else []) + ([f'end{t_end:g}'] if t_end else [])
    default = defaults().sample
    for key in ('order', 'method', 'skip_type', *sampler_options(sample_cfg.algorithm)):
        value = sample_cfg.get(key, default[key])
        if value != default[key]:
            tags.append(key.replace('_', '') + (f'{value:g}' if isinstance(value, float) else str(value)))
    return tags


@torch.no_grad()
def draw_samples(framework, denoiser, sampler, data_shape, conditioning, random, scale: float = 0.0, cond=None):
    """One batch of samples in the model's space for the sample indices of ``random`` (a SampleRandom): the
    condition drawn first from each sample's generator (unless ``cond`` is given), then the prior, then whatever
    noise the sampler adds. Returns (samples, the labels a score checks them against, or None)."""
    labels = None
    if cond is None:
        cond, labels = conditioning.draw(random)
    null = conditioning.null(cond) if scale > 0 else None
    return framework.sample(denoiser, sampler, data_shape, cond, random, null, scale), labels


def generate(accelerator, framework, denoiser, sample_cfg, data_shape, n_samples: int, mini_batch_size: int,
             conditioning, space, scorer=None, png_dir: str = '', seed: int = 0, desc: str = 'sample',
             shards: ShardStore = None) -> dict:
    """Sample ``n_samples`` across processes, decode them to images (``space``), score them and/or write PNGs.

    Round r of process ``rank`` draws samples ``(r * world + rank) * mb + i``; each from its own generator.
    The network and the decoder run under the accelerator's autocast (the run's mixed precision), the scorer on
    float32 images outside it, as papers score (pytorch-fid, ADM's evaluator: float32 networks). Returns the score
    on every process ({} without a scorer). With ``shards`` (chunks of ``mini_batch_size`` samples), see
    ``generate_in_shards``.
    """
    sampler = framework.build_sampler(sample_cfg)
    scale = sample_cfg.get('scale', 0.0)
    world, rank = accelerator.num_processes, accelerator.process_index

    def mini_batch(start: int):
        """Images and labels of samples ``start .. start + mb`` (PNGs of those below ``n_samples`` written), and
        how many of them count."""
        random = SampleRandom(seed, range(start, start + mini_batch_size), accelerator.device)
        with accelerator.autocast():
            samples, labels = draw_samples(framework, denoiser, sampler, data_shape, conditioning, random, scale)
            images = space.decode(samples).float()
        keep = max(0, min(mini_batch_size, n_samples - start))
        if png_dir and keep:
            save_pngs(images[:keep], png_dir, start)
        return images, labels, keep

    if shards is not None:
        return generate_in_shards(accelerator, mini_batch, scorer, shards, desc)
    rounds = math.ceil(n_samples / (mini_batch_size * world))
    for r in tqdm(range(rounds), desc=desc, disable=not accelerator.is_main_process):
        images, labels, _ = mini_batch((r * world + rank) * mini_batch_size)
        if scorer is not None:
            scorer.add(images, labels)
    if scorer is None:
        return {}
    local, labels = scorer.local()
    gathered = accelerator.gather(local.contiguous())
    gathered_labels = accelerator.gather(labels.contiguous()) if labels is not None else None
    order = gathered_order(world, rounds, mini_batch_size, n_samples).to(gathered.device)
    gathered = gathered[order]
    if gathered_labels is not None:
        gathered_labels = gathered_labels[order]
    result = scorer.result(gathered, gathered_labels) if accelerator.is_main_process else {}
    return broadcast_dict(accelerator, result)


def last_rows(scorer, count: int):
    """What ``scorer.add`` made of the last ``count`` images it was given (rows, and labels or None), from its
    ``local()``; this concatenates everything added so far, a copy that is small next to sampling."""
    rows, labels = scorer.local()
    return rows[-count:], (None if labels is None else labels[-count:])


def generate_in_shards(accelerator, mini_batch, scorer, shards: ShardStore, desc: str) -> dict:
    """``generate`` with every chunk's scored rows kept in ``shards``: the main process lists the chunks still
    missing, the processes share them out (the i-th missing chunk goes to process i % world), each chunk is
    renamed into place when complete, and the main process scores the rows of all chunks, read back in sample
    order. A chunk is one mini-batch, of the same sample indices as in an uninterrupted run, so the score is
    the same. Errors found on the main process reach every process as the same UserError."""
    if scorer is None:
        raise ValueError('a shard store keeps scored rows: generate_in_shards needs a scorer')
    main = accelerator.is_main_process
    missing = broadcast_dict(accelerator, {'missing': shards.prepare() if main else None})['missing']
    mine = missing[accelerator.process_index::accelerator.num_processes]
    for chunk in tqdm(mine, desc=desc, disable=not main):
        images, labels, keep = mini_batch(shards.bounds(chunk)[0])
        scorer.add(images, labels)
        rows, row_labels = last_rows(scorer, len(images))
        shards.write(chunk, rows[:keep], None if row_labels is None else row_labels[:keep])
    accelerator.wait_for_everyone()
    outcome = {}
    if main:
        try:
            outcome = {'result': scorer.result(*shards.read())}
        except UserError as exc:
            outcome = {'error': str(exc)}
    outcome = broadcast_dict(accelerator, outcome)
    if 'error' in outcome:
        raise UserError(outcome['error'])
    return outcome['result']


def eval_accelerator(config):
    """The accelerator of an evaluation: the config's mixed precision, TF32 on GPU when config.train.tf32."""
    from accelerate import Accelerator

    from libs.cli import enable_tf32
    accelerator = Accelerator(mixed_precision=config.mixed_precision or None)
    if config.train.tf32:
        enable_tf32(accelerator.device)
    return accelerator


@dataclasses.dataclass
class EvalRun:
    """What every mode works with: the loaded network on the accelerator's device, in eval mode, no parameter
    gradients; its framework; the data description from the config. The conditioning and the space (a latent
    model's autoencoder) are built once per run, when first asked for."""

    config: object
    accelerator: object
    nnet: torch.nn.Module
    weights: str
    ema: bool
    framework: object
    spec: object
    built: dict = dataclasses.field(default_factory=dict, repr=False)  # the conditionings and the space

    @classmethod
    def load(cls, config, nnet_path: str, ema: bool = True, mode: str = 'sample', classifier: bool = False,
             sampling: bool = False):
        """Build the network and load its weights once; a network without a head fails first when one is needed.
        ``sampling``: the mode samples, so its blocks are compiled when ``config.sample.compile`` says so (on CUDA
        by default; libs/nets/compile.py)."""
        from libs.data import data_spec, is_latent
        from libs.diffusion import build_framework
        from libs.nets import build_nnet, load_nnet_weights
        from libs.nets.protocol import backbone_classifies

        nnet = build_nnet(config.nnet)
        if classifier and not backbone_classifies(nnet):
            raise UserError(f'--eval={mode} needs a network with a classification head; {nnet_path} is a '
                            f'{type(nnet).__name__} (config.nnet.name={config.nnet.name!r}) without one: evaluate '
                            f'it with --eval=sample, gen or nll')
        framework = build_framework(config)
        framework.check_backbone(nnet)
        fmt = None
        if is_latent(config.dataset):  # the geometry from the autoencoder's config, before the slow part
            from libs.latent.spaces import latent_format
            fmt = latent_format(config)
        spec = data_spec(config.dataset, framework.data_shape(nnet), fmt)
        weights = load_nnet_weights(nnet, nnet_path, ema=ema)
        accelerator = eval_accelerator(config)
        nnet = nnet.eval().requires_grad_(False).to(accelerator.device)
        compiling = compile_mode(config.sample.compile, 'sample.compile', accelerator.device) if sampling else ''
        if compiling:
            compile_regions(nnet, whole=compiling == 'full')
        return cls(config, accelerator, nnet, weights, ema, framework, spec)

    @property
    def device(self):
        return self.accelerator.device

    @property
    def cfg(self):
        return self.config.clf_eval

    def generator(self) -> torch.Generator:
        """A fresh per-process generator for one image set (the bound's noise, PGD's random start)."""
        seed = eval_process_seed(self.config.seed, self.accelerator.process_index)
        return torch.Generator(self.device).manual_seed(seed)

    def logits(self, x):
        with torch.no_grad(), self.accelerator.autocast():
            return self.nnet.classify(x).float()

    def denoiser(self):
        return self.framework.denoiser(self.nnet)

    def conditioning(self, with_prompts: bool = True):
        """What the network is conditioned on (with evaluation prompts for a text model when ``with_prompts``)."""
        from libs.diffusion.conditioning import build_conditioning
        key = ('conditioning', with_prompts)
        if key not in self.built:
            self.built[key] = build_conditioning(self.config, self.nnet, self.spec.num_classes, with_prompts)
        return self.built[key]

    def space(self):
        """Pixel or latent space; the autoencoder of a latent model is loaded the first time, so a missing file
        fails before any sampling."""
        from libs.latent.spaces import build_space
        if 'space' not in self.built:
            space = build_space(self.config, self.spec, self.device)
            if space.latent:
                space.autoencoder  # noqa: B018
            self.built['space'] = space
        return self.built['space']

    def ref_stats(self) -> str:
        """config.eval.ref_stats, else the dataset's default reference statistics ('' if neither)."""
        return self.config.eval.ref_stats or self.spec.fid_stats

    def scorer(self, inception_score: bool = False):
        """A scorer of ``config.eval`` for ``config.sample.n_samples`` samples (``inception_score``: ``gen``'s, with
        the Inception Score over ``clf_eval.is_splits`` parts), with nothing added yet; the networks and the reference
        are loaded once per run and shared by the scorers it hands out (a sweep scores many points)."""
        from libs.evaluation.scorers import build_scorer, metric_settings
        key = ('scorer', inception_score)
        if key not in self.built:
            self.built[key] = build_scorer(self.config.eval.metric, self.device, self.ref_stats(),
                                           metric_settings(self.config, inception_score), self.config.sample.n_samples)
        return self.built[key].fresh()

    def generate(self, sample_cfg, scorer, png_dir: str = '', desc: str = 'sample', shards: ShardStore = None) -> dict:
        return generate(self.accelerator, self.framework, self.denoiser(), sample_cfg, self.spec.data_shape,
                        self.config.sample.n_samples, self.mini_batch_size, self.conditioning(), self.space(), scorer,
                        png_dir=png_dir, seed=self.config.seed, desc=desc, shards=shards)

    @property
    def mini_batch_size(self) -> int:
        return min(self.config.sample.mini_batch_size, self.config.sample.n_samples)

    @functools.cached_property
    def weights_sha256(self) -> str:
        return file_sha256(self.weights)

    def shard_settings(self, sample_cfg) -> dict:
        """Everything the samples of ``sample_cfg`` and their scored rows depend on, besides their count and the
        mini-batch size: the weights' content, EMA or not, the whole config with ``sample_cfg`` as its sampler (so
        the seed, the network, the framework, the PNG folder and the metric's files), the precision and the device
        type."""
        config = json.loads(to_json(self.config))
        config['sample'] = json.loads(to_json(sample_cfg))
        return {'weights_sha256': self.weights_sha256, 'ema': self.ema, 'config': config,
                'mixed_precision': str(self.accelerator.mixed_precision), 'device': self.device.type}

    def shard_store(self, stem: str, sample_cfg) -> ShardStore:
        """The store of the result ``<stem>.json``'s samples: ``<stem>_shards/`` beside it."""
        n = self.config.sample.n_samples
        if n < 1 or self.mini_batch_size < 1:
            raise UserError(f'config.sample.n_samples ({n}) and config.sample.mini_batch_size '
                            f'({self.config.sample.mini_batch_size}) must be at least 1')
        settings = self.shard_settings(sample_cfg) if self.accelerator.is_main_process else None
        return ShardStore(self.path(stem + '_shards'), n, self.mini_batch_size, settings)

    def per_image(self, dataset, fn, desc: str) -> dict:
        """``fn(x, y) -> {name: (B, ...) tensor}`` over ``dataset``, split across processes and gathered in dataset
        order (on every process, on the CPU)."""
        from torch.utils.data import DataLoader

        from libs.data import loader_workers
        loader = DataLoader(dataset, batch_size=self.cfg.batch_size, shuffle=False,
                            num_workers=loader_workers(self.config.train.num_workers))
        loader = self.accelerator.prepare_data_loader(loader)
        parts = []
        for x, y in tqdm(loader, desc=desc, disable=not self.accelerator.is_main_process):
            parts.append(self.accelerator.gather_for_metrics(fn(x.to(self.device), y.to(self.device))))
        return {k: torch.cat([p[k] for p in parts]).cpu() for k in parts[0]}

    def write(self, mode: str, n: int, tags, settings: dict, result: dict) -> str:
        """Write the record of one result beside the weights (main process); returns the JSON's path."""
        return write_result(self.accelerator, self.weights, self.ema, mode, self.config.dataset.name, n, tags,
                            settings, result)

    def stem(self, mode: str, n: int, *tags) -> str:
        return result_name(mode, self.config.dataset.name, n, tags, self.ema)

    @property
    def directory(self) -> str:
        return os.path.dirname(os.path.abspath(self.weights))

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def print(self, line: str) -> None:
        if self.accelerator.is_main_process:
            print(line, flush=True)

    def broadcast(self, result: dict) -> dict:
        return broadcast_dict(self.accelerator, result)
