"""The evaluation modes of ``eval.py --eval=<mode>``, for a network that is a diffusion model and (for most modes) a
classifier: GenViT / HybViT (Yang et al. 2022), or a U-ViT with a classification head.

- ``sample``: the suite's sample score (``libs.evaluation.run_sample_eval``: FID or the digit score);
- ``test_clf``: top-1 accuracy on the test split;
- ``gen``: samples with ``config.sample`` and with the full N-step ancestral sampler (``clf_eval.ancestral``),
  each scored with FID and Inception Score (``eval.metric='fid'``) or the digit score (``'digits'``);
- ``nll``: bits/dim of the test split from the DDPM variational bound (``libs.metrics.likelihood``);
- ``cali``: expected calibration error (``clf_eval.ece_bins`` bins) and a reliability-diagram PNG;
- ``ood``: AUROC of the test split against each set of ``clf_eval.ood``, per score function of
  ``clf_eval.ood_scores`` (px = minus the bits/dim bound, py = max softmax probability; in-distribution should
  score higher), and one ``logp_hist`` histogram PNG per score function;
- ``attack``: white-box PGD (L-inf and L2, ``clf_eval.*_eps`` in [0, 1] pixel units) through ``classify``; robust
  accuracy per radius as a table (JSON and printed) and a PNG.

Every mode but ``sample`` writes ``eval_<mode>_....json`` (and its PNGs) next to the weights file, holding the
weights path, EMA flag, dataset, number of images and the settings that change the numbers. Work is split across
accelerate's processes (test images by ``prepare_data_loader``, samples by ``generate``); per-image results are
gathered and the main process writes. Random draws (the bound's noise, PGD's random start) come from a generator
seeded with ``config.seed`` and the process index, reseeded for each image set, so identical sets get identical
scores.

Out-of-distribution sets are ``clf_eval.ood`` entries ``'name'`` (a dataset of libs/data.py at its default path) or
``'name=path'``; ``'interpolated'`` mixes pairs of in-distribution test images. Their test split (the only split of
an image_folder) is brought to the in-distribution shape: RGB to one channel by the ITU-R 601 luma weights
(0.299, 0.587, 0.114) or one channel repeated to three, then a bilinear, antialiased resize to the in-distribution
resolution.
"""
import dataclasses
import json
import logging
import math
import os

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from libs.config import d
from libs.errors import UserError
from libs.fileio import atomic_open

logger = logging.getLogger(__name__)

OOD_SCORES = ('px', 'py')
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


@dataclasses.dataclass
class EvalRun:
    """What every mode works with: the loaded network on the accelerator's device, in eval mode, no parameter
    gradients."""

    config: object
    accelerator: object
    nnet: torch.nn.Module
    weights: str
    ema: bool

    @property
    def device(self):
        return self.accelerator.device

    @property
    def cfg(self):
        return self.config.clf_eval

    def generator(self) -> torch.Generator:
        """A fresh generator for one image set, seeded by config.seed and this process's index."""
        return torch.Generator(self.device).manual_seed(self.config.seed * 1000003 + self.accelerator.process_index)

    def logits(self, x):
        with torch.no_grad(), self.accelerator.autocast():
            return self.nnet.classify(x).float()

    def denoiser(self, schedule=None):
        from libs.denoiser import Denoiser
        from libs.schedules import build_schedule
        schedule = schedule or build_schedule(self.config.schedule)
        return Denoiser.from_config(self.nnet, schedule, self.config)

    def per_image(self, dataset, fn, desc: str) -> dict:
        """``fn(x, y) -> {name: (B, ...) tensor}`` over ``dataset``, split across processes and gathered in dataset
        order (on every process, on the CPU)."""
        loader = DataLoader(dataset, batch_size=self.cfg.batch_size, shuffle=False,
                            num_workers=self.config.train.num_workers)
        loader = self.accelerator.prepare_data_loader(loader)
        parts = []
        for x, y in tqdm(loader, desc=desc, disable=not self.accelerator.is_main_process):
            parts.append(self.accelerator.gather_for_metrics(fn(x.to(self.device), y.to(self.device))))
        return {k: torch.cat([p[k] for p in parts]).cpu() for k in parts[0]}

    def record(self, mode: str, n: int, settings: dict, result: dict) -> dict:
        return {'mode': mode, 'weights': self.weights, 'ema': self.ema, 'dataset': self.config.dataset.name,
                'split': 'test', 'n': n, 'settings': settings, **result}

    def write(self, stem: str, record: dict) -> str:
        """Write ``record`` as ``<stem>.json`` beside the weights (main process only); returns the path."""
        path = self.path(stem + '.json')
        if self.accelerator.is_main_process:
            with atomic_open(path, 'w') as f:
                json.dump(_json_safe(record), f, indent=2)
            logger.info('wrote %s', path)
        return path

    def path(self, name: str) -> str:
        return os.path.join(os.path.dirname(os.path.abspath(self.weights)), name)

    def stem(self, mode: str, n: int, *parts) -> str:
        tags = [mode, self.config.dataset.name, f'n{n}', *[str(p) for p in parts], 'ema' if self.ema else 'raw']
        return 'eval_' + '_'.join(tags)

    def print(self, line: str) -> None:
        if self.accelerator.is_main_process:
            print(line, flush=True)


