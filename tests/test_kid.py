"""KID: the unbiased polynomial-kernel MMD^2 against its definition, closed forms and its expectation."""
import itertools

import numpy as np
import pytest
import torch

from libs.metrics.kid import kid, mmd2_unbiased

pytestmark = pytest.mark.usefixtures('one_thread')   # small matrices: threads only add overhead


def mmd2_by_definition(x: np.ndarray, y: np.ndarray) -> float:
    """Binkowski et al.'s estimator written as sums over pairs, k(a, b) = (a . b / d + 1)^3."""
    d = x.shape[1]

    def k(a, b):
        return (a @ b / d + 1) ** 3
    m, n = len(x), len(y)
    within_x = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    within_y = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    across = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return within_x + within_y - 2 * across


def test_mmd_equals_its_definition():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((7, 5)), 0.5 * rng.standard_normal((9, 5)) + 0.3
    assert mmd2_unbiased(x, y) == pytest.approx(mmd2_by_definition(x, y), rel=1e-6)
    assert mmd2_unbiased(x, y, torch.float64) == pytest.approx(mmd2_by_definition(x, y), rel=1e-12)


def test_constant_sets_give_the_kernel_distance_on_every_subset():
    a, b = np.full((10, 4), 0.5), np.full((12, 4), 2.0)
    k_aa, k_bb, k_ab = (0.25 + 1) ** 3, (4 + 1) ** 3, (1 + 1) ** 3   # (a . b / 4 + 1)^3
    assert kid(a, b, subsets=5, subset_size=6) == pytest.approx((k_aa + k_bb - 2 * k_ab, 0.0), abs=1e-9)


def test_expectation_is_the_population_mmd_and_zero_for_one_distribution():
    # d = 1: k(x, y) = x^3 y^3 + 3 x^2 y^2 + 3 x y + 1, so for independent draws the population MMD^2 is
    # (E x^3 - E y^3)^2 + 3 (E x^2 - E y^2)^2 + 3 (E x - E y)^2.
    def moments(mean, std):
        return mean, mean ** 2 + std ** 2, mean ** 3 + 3 * mean * std ** 2
    (x1, x2, x3), (y1, y2, y3) = moments(0.2, 1.0), moments(0.5, 0.8)
    population = (x3 - y3) ** 2 + 3 * (x2 - y2) ** 2 + 3 * (x1 - y1) ** 2
    rng = np.random.default_rng(0)
    x, y, x_again = rng.normal(0.2, 1.0, (4000, 1)), rng.normal(0.5, 0.8, (4000, 1)), rng.normal(0.2, 1.0, (4000, 1))
    mean, std = kid(x, y, subsets=100, subset_size=300)
    assert mean == pytest.approx(population, abs=4 * std / 10)   # within 4 standard errors of the mean
    same, same_std = kid(x, x_again, subsets=100, subset_size=300)
    assert abs(same) < 4 * same_std / 10 and same_std > 0
    # unbiased: the diagonal left in (the V-statistic) would add 2 (E k(x, x) - E k(x, x')) / m = 0.16 here
    bias = 2 * (np.mean((x[:, 0] ** 2 + 1) ** 3) - (x3 ** 2 + 3 * x2 ** 2 + 3 * x1 ** 2 + 1)) / 300
    assert abs(same) < bias / 5


def test_fp32_products_match_fp64_on_inception_like_features():
    rng = np.random.default_rng(1)
    x, y = np.abs(rng.normal(0.4, 0.3, (300, 512))), np.abs(rng.normal(0.43, 0.3, (300, 512)))
    single = kid(x, y, subsets=3, subset_size=200)
    double = kid(x, y, subsets=3, subset_size=200, dtype=torch.float64)
    assert single[0] > 1e-4 and single == pytest.approx(double, rel=1e-5)


def test_too_few_features_for_the_subsets():
    with pytest.raises(ValueError, match='KID subsets of 1000 need at least 1000 features in each set, got 1200 '
                                         'reference and 999 sample features'):
        kid(np.zeros((1200, 3)), np.zeros((999, 3)))
    with pytest.raises(ValueError, match='at least 2 features'):
        kid(np.zeros((10, 3)), np.zeros((10, 3)), subset_size=1)
