"""Batch augmentations: exact translations with a black border, every shift reachable, standard layout;
RandAugment's ops against PIL, and its draws from the global RNG."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from libs.data.augment import AUGMENTS, RANDAUGMENT_OPS, rand_augment, random_flip, random_shift
from libs.images import from_uint8, to_uint8


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


# ------------------------------------------------------------------------------------------------ RandAugment
def random_uint8(seed, shape=(3, 16, 16), low=30, high=220):
    """Uint8 images that use neither end of the range, so autocontrast and solarize have work to do."""
    return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def op_on_values(name, img, amount):
    """Apply one RandAugment op to a (C, H, W) uint8 image at the given magnitude; returns uint8 (C, H, W)."""
    op = RANDAUGMENT_OPS[name][0]
    out = op(img[None].float(), torch.tensor([float(amount)]))
    return out.clamp(0, 255).round().to(torch.uint8)[0]


def pil(img):
    return Image.fromarray(img.permute(1, 2, 0).numpy())


def from_pil(image):
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


@pytest.mark.parametrize('name,amount,reference', [
    ('solarize', 127, lambda im: ImageOps.solarize(im, 128)),     # threshold 255 - magnitude
    ('posterize', 3, lambda im: ImageOps.posterize(im, 5)),       # 8 - magnitude bits
    ('equalize', 0, ImageOps.equalize),
    ('autocontrast', 0, ImageOps.autocontrast),
])
def test_pixel_ops_equal_pil_exactly(name, amount, reference):
    for seed in range(3):
        img = random_uint8(seed)
        assert torch.equal(op_on_values(name, img, amount), from_pil(reference(pil(img)))), (name, seed)


@pytest.mark.parametrize('name,enhancer', [('brightness', ImageEnhance.Brightness), ('color', ImageEnhance.Color),
                                           ('contrast', ImageEnhance.Contrast),
                                           ('sharpness', ImageEnhance.Sharpness)])
@pytest.mark.parametrize('amount', [-0.6, 0.45])
def test_enhance_ops_equal_pil_within_one_level(name, enhancer, amount):
    img = random_uint8(5)
    ours = op_on_values(name, img, amount).int()
    theirs = from_pil(enhancer(pil(img)).enhance(1 + amount)).int()
    assert (ours - theirs).abs().max() <= 1, name          # PIL rounds its intermediate images differently
    assert not torch.equal(ours, img.int())


def test_geometric_ops_move_whole_pixels_with_a_black_fill():
    img = random_uint8(1, (1, 6, 6)).float()[None]
    quarter = [op_on_values('rotate', img[0].to(torch.uint8), sign * 90)[None].float() for sign in (1, -1)]
    turned = [torch.rot90(img, k, dims=(2, 3)) for k in (1, -1)]
    assert (torch.equal(quarter[0], turned[0]) and torch.equal(quarter[1], turned[1])) or \
        (torch.equal(quarter[0], turned[1]) and torch.equal(quarter[1], turned[0]))
    one_pixel = op_on_values('translate_x', img[0].to(torch.uint8), 1 / 6).float()
    left, right = one_pixel[..., :-1], one_pixel[..., 1:]
    moved_left = torch.equal(left, img[0, ..., 1:]) and (one_pixel[..., -1] == 0).all()
    moved_right = torch.equal(right, img[0, ..., :-1]) and (one_pixel[..., 0] == 0).all()
    assert moved_left or moved_right
    down = op_on_values('translate_y', img[0].to(torch.uint8), -1 / 6).float()
    assert torch.equal(down[:, 1:], img[0, :, :-1]) or torch.equal(down[:, :-1], img[0, :, 1:])
    assert torch.equal(op_on_values('shear_x', img[0].to(torch.uint8), 0.0).float(), img[0])


@pytest.mark.parametrize('name', ['randaugment', 'crop_flip_randaugment'])
def test_randaugment_repeats_under_the_same_seed_and_changes_images(name):
    augment = AUGMENTS[name]
    x = from_uint8(torch.stack([random_uint8(seed, (3, 32, 32)) for seed in range(64)]))
    torch.manual_seed(3)
    first = augment(x)
    torch.manual_seed(3)
    again = augment(x)
    torch.manual_seed(4)
    other = augment(x)
    assert torch.equal(first, again)                      # drawn from the global RNG only
    assert not torch.equal(first, other)
    assert first.shape == x.shape and first.dtype == x.dtype
    assert torch.equal(from_uint8(to_uint8(first)), first)   # still 8-bit images in [-1, 1]
    changed = (first != x).flatten(1).any(1).float().mean().item()
    assert changed > 0.8, changed                          # two ops of 14, one of them the identity


def test_randaugment_magnitude_zero_keeps_geometry_and_rejects_out_of_range():
    x = from_uint8(torch.stack([random_uint8(seed, (3, 8, 8), 0, 256) for seed in range(16)]))
    torch.manual_seed(0)
    still = rand_augment(x, num_ops=2, magnitude=0)
    # at magnitude 0 only the ops without a magnitude (autocontrast, equalize, solarize at 255, posterize 8 bits)
    # can change pixels, and none of them moves or mixes pixels: per-pixel values map through one table per channel
    for img, out in zip(to_uint8(x), to_uint8(still)):
        for c in range(3):
            pairs = {}
            for a, b in zip(img[c].flatten().tolist(), out[c].flatten().tolist()):
                assert pairs.setdefault(a, b) == b
    with pytest.raises(ValueError, match='magnitude must be in 0..30'):
        rand_augment(x, magnitude=31)
