"""Inception Score (Salimans et al. 2016): IS = exp(E_x KL(p(y | x) || p(y))), with p(y) the mean of p(y | x).

As in the original evaluation, p(y | x) is the softmax over all 1008 outputs of the 2015 Inception graph, from
logits = pool3 features x fc weight with no bias added (the original code multiplied the pool features by the
graph's logit weight matrix alone, and so does ADM's evaluator). The score is the mean over consecutive parts of the
N images of each part's IS, reported with their (population) standard deviation. Two conventions for the parts:

- ``split_size``: parts of ``split_size`` images, ``[0, s), [s, 2 s), ...``, the last one shorter when ``s`` does
  not divide N; ADM's evaluator uses 5,000 (what DiT, SiT, REPA and most ImageNet work report);
- ``splits``: N cut into ``splits`` parts ``[i N // splits, (i + 1) N // splits)``; the improved-GAN code's 10
  (GenViT / HybViT's numbers, eval.py ``--eval=gen``).

At N = 50,000 both give ten parts of 5,000. The pool features are the FID features
(``libs.metrics.fid.InceptionFeatures``), so one Inception pass over the samples gives both FID and IS; the weight
comes from the same file (``fid.load_logit_weights``).
"""
import math

import numpy as np
import torch

from libs.errors import UserError


def inception_logits(pool_features, logit_weight) -> torch.Tensor:
    """(N, 2048) FID features x (1008, 2048) weight -> (N, 1008) float64 logits (no bias; see the docstring)."""
    if torch.is_tensor(pool_features):
        features = pool_features.detach().cpu().double()
    else:
        features = torch.as_tensor(np.asarray(pool_features), dtype=torch.float64)
    return features @ torch.as_tensor(logit_weight, dtype=torch.float64).T


def split_bounds(n: int, splits: int = None, split_size: int = None) -> list:
    """[(start, stop)] of the parts of ``n`` images: ``split_size`` images each (the last part shorter), or
    ``splits`` parts of about ``n / splits`` (exactly one of the two)."""
    if (splits is None) == (split_size is None):
        raise ValueError('give exactly one of splits and split_size')
    if split_size is not None:
        if isinstance(split_size, bool) or not isinstance(split_size, int) or split_size < 1:
            raise UserError(f'Inception Score split size must be a positive integer, got {split_size!r}')
        return [(start, min(start + split_size, n)) for start in range(0, n, split_size)]
    if not isinstance(splits, int) or isinstance(splits, bool) or not 1 <= splits <= n:
        raise UserError(f'Inception Score splits must be an integer in 1..{n} (the number of '
                        f'samples), got {splits!r}')
    return [(i * n // splits, (i + 1) * n // splits) for i in range(splits)]


def inception_score(probs, splits: int = 10, split_size: int = None):
    """(mean, std) of the Inception Score of class probabilities ``probs`` (N, K): over ``splits`` equal parts, or
    with ``split_size`` over consecutive parts of that many images (ADM: 5000; ``splits`` is then ignored).

    Zero probabilities are fine (0 log 0 = 0), so one-hot rows can be given directly.
    """
    probs = torch.as_tensor(np.asarray(probs), dtype=torch.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise UserError(f'Inception Score needs probabilities (N, K), got shape {tuple(probs.shape)}')
    scores = []
    for start, stop in split_bounds(probs.shape[0], None if split_size else splits, split_size):
        part = probs[start:stop]
        marginal = part.mean(0, keepdim=True)
        kl = (torch.special.xlogy(part, part) - torch.special.xlogy(part, marginal)).sum(1)
        scores.append(math.exp(float(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


def inception_score_of_features(pool_features, logit_weight, splits: int = 10, split_size: int = None):
    """(mean, std) IS of images given their FID features (N, 2048) and ``fid.load_logit_weights()``."""
    return inception_score(torch.softmax(inception_logits(pool_features, logit_weight), dim=1), splits, split_size)