def _json_safe(value):
    """NaN / inf (empty calibration bins) as null, so the files are strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _load(config, nnet_path: str, ema: bool, classifier: bool, mode: str) -> EvalRun:
    """The accelerator and the network with its weights; a network without a head fails first when one is needed."""
    from libs.evaluation import eval_accelerator
    from libs.nnets import build_nnet, load_nnet_weights

    nnet = build_nnet(config.nnet)
    if classifier and not getattr(nnet, 'classifies', False):
        raise UserError(f'--eval={mode} needs a network with a classification head; {nnet_path} is a '
                        f'{type(nnet).__name__} (config.nnet.name={config.nnet.name!r}) without one: evaluate it '
                        f'with --eval=sample, gen or nll')
    weights = load_nnet_weights(nnet, nnet_path, ema=ema)
    accelerator = eval_accelerator(config)
    nnet = nnet.eval().requires_grad_(False).to(accelerator.device)
    return EvalRun(config, accelerator, nnet, weights, ema)


def _limited(dataset, n: int):
    """The first ``n`` items (all if n is 0 or larger than the dataset)."""
    if n and n < len(dataset):
        return Subset(dataset, range(n))
    return dataset


def _test_split(config):
    from libs.data import build_dataset
    dataset = build_dataset(config.dataset, split='test')
    if getattr(dataset, 'stores_moments', False):
        raise UserError(f'dataset {config.dataset.name!r} holds autoencoder features, not images: the classifier '
                        f'and likelihood modes evaluate pixel-space models')
    return _limited(dataset, config.clf_eval.n_test)


def _condition(config, y) -> dict:
    """The network's condition for test images with labels y: none, or the labels of a class-conditional model."""
    if config.train.mode == 'uncond':
        return {}
    if config.train.mode == 'cond':
        return {'y': y}
    raise UserError(f"the likelihood modes evaluate unconditional or class-conditional models, not "
                    f"config.train.mode={config.train.mode!r}")


def _bits_per_dim(run: EvalRun, denoiser, generator, x, cond) -> torch.Tensor:
    from libs.metrics.likelihood import bits_per_dim
    with run.accelerator.autocast():
        return bits_per_dim(denoiser, x, cond=cond, generator=generator, variance=run.cfg.nll_variance,
                            steps_per_call=run.cfg.nll_steps_per_call)


# ----------------------------------------------------------------------------------------------------------------
# Modes: fn(config, nnet_path, ema) -> dict of results (on every process).

