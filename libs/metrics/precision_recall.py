"""Improved precision and recall (Kynkaanniemi et al. 2019) as ADM's evaluator computes them.

Each set of features (Inception pool features, (N, 2048)) stands for a manifold: the union of balls around its points,
the ball of point i reaching its k-th nearest neighbour in the same set, the point itself counted as the 0-th
(ADM: the (k+1)-th smallest distance of the row, self included; k = 3). No radius is clamped (ADM's
``clamp_to_percentile`` is None). A point lies on a manifold when it is within (<=) the radius of at least one ball.

- precision: the fraction of samples that lie on the reference manifold;
- recall: the fraction of reference images that lie on the sample manifold.

ADM computes the distances in fp16 and falls back to fp32 for a block with a non-finite value. Here they are
computed in fp32 (or fp64) by default, with TF32 off; ``dtype=torch.float16`` reproduces ADM's rounding for
comparison (BENCHMARKS.md states the difference on synthetic features). Distances are squared Euclidean, as in ADM
(the comparisons do not change). Both directions come from one pass over the reference x sample distances, in blocks
of rows on the features' device.
"""
import torch

from libs.metrics.distances import BLOCK_ELEMENTS, as_features, exact_matmuls, rows_per_block, squared_distances

DTYPES = (torch.float16, torch.float32, torch.float64)


def _distances(a: torch.Tensor, b: torch.Tensor, dtype) -> torch.Tensor:
    """Squared distances in ``dtype`` (fp16: rounded as ADM's, then fp32; fp32 instead where fp16 overflows)."""
    if dtype != torch.float16:
        return squared_distances(a, b)
    rounded = squared_distances(a.half(), b.half()).float()
    return rounded if bool(torch.isfinite(rounded).all()) else squared_distances(a, b)


def _check(n: int, k: int, what: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f'precision and recall need an integer k >= 1, got {k!r}')
    if n <= k:
        raise ValueError(f'precision and recall with k={k} need more than {k} {what}, got {n}')


def manifold_radii(features, k: int = 3, dtype=torch.float32, block_elements: int = BLOCK_ELEMENTS,
                   device=None) -> torch.Tensor:
    """(N,) squared distance of each point to its k-th nearest neighbour in ``features`` (N, D), itself counted as
    the 0-th; float32 for fp16 and fp32 distances, else ``dtype``."""
    if dtype not in DTYPES:
        raise ValueError(f'distance dtype must be one of {DTYPES}, got {dtype}')
    x = as_features(features, device, torch.float64 if dtype == torch.float64 else torch.float32)
    _check(len(x), k, 'points')
    radii = torch.empty(len(x), dtype=x.dtype, device=x.device)
    rows = rows_per_block(len(x), block_elements)
    with exact_matmuls():
        for start in range(0, len(x), rows):
            d = _distances(x[start:start + rows], x, dtype)
            radii[start:start + rows] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return radii


def precision_recall(ref_features, sample_features, k: int = 3, device=None, dtype=torch.float32,
                     block_elements: int = BLOCK_ELEMENTS):
    """(precision, recall) of samples against reference images, from their features ``(N_ref, D)`` and
    ``(N_samples, D)`` (numpy arrays or tensors), with k-NN radii (ADM: k = 3).

    Runs on ``device`` (default: the reference tensor's device, the CPU for numpy); ``dtype`` of the distances:
    torch.float32 (default), torch.float64, or torch.float16 for ADM's rounding. ``block_elements`` bounds the
    distances held at once."""
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    ref = as_features(ref_features, device, compute)
    samples = as_features(sample_features, ref.device, compute)
    if ref.shape[1] != samples.shape[1]:
        raise ValueError(f'reference and sample features differ in size: {ref.shape[1]} vs {samples.shape[1]}')
    _check(len(ref), k, 'reference images')
    _check(len(samples), k, 'samples')
    ref_radii = manifold_radii(ref, k, dtype, block_elements)
    sample_radii = manifold_radii(samples, k, dtype, block_elements)
    on_ref_manifold = torch.zeros(len(samples), dtype=torch.bool, device=ref.device)
    on_sample_manifold = torch.zeros(len(ref), dtype=torch.bool, device=ref.device)
    rows = rows_per_block(len(samples), block_elements)
    with exact_matmuls():
        for start in range(0, len(ref), rows):
            d = _distances(ref[start:start + rows], samples, dtype)
            on_ref_manifold |= (d <= ref_radii[start:start + rows, None]).any(0)
            on_sample_manifold[start:start + rows] = (d <= sample_radii[None, :]).any(1)
    return float(on_ref_manifold.double().mean()), float(on_sample_manifold.double().mean())
