"""One scorer per sample metric: each accumulates what its metric needs from batches of images and computes the
numbers on the gathered whole.

- ``fid``: Inception pool features -> FID against reference statistics, and the Inception Score from the same pass
  (``inception_score=True``);
- ``digits``: the offline digit classifier -> Frechet distance in its features, and the accuracy of
  class-conditional samples.

Protocol: ``add(images (B, C, H, W) in [-1, 1], labels or None)``, ``local() -> (tensor, labels or None)`` of this
process, ``result(gathered, gathered_labels) -> dict`` on the main process. Building a scorer loads its network and
its reference files, so missing files fail before any sampling.
"""
import torch

from libs.errors import UserError


class FidScorer:
    """FID (and optionally the Inception Score) from one Inception pass over the samples."""

    def __init__(self, device, ref_stats: str, inception_path: str = '', inception_score: bool = False,
                 is_splits: int = 10):
        from libs.metrics import fid
        self.ref_stats = ref_stats
        self.ref_mu, self.ref_sigma = fid.load_stats(ref_stats)
        self.features = fid.InceptionFeatures(fid.load_inception(inception_path or None, device=device))
        self.logit_weight = fid.load_logit_weights(inception_path or None) if inception_score else None
        self.is_splits = is_splits
        self.parts = []

    def add(self, images: torch.Tensor, labels) -> None:
        self.parts.append(torch.from_numpy(self.features(images)).to(images.device))

    def local(self):
        return torch.cat(self.parts), None

    def result(self, gathered: torch.Tensor, labels) -> dict:
        from libs.metrics import fid
        acts = gathered.double().cpu().numpy()
        result = {'fid': fid.frechet_distance_of_activations(acts, self.ref_mu, self.ref_sigma)}
        if self.logit_weight is not None:
            from libs.metrics.inception_score import inception_score_of_features
            result['inception_score'], result['inception_score_std'] = inception_score_of_features(
                acts, self.logit_weight, self.is_splits)
        return result


class DigitsScorer:
    """The digit score (libs/metrics/digits_score.py) of 8x8 digit samples."""

    ref_stats = 'sklearn digits (all 1797)'

    def __init__(self, device=None, ref_stats: str = '', inception_path: str = '', inception_score: bool = False,
                 is_splits: int = 10):
        """The FID scorer's arguments, none of which applies: the reference is always the 1797 real digits."""
        self.parts, self.labels = [], []

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


SCORERS = {
    'fid': FidScorer,
    'digits': DigitsScorer,
}


def build_scorer(metric: str, device, ref_stats: str = '', inception_path: str = '', inception_score: bool = False,
                 is_splits: int = 10):
    if metric not in SCORERS:
        raise UserError(f"unknown metric {metric!r}; known: {', '.join(SCORERS)}")
    return SCORERS[metric](device, ref_stats, inception_path, inception_score, is_splits)