def eval_test_clf(config, nnet_path: str, ema: bool = True) -> dict:
    from libs.metrics.classification import accuracy
    test = _test_split(config)
    run = _load(config, nnet_path, ema, classifier=True, mode='test_clf')
    out = run.per_image(test, lambda x, y: {'logits': run.logits(x), 'labels': y}, 'test_clf')
    result = {'accuracy': accuracy(out['logits'], out['labels'])}
    n = len(out['labels'])
    run.write(run.stem('test_clf', n), run.record('test_clf', n, {}, result))
    run.print(f"accuracy={result['accuracy']:.4f} (n={n})")
    return result


def eval_cali(config, nnet_path: str, ema: bool = True) -> dict:
    from libs.metrics.classification import accuracy, reliability_diagram
    test = _test_split(config)
    run = _load(config, nnet_path, ema, classifier=True, mode='cali')
    out = run.per_image(test, lambda x, y: {'logits': run.logits(x), 'labels': y}, 'cali')
    n, bins = len(out['labels']), run.cfg.ece_bins
    stem = run.stem('cali', n, f'bins{bins}')
    probs = torch.softmax(out['logits'].double(), dim=1)
    result = {}
    if run.accelerator.is_main_process:
        table = reliability_diagram(probs, out['labels'], run.path(stem + '_reliability.png'), n_bins=bins,
                                    title=f'{config.dataset.name} test, {n} images')
        result = {'ece': table.pop('ece'), 'accuracy': accuracy(out['logits'], out['labels']), 'bins': table,
                  'reliability_diagram': run.path(stem + '_reliability.png')}
        run.write(stem, run.record('cali', n, {'ece_bins': bins}, result))
        run.print(f"ece={result['ece']:.4f} accuracy={result['accuracy']:.4f} (n={n}, {bins} bins)")
    return _broadcast(run, result)


def eval_nll(config, nnet_path: str, ema: bool = True) -> dict:
    test = _test_split(config)
    run = _load(config, nnet_path, ema, classifier=False, mode='nll')
    denoiser, generator = run.denoiser(), run.generator()

    def bpd(x, y):
        return {'bits_per_dim': _bits_per_dim(run, denoiser, generator, x, _condition(config, y))}
    values = run.per_image(test, bpd, 'nll')['bits_per_dim'].double()
    n = values.numel()
    result = {'bits_per_dim': float(values.mean()),
              'bits_per_dim_stderr': float(values.std() / math.sqrt(n)) if n > 1 else 0.0}
    settings = {'variance': run.cfg.nll_variance, 'schedule_steps': denoiser.schedule.num_steps}
    run.write(run.stem('nll', n, run.cfg.nll_variance), run.record('nll', n, settings, result))
    run.print(f"bits_per_dim={result['bits_per_dim']:.4f} +- {result['bits_per_dim_stderr']:.4f} (n={n})")
    return result


class InShape(Dataset):
    """An OOD dataset's images brought to ``data_shape`` (see the module docstring); labels become -1."""

    def __init__(self, dataset, data_shape):
        self.dataset = dataset
        self.channels, self.height, self.width = data_shape
        channels = getattr(dataset, 'channels', self.channels)
        if channels != self.channels and (channels, self.channels) != (3, 1) and channels != 1:
            raise UserError(f'cannot bring {channels}-channel OOD images to {self.channels} channels')

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        x = self.dataset[index][0]
        if x.shape[0] == 3 and self.channels == 1:
            x = (torch.tensor(LUMA_WEIGHTS, dtype=x.dtype).view(3, 1, 1) * x).sum(0, keepdim=True)
        elif x.shape[0] == 1 and self.channels != 1:
            x = x.repeat(self.channels, 1, 1)
        if tuple(x.shape[1:]) != (self.height, self.width):
            x = torch.nn.functional.interpolate(x[None], size=(self.height, self.width), mode='bilinear',
                                                antialias=True, align_corners=False)[0]
        return x.clamp(-1, 1), -1


