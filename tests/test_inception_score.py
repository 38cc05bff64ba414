"""Inception Score on predictions with known scores, and the 1008-way logits taken from the FID features."""
import math

import numpy as np
from unittest import mock

import pytest
import torch
from pytorch_fid import inception as fid_inception

from libs.errors import UserError
from libs.metrics import fid
from libs.metrics.inception_score import inception_logits, inception_score, inception_score_of_features


def test_identical_predictions_score_one():
    probs = torch.softmax(torch.randn(1, 1008, generator=torch.Generator().manual_seed(0)), 1).repeat(50, 1)
    mean, std = inception_score(probs, splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize('k', [1, 2, 5, 10])
def test_one_hot_predictions_uniform_over_k_classes_score_k(k):
    probs = torch.nn.functional.one_hot(torch.arange(20 * k) % k, 1008).double()
    mean, std = inception_score(probs, splits=10)   # every split holds each class twice
    assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_soft_predictions_and_the_spread_over_splits():
    # Rows (0.9, 0.1) and (0.1, 0.9) in equal numbers: p(y) = (1/2, 1/2), KL = 0.9 ln 1.8 + 0.1 ln 0.2 per row.
    probs = torch.tensor([[0.9, 0.1], [0.1, 0.9]], dtype=torch.float64).repeat(10, 1)
    mean, std = inception_score(probs, splits=5)
    assert mean == pytest.approx(math.exp(0.9 * math.log(1.8) + 0.1 * math.log(0.2)), rel=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)
    # Two splits: one-hot over two classes (IS 2), then identical rows (IS 1): mean 1.5, population std 0.5.
    halves = torch.cat([torch.eye(2, dtype=torch.float64).repeat(5, 1), torch.tensor([[0.3, 0.7]]).repeat(10, 1)])
    assert inception_score(halves, splits=2) == pytest.approx((1.5, 0.5), rel=1e-12)


def test_a_uniform_classifier_scores_one_in_either_convention():
    uniform = torch.full((12, 1008), 1 / 1008, dtype=torch.float64)
    assert inception_score(uniform, splits=3) == pytest.approx((1.0, 0.0), abs=1e-12)
    assert inception_score(uniform, split_size=5) == pytest.approx((1.0, 0.0), abs=1e-12)


def test_adms_parts_of_a_fixed_size_with_a_shorter_last_part():
    # split_size 4 over 10 rows: [0, 4) one-hot over 4 classes (IS 4), [4, 8) over 2 classes (IS 2), [8, 10) one
    # class (IS 1); ADM averages the three parts alike
    probs = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 0, 1, 0, 1, 5, 5]), 8).double()
    mean, std = inception_score(probs, splits=10, split_size=4)   # split_size wins
    assert mean == pytest.approx(7 / 3, rel=1e-12) and std == pytest.approx(np.std([4, 2, 1]), rel=1e-12)
    # two equal parts instead: one-hot rows score exp(entropy of the part's class frequencies)
    first = math.exp(-(0.4 * math.log(0.4) + 3 * 0.2 * math.log(0.2)))    # classes 0, 1, 2, 3, 0
    second = math.exp(-(2 * 0.4 * math.log(0.4) + 0.2 * math.log(0.2)))   # classes 1, 0, 1, 5, 5
    assert inception_score(probs, splits=2)[0] == pytest.approx((first + second) / 2, rel=1e-12)


def test_logits_of_the_fid_features_are_the_inception_classifier_without_bias(random_weights, one_thread):
    # The full 2015 network as torchvision runs it (pool -> dropout (off) -> fc) on the input pytorch-fid feeds
    # its blocks; its logits minus the bias must equal FID features x fc.weight.
    state = torch.load(random_weights, weights_only=True)
    with mock.patch.object(fid_inception, 'load_state_dict_from_url', lambda *a, **k: state):
        full = fid_inception.fid_inception_v3().eval()
    images = torch.randint(0, 256, (3, 3, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    features = fid.InceptionFeatures(fid.load_inception(random_weights))(images)
    weight = fid.load_logit_weights(random_weights)
    x = torch.nn.functional.interpolate(images.float() / 255, size=(299, 299), mode='bilinear', align_corners=False)
    with torch.no_grad():
        expected = full(2 * x - 1).double() - state['fc.bias'].double()
    ours = inception_logits(features, weight)
    assert ours.shape == (3, 1008)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    mean, _ = inception_score_of_features(features, weight, splits=1)
    assert mean == pytest.approx(inception_score(torch.softmax(expected, 1), splits=1)[0], rel=1e-3)


def test_bad_input_is_one_line(tmp_path):
    bad = tmp_path / 'not_inception.pth'
    torch.save({'fc.weight': torch.zeros(10, 2048)}, bad)
    cases = [
        (lambda: fid.load_logit_weights(str(bad)), r'fc.weight has shape \(10, 2048\), expected \(1008, 2048\)'),
        (lambda: fid.load_logit_weights(str(tmp_path / 'missing.pth')), 'FID Inception weights not found'),
        (lambda: inception_score(torch.ones(5, 3) / 3, splits=6), 'splits must be an integer in 1..5'),
        (lambda: inception_score(torch.ones(5), splits=1), r'needs probabilities \(N, K\)'),
    ]
    for case, message in cases:
        with pytest.raises(UserError, match=message) as info:
            case()
        assert '\n' not in str(info.value)
