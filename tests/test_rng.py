"""libs/rng.py: sample i of an evaluation is a function of (seed, i), and the seed changes it."""
import torch

from libs.rng import SampleRandom, sample_seed


def test_samples_depend_on_the_seed_and_the_index_but_not_on_the_batch():
    one = SampleRandom(1234, [0, 1, 2]).randn((4,))
    other_seed = SampleRandom(7, [0, 1, 2]).randn((4,))
    assert not torch.isclose(one, other_seed).any()       # torch's CPU generator keeps only 32 bits of a seed:
    assert len({sample_seed(s, 0) % 2 ** 32 for s in range(1000)}) == 1000   # those bits differ between seeds
    assert not torch.isclose(one[0], one[1]).any()
    alone = SampleRandom(1234, [2]).randn((4,))
    assert torch.equal(alone[0], one[2])                   # the same sample in another batch
    labels = SampleRandom(1234, [5, 6]).randint(10)
    assert labels.shape == (2,) and torch.equal(labels, SampleRandom(1234, [5, 6]).randint(10))