def ood_dataset_config(spec: str, config):
    """``clf_eval.ood`` entry -> a dataset config: 'name', 'name=path', or 'interpolated' (of config.dataset)."""
    name, _, path = str(spec).partition('=')
    if name == 'interpolated':
        if path:
            raise UserError("OOD set 'interpolated' takes no path: it mixes pairs of in-distribution test images")
        return d(name='interpolated', base=config.dataset)
    return d(name=name, path=path) if path else d(name=name)


def build_ood_sets(config, data_shape) -> dict:
    """{spec: dataset} for clf_eval.ood, built up front; a missing set fails with its own error, prefixed.

    Each set's 'test' split is used, or the one split of a dataset that has only one (image_folder).
    """
    from libs.data import DATASETS, build_dataset
    sets = {}
    for spec in config.clf_eval.ood:
        dataset_cfg = ood_dataset_config(spec, config)
        splits = getattr(DATASETS.get(dataset_cfg.name), 'splits', ('test',))
        try:
            dataset = build_dataset(dataset_cfg, split='test' if 'test' in splits else splits[0])
        except UserError as e:
            raise UserError(f'OOD set {spec!r}: {e}') from None
        sets[str(spec)] = _limited(InShape(dataset, data_shape), config.clf_eval.n_test)
    return sets


def eval_ood(config, nnet_path: str, ema: bool = True) -> dict:
    from libs.metrics.classification import auroc, plot_score_histograms
    scores = tuple(config.clf_eval.ood_scores)
    unknown = [s for s in scores if s not in OOD_SCORES]
    if unknown or not scores:
        raise UserError(f'unknown clf_eval.ood_scores {unknown or scores!r}; known: {", ".join(OOD_SCORES)}')
    if not config.clf_eval.ood:
        raise UserError('clf_eval.ood is empty: name at least one out-of-distribution set')
    if 'px' in scores and config.train.mode != 'uncond':
        raise UserError('the px score (likelihood bound) needs an unconditional model: OOD images have no labels')
    test = _test_split(config)
    ood_sets = build_ood_sets(config, tuple(test[0][0].shape))  # before the weights: a missing set fails fast
    run = _load(config, nnet_path, ema, classifier='py' in scores, mode='ood')
    denoiser = run.denoiser() if 'px' in scores else None

    def score_set(dataset, desc):
        generator = run.generator()  # the same draws for every set

        def fn(x, y):
            out = {}
            if 'px' in scores:
                out['px'] = -_bits_per_dim(run, denoiser, generator, x, {})
            if 'py' in scores:
                out['py'] = torch.softmax(run.logits(x).double(), dim=1).amax(1)
            return out
        return {k: v.double() for k, v in run.per_image(dataset, fn, desc).items()}

    in_scores = score_set(test, f'ood: {config.dataset.name} (in)')
    out_scores = {spec: score_set(ds, f'ood: {spec}') for spec, ds in ood_sets.items()}
    n = len(test)
    stem = run.stem('ood', n)
    result = {'auroc': {s: {spec: auroc(in_scores[s], out_scores[spec][s]) for spec in ood_sets} for s in scores},
              'mean_score': {s: {'in': float(in_scores[s].mean()),
                                 **{spec: float(out_scores[spec][s].mean()) for spec in ood_sets}} for s in scores},
              'n_ood': {spec: len(ds) for spec, ds in ood_sets.items()},
              'logp_hist': {s: run.path(f'{stem}_logp_hist_{s}.png') for s in scores}}
    if run.accelerator.is_main_process:
        labels = {'px': 'px: minus bits/dim (likelihood bound)', 'py': 'py: max softmax probability'}
        for s in scores:
            plot_score_histograms({f'{config.dataset.name} (in)': in_scores[s],
                                   **{spec: out_scores[spec][s] for spec in ood_sets}},
                                  result['logp_hist'][s], labels[s], title=f'{config.dataset.name} test vs OOD')
        settings = {'scores': list(scores), 'ood': list(ood_sets)}
        if 'px' in scores:
            settings.update(variance=run.cfg.nll_variance, schedule_steps=denoiser.schedule.num_steps)
        run.write(stem, run.record('ood', n, settings, result))
        for s in scores:
            run.print(f'auroc {s}: ' + ' '.join(f'{spec}={v:.4f}' for spec, v in result['auroc'][s].items()))
    return result


