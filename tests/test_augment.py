"""Batch augmentations: exact translations with a black border, every shift reachable, standard layout."""
import torch

from libs.augment import random_flip, random_shift


def test_random_shift_translates_with_a_black_border_and_reaches_every_shift():
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4).repeat(200, 1, 1, 1)
    out = random_shift(x, 1, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x[0, 0], (1, 1, 1, 1), value=-1.0)
    crops = {(dy, dx): padded[dy:dy + 4, dx:dx + 4] for dy in range(3) for dx in range(3)}
    seen = set()
    for img in out[:, 0]:
        match = [k for k, crop in crops.items() if torch.equal(img, crop)]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == set(crops)                                    # all 9 shifts, including none
    assert out.stride() == torch.empty(200, 1, 4, 4).stride()    # not a channels-last view
    again = random_shift(x, 1, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert random_shift(x, 0) is x


def test_random_flip_mirrors_about_half_of_the_batch():
    torch.manual_seed(0)
    x = torch.arange(8, dtype=torch.float32).view(1, 1, 1, 8).repeat(400, 1, 1, 1)
    out = random_flip(x)
    flipped = (out[:, 0, 0, 0] == 7).sum().item()
    assert torch.equal(out[out[:, 0, 0, 0] == 7], x.flip(3)[: flipped])
    assert 150 < flipped < 250
