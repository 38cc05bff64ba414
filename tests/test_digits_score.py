"""The digits score: classifier quality, the score on real digits vs noise, and the classifier cache."""
import os

import pytest
import torch

from libs.errors import UserError
from libs.metrics import digits_score as ds


@pytest.fixture(scope='module')
def cache_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('digits') / 'digits_classifier.pt')
    ds.load_classifier(path)  # trains once and writes the cache
    return path


@pytest.fixture(scope='module')
def classifier(cache_path):
    return ds.load_classifier(cache_path)


def test_classifier_held_out_accuracy(classifier):
    images, labels = ds.real_digits()
    _, held_out = ds.split_indices()
    assert ds.classifier_accuracy(classifier, images[held_out], labels[held_out]) >= 0.95


def test_score_real_digits_vs_noise(classifier):
    images, labels = ds.real_digits()
    half = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:len(images) // 2]
    real = ds.digits_score(images[half], labels[half], classifier)
    g = torch.Generator().manual_seed(1)
    noise = ds.digits_score(torch.randn(len(half), 1, 8, 8, generator=g), labels[half], classifier)
    print(f'real half: {real}, noise: {noise}')
    assert real['n'] == noise['n'] == len(half)
    assert real['accuracy'] >= 0.95
    assert real['frechet_distance'] < 10
    assert noise['accuracy'] < 0.25
    assert noise['frechet_distance'] > 30 * real['frechet_distance']
    unconditional = ds.digits_score(images[half].numpy(), classifier=classifier)
    assert unconditional['accuracy'] is None
    assert unconditional['frechet_distance'] == pytest.approx(real['frechet_distance'])


def test_score_bad_input(classifier):
    with pytest.raises(UserError, match=r'expects samples of shape \(B, 1, 8, 8\)'):
        ds.digits_score(torch.zeros(4, 3, 8, 8), classifier=classifier)
    with pytest.raises(UserError, match='got 4 samples but 3 labels'):
        ds.digits_score(torch.zeros(4, 1, 8, 8), torch.zeros(3), classifier=classifier)


def test_cache_is_reused(cache_path, monkeypatch):
    mtime = os.path.getmtime(cache_path)
    monkeypatch.setattr(ds, 'train_classifier', lambda: pytest.fail('retrained although the cache is fresh'))
    ds.load_classifier(cache_path)
    assert os.path.getmtime(cache_path) == mtime


def test_stale_cache_is_retrained(cache_path, tmp_path, monkeypatch):
    stale = str(tmp_path / 'stale.pt')
    cache = torch.load(cache_path, weights_only=True)
    torch.save(dict(cache, recipe_hash='an older recipe'), stale)
    calls = []
    monkeypatch.setattr(ds, 'train_classifier', lambda: calls.append(1) or ds.DigitsClassifier().eval())
    ds.load_classifier(stale)
    assert calls == [1]
    assert torch.load(stale, weights_only=True)['recipe_hash'] == ds.RECIPE_HASH
    ds.load_classifier(stale)
    assert calls == [1]
    assert sorted(os.listdir(tmp_path)) == ['stale.pt']  # written atomically, no temporary left behind
