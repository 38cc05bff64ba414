"""Inception Score (Salimans et al. 2016): IS = exp(E_x KL(p(y | x) || p(y))), with p(y) the mean of p(y | x).

As in the original evaluation, p(y | x) is the softmax over all 1008 outputs of the 2015 Inception graph, from
logits = pool3 features x fc weight with no bias added (the original code multiplied the pool features by the
graph's logit weight matrix alone), and the N images are cut into ``splits`` consecutive parts
``[i N // splits, (i + 1) N // splits)``: the score is the mean over the parts of each part's IS, reported with their
(population) standard deviation. The pool features are the FID features (``libs.metrics.fid.InceptionFeatures``),
so one Inception pass over the samples gives both FID and IS; the weight comes from the same file
(``fid.load_logit_weights``).
"""
import math

import numpy as np
import torch

from libs.errors import UserError


def inception_logits(pool_features, logit_weight) -> torch.Tensor:
    """(N, 2048) FID features x (1008, 2048) weight -> (N, 1008) float64 logits (no bias; see the docstring)."""
    features = torch.as_tensor(np.asarray(pool_features), dtype=torch.float64)
    return features @ torch.as_tensor(logit_weight, dtype=torch.float64).T


def inception_score(probs, splits: int = 10):
    """(mean, std) of the Inception Score of class probabilities ``probs`` (N, K) over ``splits`` parts.

    Zero probabilities are fine (0 log 0 = 0), so one-hot rows can be given directly.
    """
    probs = torch.as_tensor(np.asarray(probs), dtype=torch.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise UserError(f'Inception Score needs probabilities (N, K), got shape {tuple(probs.shape)}')
    if not isinstance(splits, int) or isinstance(splits, bool) or not 1 <= splits <= probs.shape[0]:
        raise UserError(f'Inception Score splits must be an integer in 1..{probs.shape[0]} (the number of '
                        f'samples), got {splits!r}')
    n = probs.shape[0]
    scores = []
    for i in range(splits):
        part = probs[i * n // splits:(i + 1) * n // splits]
        marginal = part.mean(0, keepdim=True)
        kl = (torch.special.xlogy(part, part) - torch.special.xlogy(part, marginal)).sum(1)
        scores.append(math.exp(float(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


def inception_score_of_features(pool_features, logit_weight, splits: int = 10):
    """(mean, std) IS of images given their FID features (N, 2048) and ``fid.load_logit_weights()``."""
    return inception_score(torch.softmax(inception_logits(pool_features, logit_weight), dim=1), splits)
