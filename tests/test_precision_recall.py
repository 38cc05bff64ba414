"""Precision and recall: counted by hand on small sets, against a transcription of ADM's algorithm, in blocks."""
import numpy as np
import pytest
import torch

from libs.metrics.precision_recall import manifold_radii, precision_recall

pytestmark = pytest.mark.usefixtures('one_thread')   # small matrices: threads only add overhead


def adm_precision_recall(ref: np.ndarray, samples: np.ndarray, k: int):
    """ADM's evaluator written out on whole matrices: squared distances, the k-th neighbour radius of each point
    with itself counted (np.partition's k-th smallest of the row), membership by <=, no clamping."""
    def distances(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    ref_radii = np.partition(distances(ref, ref), k, axis=1)[:, k]
    sample_radii = np.partition(distances(samples, samples), k, axis=1)[:, k]
    cross = distances(samples, ref)
    return (cross <= ref_radii[None, :]).any(1).mean(), (cross.T <= sample_radii[None, :]).any(1).mean()


def test_counts_by_hand_on_a_line():
    # k = 1: every reference point's radius reaches its nearest other point: 0, 1, 2, 3 -> 1; 10 -> 7.
    ref = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
    samples = np.array([[0.5], [5.0], [20.0]])   # 0.5 (ball of 0), 5 (ball of 10), 20 (outside: 10 > 7)
    # sample radii: 4.5, 4.5, 15; 0..3 lie in the ball of 0.5, 10 in the ball of 20 (5 > 4.5 from 5)
    assert precision_recall(ref, samples, k=1) == pytest.approx((2 / 3, 1.0), abs=1e-12)
    radii = manifold_radii(ref, k=1)
    np.testing.assert_array_equal(radii.numpy(), [1, 1, 1, 1, 49])   # squared distances
    assert manifold_radii(ref, k=2).tolist() == [4, 1, 1, 4, 64]      # self counted as the 0-th neighbour


def test_ties_count_as_inside():
    # integer points: distances exact in fp32; a sample exactly on a ball's boundary is on the manifold (<=)
    ref = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    on_boundary = np.array([[4.0, 0.0], [0.0, 4.0], [4.0, 2.0], [2.0, 4.0]])
    assert precision_recall(ref, on_boundary, k=1)[0] == 1.0
    assert precision_recall(ref, on_boundary + 0.01, k=1)[0] < 1.0


def test_identical_sets_have_precision_and_recall_one():
    features = np.random.default_rng(0).standard_normal((60, 32))
    assert precision_recall(features, features.copy(), k=3) == (1.0, 1.0)


@pytest.mark.parametrize('k', [1, 3, 5])
def test_equals_adms_algorithm_in_blocks(k):
    rng = np.random.default_rng(k)
    ref = rng.standard_normal((70, 24))
    samples = rng.standard_normal((45, 24)) + 0.6
    expected = adm_precision_recall(ref, samples, k)
    assert 0.05 < expected[0] < 0.95 and 0.05 < expected[1] < 0.95   # neither count is trivially all or none
    for block in (1 << 26, 200, 1):   # one block, blocks of a few rows, one row at a time
        assert precision_recall(ref, samples, k, block_elements=block, dtype=torch.float64) == expected
    assert precision_recall(torch.from_numpy(ref).float(), torch.from_numpy(samples).float(), k) == expected


def test_fp16_distances_round_as_adms_and_fall_back_to_fp32_where_they_overflow():
    ref, samples = np.array([[0.0], [1.0], [-5.0]]), np.array([[2.0001], [50.0], [60.0]])
    # k = 1: the ball of 1 has squared radius 1; 2.0001 is 1.0002 away in fp32, but 2.0 (1 away) in fp16
    assert precision_recall(ref, samples, k=1)[0] == 0.0
    assert precision_recall(ref, samples, k=1, dtype=torch.float16)[0] == pytest.approx(1 / 3)
    rng = np.random.default_rng(1)
    ref, samples = 300 + rng.standard_normal((30, 8)), 300 + 1.5 * rng.standard_normal((20, 8))
    # |x|^2 = 8 * 300^2 overflows fp16 (max 65504): ADM's evaluator then computes the block in fp32
    assert precision_recall(ref, samples, 3, dtype=torch.float16) == precision_recall(ref, samples, 3)


def test_too_few_points_and_bad_shapes():
    with pytest.raises(ValueError, match='with k=3 need more than 3 samples, got 3'):
        precision_recall(np.zeros((10, 2)), np.zeros((3, 2)), k=3)
    with pytest.raises(ValueError, match='more than 3 reference images, got 2'):
        precision_recall(np.zeros((2, 2)), np.zeros((10, 2)), k=3)
    with pytest.raises(ValueError, match='differ in size: 2 vs 3'):
        precision_recall(np.zeros((10, 2)), np.zeros((10, 3)))
    with pytest.raises(ValueError, match='NaN'):
        precision_recall(np.full((10, 2), np.nan), np.zeros((10, 2)))
