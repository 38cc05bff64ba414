"""A batch sampler whose order is a function of (seed, position), so a resumed run reads the same batches.

Epoch ``e`` is a permutation of the dataset drawn from ``seed + e``; it is cut into global batches of
``batch_size * num_processes`` (an incomplete last global batch is dropped) and process ``r`` takes the ``r``-th
slice of each. The global batches therefore do not depend on the number of processes, only the split of each
batch among them does.

With ``repeats`` = k > 1 (repeated augmentation, Hoffer et al. 2020 / DeiT), each global batch holds
``global batch / k`` distinct images, the whole list tiled k times, so the copies land on different processes and
get different random augmentations; an epoch then visits each image k times.
"""
import torch
from torch.utils.data import Sampler

from libs.errors import UserError


class ResumableBatchSampler(Sampler):
    """Infinite per-process batches of indices, starting at global batch ``start``."""

    def __init__(self, dataset_len: int, batch_size: int, seed: int, rank: int = 0, num_processes: int = 1,
                 start: int = 0, repeats: int = 1):
        self.dataset_len = dataset_len
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.num_processes = num_processes
        self.start = start
        self.global_batch = batch_size * num_processes
        self.repeats = repeats
        if repeats < 1 or self.global_batch % repeats:
            raise UserError(f'config.train.repeated_aug={repeats} must be a positive divisor of the global batch '
                            f'{self.global_batch}')
        self.unique_per_batch = self.global_batch // repeats
        self.batches_per_epoch = dataset_len // self.unique_per_batch
        if self.batches_per_epoch == 0:
            raise UserError(f'the dataset has {dataset_len} images, fewer than one global batch of '
                            f'{self.unique_per_batch} distinct images; lower config.train.batch_size')

    def epoch_permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.dataset_len, generator=generator)

    def __iter__(self):
        position = self.start
        while True:
            epoch, index = divmod(position, self.batches_per_epoch)
            perm = self.epoch_permutation(epoch)
            for batch in range(index, self.batches_per_epoch):
                start = batch * self.unique_per_batch
                global_batch = perm[start:start + self.unique_per_batch].repeat(self.repeats)
                offset = self.rank * self.batch_size
                yield global_batch[offset:offset + self.batch_size].tolist()
                position += 1

    def __len__(self):  # infinite; DataLoader only needs this for progress estimates
        return 2 ** 62
