"""One scorer per sample metric: each accumulates what its metric needs from batches of images and computes the
numbers on the gathered whole.

- ``fid``: the image metrics of papers (libs/metrics/metric_set.py) named by ``config.eval.metrics``: FID, and any of
  sFID, Inception Score, precision, recall, KID and FD-DINOv2, from one pass of each network over the samples;
- ``digits``: the offline digit classifier -> Frechet distance in its features, and the accuracy of
  class-conditional samples.

Protocol: ``add(images (B, C, H, W) in [-1, 1], labels or None)``, ``local() -> (tensor, labels or None)`` of this
process, ``result(gathered, gathered_labels) -> dict`` on the main process, ``record() -> dict`` the settings a result
JSON keeps. Building a scorer loads its networks and opens its reference, and checks that ``n_samples`` (when
given) suffice for its metrics, so missing files and impossible settings fail before any sampling.
"""
import copy

import torch

from libs.errors import UserError


def metric_settings(config, inception_score: bool = False):
    """The MetricSettings of ``config.eval`` (a UserError names the key at fault). ``inception_score``: eval.py
    ``--eval=gen``, which adds the Inception Score over ``config.clf_eval.is_splits`` equal parts (HybViT's)."""
    from libs.metrics.metric_set import MetricSettings, parse_metrics
    e = config.eval
    metrics = parse_metrics(e.metrics, 'config.eval.metrics')
    if e.metric == 'digits' and metrics != ('fid',):
        raise UserError(f"config.eval.metrics={e.metrics!r} applies to config.eval.metric='fid'; the digit score "
                        f"(eval.metric='digits') has its own numbers: leave eval.metrics at 'fid'")
    if inception_score:
        metrics = parse_metrics(metrics + ('is',))
    return MetricSettings(metrics=metrics, inception_path=e.inception_path, dinov2_path=e.dinov2_path,
                          is_splits=config.clf_eval.is_splits if inception_score else 0,
                          is_split_size=e.is_split_size, pr_k=e.pr_k, kid_subsets=e.kid_subsets,
                          kid_subset_size=e.kid_subset_size)


class FidScorer:
    """The metric set of ``settings`` against ``reference`` (statistics, a reference batch or a folder)."""

    def __init__(self, device, reference: str, settings=None, n_samples: int = None, image_size=None):
        from libs.metrics.metric_set import MetricSet, MetricSettings
        self.metric_set = MetricSet(reference, settings or MetricSettings(), device, n_samples, image_size)
        self.parts = []

    def fresh(self):
        """A scorer of the same settings with nothing added yet, sharing this one's networks and reference."""
        scorer = copy.copy(self)
        scorer.parts = []
        return scorer

    def add(self, images: torch.Tensor, labels) -> None:
        if not self.parts:
            self.metric_set.check_images(images)
        self.parts.append(self.metric_set.rows(images).to(images.device))

    def local(self):
        return torch.cat(self.parts), None

    def result(self, gathered: torch.Tensor, labels) -> dict:
        return self.metric_set.scores(gathered.to(self.metric_set.device))

    def record(self) -> dict:
        return self.metric_set.record()


class DigitsScorer:
    """The digit score (libs/metrics/digits_score.py) of 8x8 digit samples."""

    ref_stats = 'sklearn digits (all 1797)'

    def __init__(self, device=None, reference: str = '', settings=None, n_samples: int = None):
        """The FID scorer's arguments, none of which applies: the reference is always the 1797 real digits."""
        self.parts, self.labels = [], []

    def fresh(self):
        return DigitsScorer()

    def add(self, images: torch.Tensor, labels) -> None:
        self.parts.append(images.float())
        if labels is not None:
            self.labels.append(labels)

    def local(self):
        return torch.cat(self.parts), (torch.cat(self.labels) if self.labels else None)

    def result(self, gathered: torch.Tensor, labels) -> dict:
        from libs.metrics.digits_score import digits_score
        score = digits_score(gathered.cpu(), None if labels is None else labels.cpu())
        result = {'digits_frechet_distance': score['frechet_distance']}
        if score['accuracy'] is not None:  # only class-conditional samples have labels to check
            result['digits_accuracy'] = score['accuracy']
        return result

    def record(self) -> dict:
        return {'reference_statistics': self.ref_stats}


SCORERS = {
    'fid': FidScorer,
    'digits': DigitsScorer,
}


def build_scorer(metric: str, device, reference: str = '', settings=None, n_samples: int = None):
    if metric not in SCORERS:
        raise UserError(f"unknown metric {metric!r}; known: {', '.join(SCORERS)}")
    return SCORERS[metric](device, reference, settings, n_samples)
