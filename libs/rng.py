"""The suite's random-number policy, in one place.

- Training: every process starts from ``config.seed`` (identical initial weights), then draws its batches' noise
  from its own stream ``training_seed(seed, rank)``; a checkpoint stores each process's RNG state, so a resume
  with the same number of processes repeats an uninterrupted run exactly. A resume with another number of
  processes reseeds with ``training_seed(seed, rank, step)``.
- Evaluation and sample grids run inside ``seeded(seed)``, which forks the global RNG: loading scorers or the
  autoencoder and sampling never move the training run's streams.
- Samples: sample ``i`` of an evaluation is a function of ``(seed, i)`` alone (``SampleRandom``): its starting
  noise, its condition and any noise a stochastic sampler adds come from its own generator. So the samples, and
  the score, do not depend on the number of processes or the batch size, and a sharded evaluation can resume.
- Per-process streams of the classifier / likelihood modes (the bound's noise, PGD's random start):
  ``eval_process_seed(seed, rank)``.

The multipliers are arbitrary primes; they are named constants because changing one changes every random stream
that depends on it (and so every recorded loss or score).
"""
import contextlib

import torch

TRAINING_RANK_STRIDE = 7919        # training_seed: seed + 7919 rank (+ 104729 step after a resume across sizes)
TRAINING_STEP_STRIDE = 104729
EVAL_RANK_STRIDE = 1000003         # eval_process_seed: seed * 1000003 + rank
# sample_seed: (seed * stride + index) mod 2^32. torch's CPU generator keeps only the low 32 bits of its seed, so the
# seed must change those bits (an earlier (seed << 32) + index gave every seed the same samples). With Knuth's
# multiplicative-hash constant, the streams of two seeds that differ by at most 10,000 share no sample within
# 341,411 indices of each other, more than a 50k-sample FID draws.
SAMPLE_SEED_STRIDE = 2654435761


FEATURE_STREAM_STRIDE = 15485863   # feature_seed: the noise of feature evaluation pass k (epoch, view, ...)


def feature_seed(seed: int, stream: int) -> int:
    """The seed of one pass of a feature evaluation (libs/evaluation/features.py): its images' noise then comes from
    ``SampleRandom(feature_seed(seed, stream), image indices)``, whatever the number of processes."""
    return seed + FEATURE_STREAM_STRIDE * (stream + 1)


def training_seed(seed: int, rank: int, step: int = 0) -> int:
    return seed + TRAINING_RANK_STRIDE * rank + TRAINING_STEP_STRIDE * step


def eval_process_seed(seed: int, rank: int) -> int:
    return seed * EVAL_RANK_STRIDE + rank


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index``'s generator: distinct for the 2^32 indices of one seed."""
    return (seed * SAMPLE_SEED_STRIDE + index) % 2 ** 32


def loader_seed(seed: int, rank: int) -> int:
    """The DataLoader's own generator (an iterator would otherwise draw from the global RNG)."""
    return seed + rank


@contextlib.contextmanager
def seeded(seed: int, device):
    """Run a block with its own seeded RNG streams, leaving the caller's (the training run's) untouched."""
    devices = [device] if torch.device(device).type == 'cuda' else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def generator_noise(generator: torch.Generator = None):
    """``noise(x) -> N(0, I)`` shaped like x, from ``generator`` (the global RNG of x's device if None): the noise
    argument of the samplers."""
    def noise(x: torch.Tensor) -> torch.Tensor:
        if generator is None:
            return torch.randn_like(x)
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return noise


class SampleRandom:
    """The random numbers of a batch of samples, row ``i`` drawn from the generator of sample ``indices[i]``.

    Each generator lives on the CPU, so a sample is the same on any device and in any batch. ``randn(shape)`` and
    ``rand(shape)`` give (B, *shape), ``randint(high)`` gives (B,) int64, ``poisson(rates)`` counts shaped like the
    rates (the discrete samplers' jumps), and calling it with a tensor x (the samplers' ``noise``
    argument) gives N(0, I) noise shaped like x; each call advances every row's generator.
    """

    def __init__(self, seed: int, indices, device='cpu'):
        self.indices = [int(i) for i in indices]
        self.device = torch.device(device)
        self.generators = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def randn(self, shape, dtype=torch.float32) -> torch.Tensor:
        rows = [torch.randn(tuple(shape), generator=g, dtype=dtype) for g in self.generators]
        return torch.stack(rows).to(self.device)

    def rand(self, shape, dtype=torch.float32) -> torch.Tensor:
        """(B, *shape) uniform on [0, 1)."""
        rows = [torch.rand(tuple(shape), generator=g, dtype=dtype) for g in self.generators]
        return torch.stack(rows).to(self.device)

    def poisson(self, rates: torch.Tensor) -> torch.Tensor:
        """Poisson counts of the (B, ...) ``rates``, row i from sample i's generator (the jumps of tau-leaping)."""
        if rates.shape[0] != len(self.generators):
            raise ValueError(f'counts for a batch of {rates.shape[0]}, but this draws {len(self.generators)} samples')
        cpu = rates.detach().to('cpu', torch.float64)
        return torch.stack([torch.poisson(row, generator=g) for row, g in zip(cpu, self.generators)]).to(rates.device)

    def randint(self, high: int) -> torch.Tensor:
        rows = [torch.randint(0, high, (1,), generator=g) for g in self.generators]
        return torch.cat(rows).to(self.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self.generators):
            raise ValueError(f'noise for a batch of {x.shape[0]}, but this draws {len(self.generators)} samples')
        return self.randn(x.shape[1:], x.dtype).to(x.device)
