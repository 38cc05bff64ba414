"""Likelihood modes, for a model whose framework has a likelihood bound (``Framework.likelihood_bound``: a Gaussian
model on a discrete schedule, libs/diffusion/vlb.py, or a discrete-state model, libs/diffusion/ctmc.py, in bits per
pixel value): ``nll`` (bits/dim of the test split) and ``ood`` (AUROC of the test split against each set of
``clf_eval.ood``, per score function of ``clf_eval.ood_scores``: px = minus the bits/dim bound, py = max softmax
probability; in-distribution should score higher; one histogram PNG per score function).

Out-of-distribution sets are ``clf_eval.ood`` entries ``'name'`` (a dataset at its default path) or
``'name=path'``; ``'interpolated'`` mixes pairs of in-distribution test images. Their test split (the only split of
an image_folder) is brought to the in-distribution shape: RGB to one channel by the ITU-R 601 luma weights
(0.299, 0.587, 0.114) or one channel repeated to three, then a bilinear, antialiased resize to the in-distribution
resolution.
"""
import math

import torch
from torch.utils.data import Dataset

from libs.config import d
from libs.errors import UserError
from libs.evaluation.classification import limited, test_split
from libs.evaluation.harness import EvalRun

OOD_SCORES = ('px', 'py')
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def bits_per_dim(run: EvalRun, bound, denoiser, generator, x, cond) -> torch.Tensor:
    with run.accelerator.autocast():
        return bound.bits_per_dim(denoiser, x, cond=cond, generator=generator)


def eval_nll(config, nnet_path: str, ema: bool = True) -> dict:
    test = test_split(config)
    run = EvalRun.load(config, nnet_path, ema, classifier=False, mode='nll')
    bound = run.framework.likelihood_bound(config)
    denoiser, generator, conditioning = run.denoiser(), run.generator(), run.conditioning(with_prompts=False)

    def bpd(x, y):
        return {'bits_per_dim': bits_per_dim(run, bound, denoiser, generator, x, conditioning.labelled(y))}
    values = run.per_image(test, bpd, 'nll')['bits_per_dim'].double()
    n = values.numel()
    result = {'bits_per_dim': float(values.mean()),
              'bits_per_dim_stderr': float(values.std() / math.sqrt(n)) if n > 1 else 0.0}
    run.write('nll', n, [bound.tag], bound.settings, result)
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
        except UserError as e:  # the dataset names config.dataset.path; here the path is the entry's
            where = f"the path of its clf_eval.ood entry ('{dataset_cfg.name}=PATH')"
            raise UserError(f"OOD set {spec!r}: {str(e).replace('config.dataset.path', where)}") from None
        sets[str(spec)] = limited(InShape(dataset, data_shape), config.clf_eval.n_test)
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
    test = test_split(config)
    ood_sets = build_ood_sets(config, tuple(test[0][0].shape))  # before the weights: a missing set fails fast
    run = EvalRun.load(config, nnet_path, ema, classifier='py' in scores, mode='ood')
    bound = run.framework.likelihood_bound(config) if 'px' in scores else None
    denoiser = run.denoiser() if 'px' in scores else None

    def score_set(dataset, desc):
        generator = run.generator()  # the same draws for every set

        def fn(x, y):
            out = {}
            if 'px' in scores:
                out['px'] = -bits_per_dim(run, bound, denoiser, generator, x, {})
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
            settings.update(bound.settings)
        run.write('ood', n, [], settings, result)
        for s in scores:
            run.print(f'auroc {s}: ' + ' '.join(f'{spec}={v:.4f}' for spec, v in result['auroc'][s].items()))
    return result
