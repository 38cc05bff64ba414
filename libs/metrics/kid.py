"""Kernel Inception Distance (Binkowski et al. 2018), as torch-fidelity computes it.

KID is the squared maximum mean discrepancy between the reference and sample features under the cubic polynomial
kernel k(x, y) = (x . y / d + 1)^3 (d the feature size), estimated without bias:

    MMD^2 = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
            - 2 sum_{i, j} k(x_i, y_j) / (m n)

on ``subsets`` pairs of random subsets of ``subset_size`` features each (drawn without replacement, independently
for the two sets); the result is the mean over the subsets and their (population) standard deviation. The defaults
are Binkowski et al.'s and torch-fidelity's: 100 subsets of 1,000. The estimate is unbiased, so it can be slightly
negative for identical distributions. Papers often print KID x 1000; the functions here return KID itself.

The products x . y are computed in fp32 with TF32 off (fp64 on request), the kernel values and their sums in fp64:
KID is a difference of three sums of about 3 each and is of order 1e-3. On Inception-like features (|N(0.4, 0.3^2)|,
2048 wide, KID 1.5e-3) fp32 products moved KID by 4e-8 of its value against fp64, and took two thirds of the time
on a CPU.
"""
import numpy as np
import torch

from libs.metrics.distances import as_features, exact_matmuls


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(x_i . y_j / d + 1)^3, (M, N) fp64, for x (M, d) and y (N, d): the products in the inputs' dtype (TF32 off),
    the rest in fp64."""
    with exact_matmuls():
        products = x @ y.T
    return (products.double() / x.shape[1] + 1) ** 3


def mmd2_unbiased(x, y, dtype=torch.float64) -> float:
    """The unbiased MMD^2 of two sets of features (M, d) and (N, d), M, N >= 2, under ``polynomial_kernel``, the
    products x . y computed in ``dtype``."""
    x = as_features(x, dtype=dtype)
    y = as_features(y, x.device, dtype)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f'the unbiased MMD needs at least 2 features in each set, got {m} and {n}')
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * kxy.mean())


def kid(ref_features, sample_features, subsets: int = 100, subset_size: int = 1000, seed: int = 0, device=None,
        dtype=torch.float32):
    """(mean, std) of the unbiased polynomial-kernel MMD^2 over ``subsets`` random pairs of subsets of
    ``subset_size`` reference and sample features (numpy arrays or tensors, (N, d)); the subsets are drawn from a
    generator seeded with ``seed`` (reference indices first, then sample indices, for each subset). Runs on
    ``device`` (default: the reference tensor's device, the CPU for numpy), the products in ``dtype``."""
    ref = as_features(ref_features, device, dtype)
    samples = as_features(sample_features, ref.device, dtype)
    if ref.shape[1] != samples.shape[1]:
        raise ValueError(f'reference and sample features differ in size: {ref.shape[1]} vs {samples.shape[1]}')
    if isinstance(subsets, bool) or not isinstance(subsets, int) or subsets < 1:
        raise ValueError(f'KID needs a positive integer number of subsets, got {subsets!r}')
    if isinstance(subset_size, bool) or not isinstance(subset_size, int) or subset_size < 2:
        raise ValueError(f'KID needs subsets of at least 2 features, got {subset_size!r}')
    if min(len(ref), len(samples)) < subset_size:
        raise ValueError(f'KID subsets of {subset_size} need at least {subset_size} features in each set, got '
                         f'{len(ref)} reference and {len(samples)} sample features')
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        pick_ref = torch.randperm(len(ref), generator=generator)[:subset_size].to(ref.device)
        pick_samples = torch.randperm(len(samples), generator=generator)[:subset_size].to(ref.device)
        values.append(mmd2_unbiased(ref[pick_ref], samples[pick_samples], dtype))
    return float(np.mean(values)), float(np.std(values))