def eval_attack(config, nnet_path: str, ema: bool = True) -> dict:
    from libs.metrics.classification import NORMS, plot_robustness, robust_correct
    cfg = config.clf_eval
    norms = tuple(cfg.attack_norms)
    if not norms or any(norm not in NORMS for norm in norms):
        raise UserError(f'clf_eval.attack_norms must name some of {", ".join(NORMS)}, got {norms!r}')
    eps_lists = {norm: [float(e) for e in cfg[f'{norm}_eps']] for norm in norms}
    test = _test_split(config)
    run = _load(config, nnet_path, ema, classifier=True, mode='attack')
    generator = run.generator()

    def classify(x):
        with run.accelerator.autocast():
            return run.nnet.classify(x).float()

    def attacked(x, y):
        out = {}
        for norm in norms:
            # Radii are in [0, 1] pixel units; model space [-1, 1] is twice as wide.
            correct = robust_correct(classify, x, y, [2 * e for e in eps_lists[norm]], norm=norm,
                                     steps=cfg.attack_steps, generator=generator)
            for i, flags in enumerate(correct.values()):
                out[f'{norm}_{i}'] = flags
        return out
    out = run.per_image(test, attacked, 'attack')
    n = len(next(iter(out.values())))
    table = [{'norm': norm, 'eps': eps, 'robust_accuracy': float(out[f'{norm}_{i}'].double().mean())}
             for norm in norms for i, eps in enumerate(eps_lists[norm])]
    stem = run.stem('attack', n, f'pgd{cfg.attack_steps}')
    result = {'robust_accuracy': table, 'plot': run.path(stem + '_robustness.png')}
    if run.accelerator.is_main_process:
        curves = {norm: {row['eps']: row['robust_accuracy'] for row in table if row['norm'] == norm} for norm in norms}
        plot_robustness(curves, result['plot'], title=f'PGD-{cfg.attack_steps}, {config.dataset.name} test ({n})')
        settings = {'steps': cfg.attack_steps, 'step_size': '2.5 eps / steps', 'random_start': True,
                    'eps_units': 'pixels in [0, 1] (model space [-1, 1] uses 2 eps)'}
        run.write(stem, run.record('attack', n, settings, result))
        run.print('norm  eps        robust_accuracy')
        for row in table:
            run.print(f"{row['norm']:<5} {row['eps']:<10.5g} {row['robust_accuracy']:.4f}")
    return result


class FidIsScorer:
    """FID and Inception Score from one Inception pass (the Scorer protocol of libs/evaluation.py)."""

    def __init__(self, device, ref_stats: str, inception_path: str = '', splits: int = 10):
        from libs.metrics import fid
        self.ref_mu, self.ref_sigma = fid.load_stats(ref_stats)
        self.features = fid.InceptionFeatures(fid.load_inception(inception_path or None, device=device))
        self.logit_weight = fid.load_logit_weights(inception_path or None)
        self.splits = splits
        self.parts = []

    def add(self, samples: torch.Tensor, labels) -> None:
        self.parts.append(torch.from_numpy(self.features(samples)).to(samples.device))

    def local(self):
        return torch.cat(self.parts), None

    def result(self, gathered: torch.Tensor, labels) -> dict:
        from libs.metrics import fid
        from libs.metrics.inception_score import inception_score_of_features
        acts = gathered.double().cpu().numpy()
        mu, sigma = fid.activation_statistics(acts)
        mean, std = inception_score_of_features(acts, self.logit_weight, self.splits)
        return {'fid': fid.frechet_distance(mu, sigma, self.ref_mu, self.ref_sigma), 'inception_score': mean,
                'inception_score_std': std}


