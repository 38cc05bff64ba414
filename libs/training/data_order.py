"""A batch sampler whose order is a function of (seed, position), so a resumed run reads the same batches.

Epoch ``e`` is a permutation of the dataset drawn from ``seed + e``; it is cut into global batches of
``batch_size * num_processes`` (an incomplete last global batch is dropped) and process ``r`` takes the ``r``-th
slice of each. The global batches therefore do not depend on the number of processes, only the split of each
batch among them does.
"""
import torch
from torch.utils.data import Sampler

from libs.errors import UserError


class ResumableBatchSampler(Sampler):
    """Infinite per-process batches of indices, starting at global batch ``start``."""

    def __init__(self, dataset_len: int, batch_size: int, seed: int, rank: int = 0, num_processes: int = 1,
                 start: int = 0):
        self.dataset_len = dataset_len
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.num_processes = num_processes
        self.start = start
        self.global_batch = batch_size * num_processes
        self.batches_per_epoch = dataset_len // self.global_batch
        if self.batches_per_epoch == 0:
            raise UserError(f'the dataset has {dataset_len} images, fewer than one global batch of '
                            f'{self.global_batch}; lower config.train.batch_size')

    def epoch_permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.dataset_len, generator=generator)

    def __iter__(self):
        position = self.start
        while True:
            epoch, index = divmod(position, self.batches_per_epoch)
            perm = self.epoch_permutation(epoch)
            for batch in range(index, self.batches_per_epoch):
                offset = batch * self.global_batch + self.rank * self.batch_size
                yield perm[offset:offset + self.batch_size].tolist()
                position += 1

    def __len__(self):  # infinite; DataLoader only needs this for progress estimates
        return 2 ** 62
