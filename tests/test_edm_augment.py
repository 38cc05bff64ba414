"""EDM's non-leaking augmentation pipe (libs/data/edm_augment.py): exact integer transforms, label semantics of the
fractional and colour transforms, EDM's label layout and probabilities for DDAE's settings, RNG reproducibility."""
import math

import pytest
import torch
import torch.nn.functional as F

from libs.data.edm_augment import DDAE_P, DDAE_SETTINGS, AugmentPipe

DDAE_NAMES = ['xflip', 'yflip', 'scale', 'rotate_frac_cos', 'rotate_frac_sin', 'aniso_cos', 'aniso_sin',
              'translate_frac_x', 'translate_frac_y']


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def ramp(n=1, c=1, h=6, w=7):
    """Asymmetric images: every pixel of every image and channel distinct, in [-1, 1]."""
    x = torch.arange(n * c * h * w, dtype=torch.float32).view(n, c, h, w)
    return x / x.max() * 2 - 1


def blob(n, size=48, sx=3.0, sy=3.0):
    """n copies of a centred Gaussian on a -1 background, axes sx along x and sy along y (pixels)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(coords, coords, indexing='ij')
    g = torch.exp(-0.5 * ((xx / sx) ** 2 + (yy / sy) ** 2))
    return (g * 2 - 1).expand(n, 1, size, size).clone()


def moments(images):
    """Weighted centroid (n, 2) and covariance (n, 2, 2) of (images + 1) / 2, in centred pixel coordinates."""
    n, _, h, w = images.shape
    wgt = ((images[:, 0] + 1) / 2).double()
    ys = torch.arange(h, dtype=torch.float64) - (h - 1) / 2
    xs = torch.arange(w, dtype=torch.float64) - (w - 1) / 2
    yy, xx = torch.meshgrid(ys, xs, indexing='ij')
    mass = wgt.sum((1, 2))
    mx, my = (wgt * xx).sum((1, 2)) / mass, (wgt * yy).sum((1, 2)) / mass
    dx, dy = xx - mx[:, None, None], yy - my[:, None, None]
    cxx = (wgt * dx * dx).sum((1, 2)) / mass
    cyy = (wgt * dy * dy).sum((1, 2)) / mass
    cxy = (wgt * dx * dy).sum((1, 2)) / mass
    cov = torch.stack([torch.stack([cxx, cxy], -1), torch.stack([cxy, cyy], -1)], -2)
    return torch.stack([mx, my], -1), cov


def test_p_zero_is_identity():
    x = ramp(5, 3, 8, 8)
    pipe = AugmentPipe(p=0, xflip=1e8, yflip=1, rotate_int=1, translate_int=1, scale=1, rotate_frac=1, aniso=1,
                       translate_frac=1, brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
    y, labels = pipe(x, generator=gen())
    assert torch.equal(y, x)
    assert labels.shape == (5, 19) and labels.dtype == torch.float32
    assert (labels == 0).all()


@pytest.mark.parametrize('name, dim', [('xflip', 3), ('yflip', 2)])
def test_flips_are_exact_and_labelled(name, dim):
    x = ramp(64, 2, 5, 6)
    y, labels = AugmentPipe(p=1, **{name: 1})(x, generator=gen(1))
    assert labels.shape == (64, 1)
    flipped = labels[:, 0] == 1
    assert set(labels[:, 0].tolist()) == {0.0, 1.0}
    assert torch.equal(y[flipped], x[flipped].flip(dim))
    assert torch.equal(y[~flipped], x[~flipped])


def test_rotate_int_is_an_exact_quarter_turn():
    x = ramp(48, 1, 5, 5)
    y, labels = AugmentPipe(p=1, rotate_int=1)(x, generator=gen(2))
    seen = set()
    for i in range(48):
        ks = [k for k in range(4) if torch.equal(y[i], torch.rot90(x[i], k, dims=(1, 2)))]
        assert len(ks) == 1
        k = ks[0]
        seen.add(k)
        assert labels[i].tolist() == [float(k in (1, 2)), float(k in (2, 3))]
    assert seen == {0, 1, 2, 3}


def test_translate_int_is_a_reflected_pixel_shift():
    h, w, frac = 8, 10, 0.25
    x = ramp(64, 2, h, w)
    y, labels = AugmentPipe(p=1, translate_int=1, translate_int_max=frac)(x, generator=gen(3))
    tx = labels[:, 0] * w * frac
    ty = labels[:, 1] * h * frac
    assert torch.equal(tx, tx.round()) and torch.equal(ty, ty.round())
    assert tx.abs().max() <= round(w * frac) and ty.abs().max() <= round(h * frac)
    assert (tx != 0).any() and (ty != 0).any()
    pad = 3
    padded = F.pad(x, (pad, pad, pad, pad), mode='reflect')       # reflection about the end pixels
    for i in range(64):
        sx, sy = int(tx[i]), int(ty[i])
        # output[y, x] = input[y + ty, x - tx]
        expected = padded[i, :, pad + sy: pad + sy + h, pad - sx: pad - sx + w]
        assert torch.equal(y[i], expected)
    # one case by hand: a shift of one pixel to the right, the new first column mirrored from the second
    right = ((tx == 1) & (ty == 0)).nonzero()
    assert len(right) > 0
    i = int(right[0])
    assert torch.equal(y[i, :, :, 1:], x[i, :, :, :-1])
    assert torch.equal(y[i, :, :, 0], x[i, :, :, 1])


def test_scale_label_and_resampling():
    x = blob(32)
    pipe = AugmentPipe(p=1, scale=1)
    y, labels = pipe(x, generator=gen(4))
    s = torch.exp2(labels[:, 0].double() * pipe.scale_std)            # label = log2(scale) / scale_std
    assert s.min() < 0.9 and s.max() > 1.1
    # the same resampling written independently: normalised coordinates divided by s about the centre
    theta = torch.zeros(32, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / s
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    expected = F.grid_sample(x, grid, mode='bilinear', padding_mode='reflection', align_corners=True)
    assert torch.allclose(y, expected, atol=1e-9)
    # the blob's width grows by s (zoomed-out images would fold reflected copies in: leave those out)
    keep = s > 0.75
    _, cov0 = moments(x[:1])
    _, cov = moments(y[keep])
    ratio = (cov[:, 0, 0] / cov0[0, 0, 0]).sqrt()
    assert torch.allclose(ratio, s[keep], rtol=0.03)


def test_rotate_frac_turns_the_principal_axis():
    x = blob(32, sx=6.0, sy=2.0)
    y, labels = AugmentPipe(p=1, rotate_frac=1)(x, generator=gen(5))
    angle = torch.atan2(labels[:, 1], labels[:, 0] + 1).double()
    assert torch.allclose((labels[:, 0] + 1) ** 2 + labels[:, 1] ** 2, torch.ones(32))
    assert angle.abs().max() > 2
    _, cov = moments(y)
    axis = 0.5 * torch.atan2(2 * cov[:, 0, 1], cov[:, 0, 0] - cov[:, 1, 1])
    # output(p) = input(R(a) p): the x axis of the input ends up at angle -a (x right, y down), modulo pi
    assert (torch.cos(2 * (axis + angle)) > 0.995).all()


def test_aniso_stretches_without_changing_area():
    x = blob(48)
    pipe = AugmentPipe(p=1, aniso=1)
    y, labels = pipe(x, generator=gen(6))
    _, cov0 = moments(x[:1])
    var0 = cov0[0, 0, 0]
    _, cov = moments(y)
    strength = torch.hypot(labels[:, 0], labels[:, 1]).double()
    s = torch.exp2(strength * pipe.aniso_std)
    assert torch.allclose(torch.linalg.det(cov).sqrt() / var0, torch.ones(48, dtype=torch.float64), rtol=0.03)
    trace = cov[:, 0, 0] + cov[:, 1, 1]
    assert torch.allclose(trace / var0, s ** 2 + s ** -2, rtol=0.03)
    # axis unrotated (label's sin entry exactly 0): x is stretched by s = 2^(w aniso_std), y by 1 / s
    plain = labels[:, 1] == 0
    assert 5 < int(plain.sum()) < 43                                   # aniso_rotate_prob = 0.5
    s_plain = torch.exp2(labels[plain, 0].double() * pipe.aniso_std)
    assert torch.allclose((cov[plain, 0, 0] / var0).sqrt(), s_plain, rtol=0.03)
    assert torch.allclose((cov[plain, 1, 1] / var0).sqrt(), 1 / s_plain, rtol=0.03)


def test_translate_frac_moves_the_centroid():
    x = blob(32)
    pipe = AugmentPipe(p=1, translate_frac=1, translate_frac_std=0.05)
    y, labels = pipe(x, generator=gen(7))
    centre, _ = moments(y)
    expected = labels.double() * 48 * 0.05                             # (x right, y down) in pixels
    assert expected.abs().max() > 2
    assert torch.allclose(centre, expected, atol=0.05)


def test_colour_labels():
    x = ramp(16, 3, 4, 4)
    y, labels = AugmentPipe(p=1, brightness=1)(x, generator=gen(8))
    assert torch.allclose(y, x + labels[:, 0].view(-1, 1, 1, 1) * 0.2, atol=1e-6)
    y, labels = AugmentPipe(p=1, contrast=1)(x, generator=gen(8))
    assert torch.allclose(y, x * torch.exp2(labels[:, 0] * 0.5).view(-1, 1, 1, 1), atol=1e-6)
    y, labels = AugmentPipe(p=1, lumaflip=1)(x, generator=gen(8))
    flipped = labels[:, 0] == 1
    luma = x.mean(1, keepdim=True)
    assert 0 < int(flipped.sum()) < 16
    assert torch.allclose(y[flipped], (x - 2 * luma)[flipped], atol=1e-6)
    assert torch.equal(y[~flipped], x[~flipped])
    pipe = AugmentPipe(p=1, hue=1)
    y, labels = pipe(x, generator=gen(8))
    assert pipe.label_names == ['hue_cos', 'hue_sin']
    chroma_in, chroma_out = x - luma, y - y.mean(1, keepdim=True)
    assert torch.allclose(y.mean(1, keepdim=True), luma, atol=1e-6)          # rotation about the grey axis
    cos = (chroma_in * chroma_out).sum(1) / (chroma_in.norm(dim=1) * chroma_out.norm(dim=1))
    assert torch.allclose(cos, (labels[:, 0] + 1).view(-1, 1, 1).expand_as(cos), atol=1e-4)
    y, labels = AugmentPipe(p=1, saturation=1)(x, generator=gen(8))
    assert torch.allclose(y, luma + (x - luma) * torch.exp2(labels[:, 0]).view(-1, 1, 1, 1), atol=1e-5)
    with pytest.raises(ValueError):
        AugmentPipe(p=1, hue=1)(ramp(2, 2, 4, 4))


def test_ddae_layout():
    pipe = AugmentPipe(p=DDAE_P, **DDAE_SETTINGS)
    assert pipe.label_dim == 9 and pipe.label_names == DDAE_NAMES
    full = AugmentPipe(p=1, xflip=1, yflip=1, rotate_int=1, translate_int=1, scale=1, rotate_frac=1, aniso=1,
                       translate_frac=1, brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
    assert full.label_dim == 19
    assert full.label_names[:4] == ['xflip', 'yflip', 'rotate_int_x', 'rotate_int_y']
    assert full.label_names[13:] == ['brightness', 'contrast', 'lumaflip', 'hue_cos', 'hue_sin', 'saturation']
    # every transform at probability 1: each column has its transform's distribution
    labels = AugmentPipe(p=1, **DDAE_SETTINGS)(torch.zeros(400, 1, 4, 4), generator=gen(9))[1]
    for col in (0, 1):
        assert set(labels[:, col].tolist()) == {0.0, 1.0}
    assert (labels[:, 2] != 0).all() and labels[:, 2].std() > 0.8                    # N(0, 1)
    assert torch.allclose((labels[:, 3] + 1) ** 2 + labels[:, 4] ** 2, torch.ones(400), atol=1e-6)
    assert labels[:, 3].min() < -1.9 and labels[:, 4].min() < -0.99 and labels[:, 4].max() > 0.99
    assert (labels[:, 5] != 0).all() and 0.4 < (labels[:, 6] == 0).float().mean() < 0.6
    assert (labels[:, 7:] != 0).all() and labels[:, 7:].std() > 0.8


def test_ddae_labels_say_what_was_done():
    """At DDAE's settings, an image with only a flip label is exactly flipped and one with zero labels untouched."""
    x = torch.rand(400, 3, 6, 6, generator=gen(10)) * 2 - 1
    y, labels = AugmentPipe(p=DDAE_P, **DDAE_SETTINGS)(x, generator=gen(11))
    nonzero = labels != 0
    geometric = nonzero[:, 2:].any(1)
    none = ~nonzero.any(1)
    only_x = nonzero[:, 0] & ~nonzero[:, 1] & ~geometric
    only_y = nonzero[:, 1] & ~nonzero[:, 0] & ~geometric
    assert none.sum() > 20 and only_x.sum() > 20 and only_y.sum() > 0
    assert torch.equal(y[none], x[none])
    assert torch.equal(y[only_x], x[only_x].flip(3))
    assert torch.equal(y[only_y], x[only_y].flip(2))
    assert not torch.isclose(y[geometric], x[geometric].flip(3)).all((1, 2, 3)).any()
    assert not torch.isclose(y[geometric], x[geometric]).all((1, 2, 3)).any()