def eval_gen(config, nnet_path: str, ema: bool = True) -> dict:
    from libs.conditioning import build_conditioning
    from libs.data import build_dataset
    from libs.evaluation import generate, make_scorer, ref_stats_path, settings_record
    from libs.schedules import DiscreteSchedule, build_schedule
    from libs.spaces import build_space

    schedule = build_schedule(config.schedule)
    runs = [config.sample]
    if config.clf_eval.ancestral:
        if not isinstance(schedule, DiscreteSchedule):
            raise UserError(f'clf_eval.ancestral={config.clf_eval.ancestral!r} needs a discrete schedule '
                            f"(config.schedule.name 'linear' or 'cosine'); set clf_eval.ancestral='' to skip it")
        full = config.sample.copy_and_resolve_references()
        full.algorithm, full.sample_steps = config.clf_eval.ancestral, schedule.num_steps
        runs.append(full)
    dataset = build_dataset(config.dataset, split='train')
    metric, ref_stats, n = config.eval.metric, ref_stats_path(config, dataset), config.sample.n_samples

    def new_scorer(device):
        if metric == 'fid':
            return FidIsScorer(device, ref_stats, config.eval.inception_path, config.clf_eval.is_splits)
        return make_scorer(config, dataset, device)

    run = _load(config, nnet_path, ema, classifier=False, mode='gen')
    scorer = new_scorer(run.device)  # before any sampling: missing FID files fail now
    conditioning = build_conditioning(config, dataset)
    space = build_space(config, dataset, run.device)
    if space.latent:
        space.autoencoder  # noqa: B018 -- load it now: a missing file should fail before sampling, not after
    denoiser = run.denoiser(schedule)
    results = {}
    for i, sample_cfg in enumerate(runs):
        if i:
            scorer = new_scorer(run.device)
        png_dir = os.path.join(config.sample.path, sample_cfg.algorithm) if config.sample.path else ''
        with run.accelerator.autocast():
            result = generate(accelerator=run.accelerator, denoiser=denoiser, sample_cfg=sample_cfg,
                              schedule=schedule, data_shape=dataset.data_shape, n_samples=n,
                              mini_batch_size=min(config.sample.mini_batch_size, n), conditioning=conditioning,
                              space=space, scorer=scorer, png_dir=png_dir, seed=config.seed,
                              desc=f'gen: {sample_cfg.algorithm}')
        record = {'mode': 'gen', **settings_record(sample_cfg, n, ema, metric, ref_stats, run.weights), **result}
        stem = (f"eval_gen_{sample_cfg.algorithm}_nfe{sample_cfg.sample_steps}_n{n}"
                f"_scale{sample_cfg.get('scale', 0.0):g}_{'ema' if ema else 'raw'}")
        run.write(stem, record)
        run.print(f'{sample_cfg.algorithm} nfe={sample_cfg.sample_steps}: '
                  + ' '.join(f'{k}={v:.4f}' for k, v in result.items()))
        results[sample_cfg.algorithm] = result
    return results


def _broadcast(run: EvalRun, result: dict) -> dict:
    from libs.evaluation import broadcast_dict
    return broadcast_dict(run.accelerator, result)


def _run_sample(config, nnet_path: str, ema: bool = True) -> dict:
    from libs.evaluation import run_sample_eval
    return run_sample_eval(config, nnet_path, ema)


MODES = {
    'sample': _run_sample,
    'test_clf': eval_test_clf,
    'gen': eval_gen,
    'nll': eval_nll,
    'cali': eval_cali,
    'ood': eval_ood,
    'attack': eval_attack,
}


def run_eval_mode(config, mode: str, nnet_path: str, ema: bool = True) -> dict:
    """What ``eval.py --eval=<mode>`` does; returns the mode's numbers on every process."""
    if mode not in MODES:
        raise UserError(f"unknown --eval mode {mode!r}; known: {', '.join(MODES)}")
    return MODES[mode](config, nnet_path, ema)
