"""Feature arrays as tensors on a device, and squared Euclidean distances between them in blocks: what precision,
recall and KID share. A block of rows is sized so that one block of distances holds at most ``BLOCK_ELEMENTS``
values (256 MB in fp32), so 50,000 x 50,000 comparisons fit on one GPU and on a CPU alike.
"""
import contextlib

import numpy as np
import torch

BLOCK_ELEMENTS = 1 << 26


def as_features(x, device=None, dtype=torch.float32) -> torch.Tensor:
    """A numpy array or tensor of features (N, D) as a ``dtype`` tensor on ``device`` (default: the tensor's own
    device, the CPU for numpy); ValueError for another shape or non-finite values."""
    x = x.detach() if torch.is_tensor(x) else torch.from_numpy(np.asarray(x))
    x = x.to(device=device if device is not None else x.device, dtype=dtype)
    if x.ndim != 2:
        raise ValueError(f'expected features (N, D), got shape {tuple(x.shape)}')
    if not bool(torch.isfinite(x).all()):
        raise ValueError('features hold NaN or infinite values')
    return x


def rows_per_block(columns: int, block_elements: int = BLOCK_ELEMENTS) -> int:
    """Rows of a block with ``columns`` columns that keep it within ``block_elements`` values."""
    return max(1, block_elements // max(1, columns))


@contextlib.contextmanager
def exact_matmuls():
    """fp32 matmuls in full fp32 inside the block: the evaluation harness enables TF32 on GPUs, whose 10-bit
    mantissa would round the products that distances and kernels are differences of."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision('highest')
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a_i - b_j|^2 (A, B) as |a_i|^2 - 2 a_i . b_j + |b_j|^2 in the inputs' dtype, rounding below 0 set to 0."""
    return ((a * a).sum(1, keepdim=True) - 2 * (a @ b.T) + (b * b).sum(1)).clamp_min_(0)
