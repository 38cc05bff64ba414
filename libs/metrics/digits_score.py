"""An offline quality score for samples of scikit-learn's 8x8 digits (the suite's default dataset).

A small CNN classifier, trained once on the real digits with a fixed recipe and cached to a file, gives

- ``accuracy``: how often class-conditional samples are recognised as the class they were conditioned on;
- ``frechet_distance``: the Fréchet distance between the classifier's penultimate-layer features (64 wide) of
  the samples and of all 1797 real digits -- an "FID" for digits.

Typical values (default recipe; the classifier reaches 0.99 on the held-out quarter of the digits):

=====================================================  ========  ================
samples (vs. the features of all 1797 real digits)      accuracy  frechet_distance
=====================================================  ========  ================
all 1797 real digits                                     0.99      0
a random half of the real digits (898)                   0.99      ~2.6
the held-out quarter of the real digits (450)            0.99      ~2.3
real digits + Gaussian noise, std 0.2                    0.98      ~11
real digits + Gaussian noise, std 0.5                    0.86      ~80
only the zeros (178 real digits)                         1.00      ~1400
uniform noise in [-1, 1] (1000)                          ~0.10     ~800
Gaussian noise, std 1, clamped to [-1, 1] (1000)         ~0.10     ~730
=====================================================  ========  ================

A good model reaches accuracy close to 1 and a distance within a few units of the real-half value; the distance
also exposes mode collapse (only zeros) that accuracy alone misses.
Samples are in model space, ``(B, 1, 8, 8)`` floats in ``[-1, 1]`` (pixel value / 16 * 2 - 1), and are clamped
to that range; they are not quantised to the dataset's 17 grey levels.
"""
import os

import torch
from torch import nn

from libs.data.augment import random_shift
from libs.data.datasets import Digits
from libs.errors import UserError
from libs.fileio import cached_model, one_thread, recipe_hash
from libs.metrics.fid import activation_statistics, frechet_distance

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CLASSIFIER_PATH = os.path.join(REPO_ROOT, 'assets', 'digits_classifier.pt')

# Everything that determines the trained weights; its hash is stored with them, so a change retrains the cache.
RECIPE = dict(version=1, architecture='conv32-conv32-pool-conv64-fc64(features)-relu-fc10', feature_dim=64, seed=0,
              held_out_fraction=Digits.CLASSIFIER_HELD_OUT_FRACTION, split_seed=Digits.CLASSIFIER_SPLIT_SEED,
              epochs=20, batch_size=64, lr=2e-3, weight_decay=1e-4,
              shift_augment=1)
RECIPE_HASH = recipe_hash(RECIPE)


def real_digits():
    """All 1797 digits in model space ``(N, 1, 8, 8)`` float32 in ``[-1, 1]`` and their labels ``(N,)`` int64."""
    digits = Digits('all')
    return digits.images, torch.from_numpy(digits.labels)


def split_indices():
    """The classifier's fixed stratified split of the 1797 digits: ``(train_indices, held_out_indices)``."""
    _, labels = real_digits()
    return Digits.classifier_split(labels.numpy())


class DigitsClassifier(nn.Module):
    """A small CNN for 8x8 digits: ``x (B, 1, 8, 8) in [-1, 1]`` -> logits ``(B, 10)``.

    ``features`` gives the penultimate layer before its ReLU, ``(B, feature_dim)`` (no dead units, so the
    feature covariance of real digits is well conditioned).
    """

    def __init__(self, feature_dim: int = RECIPE['feature_dim']):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(64 * 4 * 4, feature_dim))
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(feature_dim, 10))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_classifier() -> DigitsClassifier:
    """Train the classifier on the training split with the fixed ``RECIPE`` (a few seconds on one CPU core)."""
    with one_thread(), torch.enable_grad():  # may be called lazily from inside a no_grad scoring call
        return _train()


def _train() -> DigitsClassifier:
    generator = torch.Generator().manual_seed(RECIPE['seed'])
    torch.manual_seed(RECIPE['seed'])
    images, labels = real_digits()
    train_idx, _ = split_indices()
    x, y = images[train_idx], labels[train_idx]
    model = DigitsClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=RECIPE['lr'], weight_decay=RECIPE['weight_decay'])
    steps_per_epoch = (len(x) + RECIPE['batch_size'] - 1) // RECIPE['batch_size']
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, RECIPE['lr'],
                                                    total_steps=RECIPE['epochs'] * steps_per_epoch)
    model.train()
    for _ in range(RECIPE['epochs']):
        x_epoch = random_shift(x, RECIPE['shift_augment'], generator)
        order = torch.randperm(len(x), generator=generator)
        for batch in order.split(RECIPE['batch_size']):
            loss = nn.functional.cross_entropy(model(x_epoch[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model.eval()


def load_classifier(path: str = None) -> DigitsClassifier:
    """The trained classifier from its cache file (default ``assets/digits_classifier.pt``).

    A missing, unreadable or stale cache (made with another ``RECIPE``) is retrained and rewritten.
    """
    return cached_model(path or DEFAULT_CLASSIFIER_PATH, RECIPE, DigitsClassifier, lambda: train_classifier())


@torch.no_grad()
def classifier_accuracy(classifier: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` (model space) that ``classifier`` assigns to ``labels``."""
    return (classifier(images).argmax(1) == labels).double().mean().item()


def _as_samples(samples) -> torch.Tensor:
    x = torch.as_tensor(samples).detach().float().cpu()
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
        raise UserError(f'digits_score expects samples of shape (B, 1, 8, 8), got {tuple(x.shape)}')
    return x.clamp(-1, 1)


@torch.no_grad()
def digits_score(samples, labels=None, classifier: DigitsClassifier = None) -> dict:
    """Score 8x8 digit samples ``(B, 1, 8, 8)`` in ``[-1, 1]``.

    Returns ``dict(accuracy, frechet_distance, n)``: ``accuracy`` of the classifier against the class ``labels``
    the samples were conditioned on (``None`` without labels; entries ``-1`` are ignored), and the Fréchet
    distance of the classifier's penultimate features of the samples to those of all real digits.
    """
    x = _as_samples(samples)
    if len(x) < 2:
        raise UserError(f'digits_score needs at least 2 samples, got {len(x)}')
    classifier = (classifier or load_classifier()).eval()
    accuracy = None
    if labels is not None:
        labels = torch.as_tensor(labels).long().cpu().reshape(-1)
        if len(labels) != len(x):
            raise UserError(f'digits_score got {len(x)} samples but {len(labels)} labels')
    real, _ = real_digits()
    with one_thread():
        if labels is not None and (labels >= 0).any():
            known = labels >= 0
            accuracy = classifier_accuracy(classifier, x[known], labels[known])
        real_features = classifier.features(real).double().numpy()
        features = classifier.features(x).double().numpy()
    mu_real, sigma_real = activation_statistics(real_features)
    mu, sigma = activation_statistics(features)
    return dict(accuracy=accuracy, frechet_distance=frechet_distance(mu, sigma, mu_real, sigma_real), n=len(x))
