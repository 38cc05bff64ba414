"""Metrics of learned representations, for DDAE's feature evaluations (libs/evaluation/features.py).

- ``alignment`` and ``uniformity`` (Wang & Isola 2020) of L2-normalised features: alignment = E |f(a) - f(b)|^2
  over the two views (a, b) of one image (alpha = 2); uniformity = log E exp(-t |f(x) - f(y)|^2) over all pairs of
  distinct images (t = 2), computed exactly over every pair, in blocks, as a log-sum-exp. (DDAE averages it over
  batches of 128 instead, which depends on the batch size; over the whole set it does not.)
- ``train_probes``: linear classifiers (or small heads) on frozen features, several at once over the same epochs,
  with DDAE's recipe (Adam, cosine learning rate, cross-entropy), and ``probe_accuracy``.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from libs.errors import UserError


def normalised(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.double(), dim=1)


def alignment(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared distance of the normalised features of two views; (N, D) each."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f'alignment needs two (N, D) views of the same shape, got {tuple(a.shape)}, {tuple(b.shape)}')
    return (normalised(a) - normalised(b)).pow(2).sum(1).mean().item()


def uniformity(features: torch.Tensor, t: float = 2.0, block: int = 2048) -> float:
    """log of the mean over the N (N - 1) / 2 pairs of distinct rows of exp(-t |f_i - f_j|^2), f normalised."""
    f = normalised(features)
    n = f.shape[0]
    if n < 2:
        raise ValueError('uniformity needs at least two features')
    terms = []
    for start in range(0, n, block):
        rows = f[start:start + block]
        dist = (2.0 - 2.0 * rows @ f.T).clamp(min=0.0)         # |a - b|^2 of unit vectors
        index = torch.arange(start, start + rows.shape[0])[:, None]
        upper = torch.arange(n)[None, :] > index                # each pair once, no self-pairs
        terms.append((-t * dist)[upper])
    pairs = n * (n - 1) / 2
    return (torch.logsumexp(torch.cat(terms), dim=0) - math.log(pairs)).item()


def train_probes(heads: dict, batches, epochs: int, lr: float, progress: bool = False):
    """Train every head of ``heads`` ({key: nn.Module}) with its own Adam (lr, cosine decay over ``epochs`` as
    DDAE's CosineAnnealingLR, stepped once per epoch) on the cross-entropy of ``batches(epoch)``, which yields
    ``({key: inputs}, labels)`` per step (``inputs`` a tuple of the head's arguments). Returns the heads in eval
    mode."""
    if epochs < 1 or lr <= 0:
        raise UserError(f'a probe needs epochs >= 1 and lr > 0, got epochs={epochs}, lr={lr}')
    optimizers = {key: torch.optim.Adam(head.parameters(), lr=lr) for key, head in heads.items()}
    schedulers = {key: torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs) for key, opt in optimizers.items()}
    epochs_iter = range(epochs)
    if progress:
        from tqdm.auto import tqdm
        epochs_iter = tqdm(epochs_iter, desc='probes')
    for epoch in epochs_iter:
        for head in heads.values():
            head.train()
        for inputs, labels in batches(epoch):
            for key, head in heads.items():
                loss = F.cross_entropy(head(*inputs[key]).float(), labels)
                optimizers[key].zero_grad(set_to_none=True)
                loss.backward()
                optimizers[key].step()
        for scheduler in schedulers.values():
            scheduler.step()
    return {key: head.eval() for key, head in heads.items()}


@torch.no_grad()
def probe_accuracy(head: nn.Module, inputs: tuple, labels: torch.Tensor, batch: int = 4096) -> float:
    """Top-1 accuracy of ``head(*inputs)`` against ``labels``, evaluated in chunks."""
    correct = 0
    for start in range(0, len(labels), batch):
        chunk = [x[start:start + batch] for x in inputs]
        correct += (head(*chunk).argmax(1) == labels[start:start + batch]).sum().item()
    return correct / max(1, len(labels))