def test_ddae_frequencies():
    n = 4000
    x = torch.rand(n, 1, 4, 4, generator=gen(12)) * 2 - 1
    pipe = AugmentPipe(p=DDAE_P, **DDAE_SETTINGS)
    y, labels = pipe(x, generator=gen(13))
    fired = (labels != 0).double().mean(0)
    p = DDAE_P
    # xflip: gate min(1, 0.12 * 1e8) = 1, then a fair coin; yflip: 0.12 then the coin; aniso's sin entry also
    # needs the axis rotation (aniso_rotate_prob 0.5); the rest fire with 0.12
    expected = torch.tensor([0.5, p / 2, p, p, p, p, p / 2, p, p], dtype=torch.float64)
    se = (expected * (1 - expected) / n).sqrt()
    assert ((fired - expected).abs() < 4 * se).all(), (fired, expected)
    # the rotation, and the two translation entries, fire together
    assert torch.equal(labels[:, 3] != 0, labels[:, 4] != 0)
    assert torch.equal(labels[:, 7] != 0, labels[:, 8] != 0)
    geometric = (labels[:, 2:] != 0).any(1).double().mean()
    expected_geo = 1 - (1 - p) ** 4
    assert abs(geometric - expected_geo) < 4 * math.sqrt(expected_geo * (1 - expected_geo) / n)
    assert torch.equal((y != x).flatten(1).any(1), (labels != 0).any(1))      # changed iff labelled


def test_reproducible_and_well_formed():
    x = torch.rand(6, 3, 8, 8, generator=gen(14)) * 2 - 1
    pipe = AugmentPipe(p=1, **DDAE_SETTINGS)
    a, la = pipe(x, generator=gen(15))
    b, lb = pipe(x, generator=gen(15))
    c, lc = pipe(x, generator=gen(16))
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(la, lc)
    # the global RNG: the same state gives the same draws, and a generator leaves it alone
    torch.manual_seed(17)
    d, ld = pipe(x)
    state = torch.get_rng_state()
    pipe(x, generator=gen(15))
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(17)
    e, le = pipe(x)
    assert torch.equal(d, e) and torch.equal(ld, le)
    for out in (a, c, d):
        assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
        assert torch.isfinite(out).all() and out.abs().max() <= 1 + 1e-6        # bilinear: convex combinations
    assert la.shape == (6, 9) and la.dtype == torch.float32
    y, labels = pipe(x.double(), generator=gen(15))
    assert y.dtype == torch.float64 and labels.dtype == torch.float32 and torch.equal(labels, la)
    assert torch.allclose(y, a.double(), atol=1e-5)
