"""EDM's non-leaking augmentation (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models", arXiv 2206.00364, Appendix): each training image is transformed at random and the network is told how, by
a vector of augmentation labels fed to it as a condition. At sampling time the labels are zeros, so the model
draws un-augmented images; the augmentations do not "leak" into the samples.

``AugmentPipe`` follows EDM's pipe: the same constructor arguments and defaults, the same per-transform
probabilities, the same random draws in the same order, and the same label vector (layout below). DDAE (Xiang et
al. 2023) trains its ``EDM_ddpmpp_aug`` model with ``AugmentPipe(p=0.12, **DDAE_SETTINGS)``, whose labels have 9
entries.

Probabilities. Each transform is applied to an image with probability ``min(1, p * strength)``, ``strength``
being its constructor argument (``xflip``, ``scale``, ...). The flips and integer rotations then toss a fair coin
(a fair die of four for ``rotate_int``) on top of that, so with DDAE's ``xflip=1e8`` and ``p=0.12`` the gate is
always open and an image is mirrored with probability 1/2; its ``yflip=1`` mirrors vertically with probability
0.12 / 2 = 0.06; scale, rotate_frac, aniso and translate_frac each fire with probability 0.12.

Label layout: the entries of the enabled transforms (strength > 0), in this order; ``label_names`` lists them.

====================  =====  =============================================================================
transform             cols   entries (zero where the transform did not fire)
====================  =====  =============================================================================
xflip                 1      1 if mirrored left-right
yflip                 1      1 if mirrored top-bottom
rotate_int            2      k in {1, 2} and k in {2, 3}, for a rotation by k quarter turns (torch.rot90's k)
translate_int         2      tx / (W translate_int_max), ty / (H translate_int_max): the whole-pixel shift;
                             output[y, x] = input[y + ty, x - tx] (so x moves right, y moves up)
scale                 1      w = log2(s) / scale_std, content enlarged by s about the image centre
rotate_frac           2      cos(a) - 1, sin(a): output(p) = input(R(a) p) in pixel coordinates (x right,
                             y down), a uniform in +-pi rotate_frac_max
aniso                 2      w cos(r), w sin(r): scaled by s = 2^(w aniso_std) along the axis at angle r and
                             by 1/s across it (r = 0 with probability 1 - aniso_rotate_prob). As in EDM,
                             (w, r) and (-w, r + pi) share a label though they are inverse stretches.
translate_frac        2      wx, wy: content moved by (wx W, wy H) translate_frac_std pixels (x right, y down)
brightness            1      w: every value + w brightness_std
contrast              1      w: every value * 2^(w contrast_std)
lumaflip              1      1 if the colour is reflected through the grey plane (luma negated)
hue                   2      cos(a) - 1, sin(a): colour rotated by a about the grey axis
saturation            1      w: colour's distance from grey * 2^(w saturation_std)
====================  =====  =============================================================================

Where this differs from EDM's code:

- Fractional geometry (scale, rotate_frac, aniso, translate_frac) is one composed 3x3 matrix per image, as in EDM,
  but the image is resampled with ``grid_sample`` (bilinear by default, or ``interpolation='bicubic'``) with
  reflection about the border pixels' centres (as EDM's ``reflect`` padding), not with EDM's 2x upsampling by a
  sym6 wavelet filter. So the filter is not EDM's; what the labels say was done is.
- Images that no transform touched pass through unchanged (EDM's filter blurs them slightly, and EDM applies
  the identity colour matrix with rounding); the integer transforms (flips, rotate_int, translate_int) are exact
  pixel permutations in both.
- Random numbers come from ``generator`` if given (drawn on its device, then moved to the images'), else from the
  global RNG of the images' device; they are drawn in EDM's order and numbers, so a training run restored with
  its RNG state repeats exactly.
"""
import math

import torch
import torch.nn.functional as F

# DDAE's EDM_ddpmpp_aug (model/EDM.py there): AugmentPipe(p=augment_prob, **DDAE_SETTINGS) with augment_prob 0.12.
DDAE_SETTINGS = dict(xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
DDAE_P = 0.12

# (constructor argument, names of its label entries), in the order of the label vector
_LABELS = (
    ('xflip', ('xflip',)),
    ('yflip', ('yflip',)),
    ('rotate_int', ('rotate_int_x', 'rotate_int_y')),
    ('translate_int', ('translate_int_x', 'translate_int_y')),
    ('scale', ('scale',)),
    ('rotate_frac', ('rotate_frac_cos', 'rotate_frac_sin')),
    ('aniso', ('aniso_cos', 'aniso_sin')),
    ('translate_frac', ('translate_frac_x', 'translate_frac_y')),
    ('brightness', ('brightness',)),
    ('contrast', ('contrast',)),
    ('lumaflip', ('lumaflip',)),
    ('hue', ('hue_cos', 'hue_sin')),
    ('saturation', ('saturation',)),
)
_GEOMETRIC = ('scale', 'rotate_frac', 'aniso', 'translate_frac')
_COLOUR = ('brightness', 'contrast', 'lumaflip', 'hue', 'saturation')
_INTERPOLATIONS = ('bilinear', 'bicubic', 'nearest')


class _Draws:
    """Random numbers for one call, from ``generator`` (on its own device) or the global RNG of ``device``."""

    def __init__(self, generator, device):
        self.generator = generator
        self.source = generator.device if generator is not None else device
        self.device = device

    def rand(self, *shape):
        return torch.rand(shape, generator=self.generator, device=self.source).to(self.device)

    def randn(self, *shape):
        return torch.randn(shape, generator=self.generator, device=self.source).to(self.device)

    def randint(self, high, *shape):
        return torch.randint(high, shape, generator=self.generator, device=self.source).to(self.device)

    def gate(self, probability, *shape):
        """True with probability min(1, probability), one uniform draw per element."""
        return self.rand(*shape) < min(1.0, probability)


def _affine(a, b, c, d, e, f):
    """Per-image 3x3 homogeneous matrices [[a, b, c], [d, e, f], [0, 0, 1]] from (N,) tensors."""
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([a, b, c, d, e, f, zero, zero, one], dim=-1).view(-1, 3, 3)


def _scale2(sx, sy):
    zero = torch.zeros_like(sx)
    return _affine(sx, zero, zero, zero, sy, zero)


def _rotate2(angle):
    """[[cos, -sin], [sin, cos]] in (x right, y down) pixel coordinates."""
    c, s = angle.cos(), angle.sin()
    zero = torch.zeros_like(angle)
    return _affine(c, -s, zero, s, c, zero)


def _shift2(tx, ty):
    zero, one = torch.zeros_like(tx), torch.ones_like(tx)
    return _affine(one, zero, tx, zero, one, ty)


def _reflect_index(index, size):
    """Indices outside [0, size) folded back by reflection about the end pixels (…, 2, 1, 0, 1, 2, …)."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * size - 2
    index = index % period                      # floor modulo: non-negative
    return torch.where(index < size, index, period - index)


class AugmentPipe:
    """EDM's augmentation pipe: ``pipe(images, generator=None) -> (augmented images, labels)``.

    ``images`` (B, C, H, W) float in [-1, 1] on any device; the result has the same shape, dtype and device, and
    ``labels`` is (B, ``label_dim``) float32 on that device, laid out as the module docstring says. Every transform
    is off at strength 0 (the default); ``p`` multiplies all the probabilities. Arguments and defaults are EDM's:

    - pixel blitting: ``xflip``, ``yflip``, ``rotate_int`` (needs square images), ``translate_int`` with
      ``translate_int_max`` (the largest shift, a fraction of the side);
    - geometric: ``scale``, ``rotate_frac``, ``aniso``, ``translate_frac`` with ``scale_std`` (log2),
      ``rotate_frac_max`` (1 = half a turn either way), ``aniso_std`` (log2), ``aniso_rotate_prob`` and
      ``translate_frac_std`` (a fraction of the side);
    - colour (C = 3, or C = 1 where the colour matrix is averaged over the channels): ``brightness``,
      ``contrast``, ``lumaflip``, ``hue``, ``saturation`` with ``brightness_std``, ``contrast_std`` (log2),
      ``hue_max`` (1 = half a turn either way), ``saturation_std`` (log2).

    ``interpolation`` (not EDM's: it resamples through a wavelet filter) is grid_sample's mode for the fractional
    geometric transforms.
    """

    def __init__(self, p=1,
                 xflip=0, yflip=0, rotate_int=0, translate_int=0, translate_int_max=0.125,
                 scale=0, rotate_frac=0, aniso=0, translate_frac=0, scale_std=0.2, rotate_frac_max=1, aniso_std=0.2,
                 aniso_rotate_prob=0.5, translate_frac_std=0.125,
                 brightness=0, contrast=0, lumaflip=0, hue=0, saturation=0, brightness_std=0.2, contrast_std=0.5,
                 hue_max=1, saturation_std=1,
                 interpolation='bilinear'):
        self.p = float(p)
        self.xflip = float(xflip)
        self.yflip = float(yflip)
        self.rotate_int = float(rotate_int)
        self.translate_int = float(translate_int)
        self.translate_int_max = float(translate_int_max)
        self.scale = float(scale)
        self.rotate_frac = float(rotate_frac)
        self.aniso = float(aniso)
        self.translate_frac = float(translate_frac)
        self.scale_std = float(scale_std)
        self.rotate_frac_max = float(rotate_frac_max)
        self.aniso_std = float(aniso_std)
        self.aniso_rotate_prob = float(aniso_rotate_prob)
        self.translate_frac_std = float(translate_frac_std)
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.lumaflip = float(lumaflip)
        self.hue = float(hue)
        self.saturation = float(saturation)
        self.brightness_std = float(brightness_std)
        self.contrast_std = float(contrast_std)
        self.hue_max = float(hue_max)
        self.saturation_std = float(saturation_std)
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f'interpolation must be one of {_INTERPOLATIONS}, not {interpolation!r}')
        self.interpolation = interpolation
        if self.p < 0 or any(getattr(self, name) < 0 for name, _ in _LABELS):
            raise ValueError('AugmentPipe: p and the transform strengths must be >= 0')

    @property
    def label_names(self):
        """The meaning of each label column, in order (see the module docstring)."""
        return [entry for name, entries in _LABELS if getattr(self, name) > 0 for entry in entries]

    @property
    def label_dim(self):
        return len(self.label_names)

    def __repr__(self):
        enabled = ', '.join(f'{name}={getattr(self, name):g}' for name, _ in _LABELS if getattr(self, name) > 0)
        return f'AugmentPipe(p={self.p:g}{", " if enabled else ""}{enabled})'

    def __call__(self, images: torch.Tensor, generator: torch.Generator = None):
        if images.ndim != 4:
            raise ValueError(f'AugmentPipe takes (B, C, H, W) images, not shape {tuple(images.shape)}')
        n, c, h, w = images.shape
        device = images.device
        draw = _Draws(generator, device)
        labels = []
        x = images

        # ---- pixel blitting: exact permutations of the pixels
        if self.xflip > 0:
            flip = draw.randint(2, n)
            flip = torch.where(draw.gate(self.xflip * self.p, n), flip, torch.zeros_like(flip))
            x = torch.where(flip.view(n, 1, 1, 1) == 1, x.flip(3), x)
            labels.append(flip)

        if self.yflip > 0:
            flip = draw.randint(2, n)
            flip = torch.where(draw.gate(self.yflip * self.p, n), flip, torch.zeros_like(flip))
            x = torch.where(flip.view(n, 1, 1, 1) == 1, x.flip(2), x)
            labels.append(flip)

        if self.rotate_int > 0:
            if h != w:
                raise ValueError(f'rotate_int needs square images, not {h}x{w}')
            k = draw.randint(4, n)
            k = torch.where(draw.gate(self.rotate_int * self.p, n), k, torch.zeros_like(k))
            mirror_x, mirror_y, transpose = (k == 1) | (k == 2), (k == 2) | (k == 3), (k == 1) | (k == 3)
            x = torch.where(mirror_x.view(n, 1, 1, 1), x.flip(3), x)
            x = torch.where(mirror_y.view(n, 1, 1, 1), x.flip(2), x)
            x = torch.where(transpose.view(n, 1, 1, 1), x.transpose(2, 3), x)
            labels += [mirror_x, mirror_y]

        if self.translate_int > 0:
            shift = draw.rand(2, n) * 2 - 1
            shift = torch.where(draw.gate(self.translate_int * self.p, 1, n), shift, torch.zeros_like(shift))
            tx = (shift[0] * (w * self.translate_int_max)).round().long()
            ty = (shift[1] * (h * self.translate_int_max)).round().long()
            rows = _reflect_index(torch.arange(h, device=device)[None, :] + ty[:, None], h)      # (N, H)
            cols = _reflect_index(torch.arange(w, device=device)[None, :] - tx[:, None], w)      # (N, W)
            x = x.gather(2, rows[:, None, :, None].expand(n, c, h, w))
            x = x.gather(3, cols[:, None, None, :].expand(n, c, h, w))
            unit_x, unit_y = w * self.translate_int_max, h * self.translate_int_max
            labels += [tx / unit_x if unit_x > 0 else tx.float() * 0, ty / unit_y if unit_y > 0 else ty.float() * 0]

        # ---- fractional geometry: one inverse matrix per image (output pixel -> input pixel, centred coordinates)
        if any(getattr(self, name) > 0 for name in _GEOMETRIC):
            x, labels = self._geometric(x, labels, draw)

        # ---- colour
        if any(getattr(self, name) > 0 for name in _COLOUR):
            x, labels = self._colour(x, labels, draw)

        if labels:
            labels = torch.cat([label.to(torch.float32).reshape(n, -1) for label in labels], dim=1)
        else:
            labels = torch.zeros(n, 0, device=device)
        return x, labels

    def _geometric(self, x, labels, draw):
        n, _, h, w = x.shape
        work = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        g_inv = torch.eye(3, device=x.device, dtype=work).expand(n, 3, 3)
        moved = torch.zeros(n, dtype=torch.bool, device=x.device)

        if self.scale > 0:
            v = draw.randn(n)
            on = draw.gate(self.scale * self.p, n)
            v = torch.where(on, v, torch.zeros_like(v))
            s = torch.exp2(v.to(work) * self.scale_std)
            g_inv = g_inv @ _scale2(1 / s, 1 / s)
            labels.append(v)
            moved |= on

        if self.rotate_frac > 0:
            angle = (draw.rand(n) * 2 - 1) * (math.pi * self.rotate_frac_max)
            on = draw.gate(self.rotate_frac * self.p, n)
            angle = torch.where(on, angle, torch.zeros_like(angle))
            g_inv = g_inv @ _rotate2(angle.to(work))
            labels += [angle.cos() - 1, angle.sin()]
            moved |= on

        if self.aniso > 0:
            v = draw.randn(n)
            axis = (draw.rand(n) * 2 - 1) * math.pi
            on = draw.gate(self.aniso * self.p, n)
            v = torch.where(on, v, torch.zeros_like(v))
            axis = torch.where(draw.rand(n) < self.aniso_rotate_prob, axis, torch.zeros_like(axis))
            s = torch.exp2(v.to(work) * self.aniso_std)
            r = axis.to(work)
            g_inv = g_inv @ _rotate2(-r) @ _scale2(1 / s, s) @ _rotate2(r)
            labels += [v * axis.cos(), v * axis.sin()]
            moved |= on

        if self.translate_frac > 0:
            v = draw.randn(2, n)
            on = draw.gate(self.translate_frac * self.p, 1, n)
            v = torch.where(on, v, torch.zeros_like(v))
            vw = v.to(work)
            g_inv = g_inv @ _shift2(-vw[0] * (w * self.translate_frac_std), -vw[1] * (h * self.translate_frac_std))
            labels += [v[0], v[1]]
            moved |= on[0]

        index = moved.nonzero().squeeze(1)
        if index.numel() > 0:
            resampled = self._resample(x[index].to(work), g_inv[index]).to(x.dtype)
            x = x.index_copy(0, index, resampled)
        return x, labels

    def _resample(self, x, g_inv):
        """output[p] = x[g_inv p], p in pixel coordinates centred on the image (x right, y down)."""
        _, _, h, w = x.shape
        xs = torch.arange(w, device=x.device, dtype=x.dtype) - (w - 1) / 2
        ys = torch.arange(h, device=x.device, dtype=x.dtype) - (h - 1) / 2
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing='ij')
        points = torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], dim=-1)            # (H, W, 3)
        source = torch.einsum('nij,hwj->nhwi', g_inv, points)[..., :2]                      # (n, H, W, 2)
        # align_corners=True: -1 and 1 are the centres of the end pixels, and reflection is about them
        to_unit = torch.tensor([2 / max(w - 1, 1), 2 / max(h - 1, 1)], device=x.device, dtype=x.dtype)
        return F.grid_sample(x, source * to_unit, mode=self.interpolation, padding_mode='reflection',
                             align_corners=True)

    def _colour(self, x, labels, draw):
        n, c, h, w = x.shape
        if c not in (1, 3):
            raise ValueError(f'the colour transforms need RGB (3 channels) or L (1 channel) images, not {c} channels')
        work = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        eye = torch.eye(4, device=x.device, dtype=work)
        matrix = eye.expand(n, 4, 4)
        grey = torch.tensor([1, 1, 1, 0], device=x.device, dtype=work) / math.sqrt(3)
        grey_outer = torch.outer(grey, grey)
        tinted = torch.zeros(n, dtype=torch.bool, device=x.device)

        if self.brightness > 0:
            v = draw.randn(n)
            on = draw.gate(self.brightness * self.p, n)
            v = torch.where(on, v, torch.zeros_like(v))
            step = eye.repeat(n, 1, 1)
            step[:, :3, 3] = (v.to(work) * self.brightness_std)[:, None]
            matrix = step @ matrix
            labels.append(v)
            tinted |= on

        if self.contrast > 0:
            v = draw.randn(n)
            on = draw.gate(self.contrast * self.p, n)
            v = torch.where(on, v, torch.zeros_like(v))
            factor = torch.exp2(v.to(work) * self.contrast_std)
            diagonal = torch.stack([factor, factor, factor, torch.ones_like(factor)], dim=1)
            matrix = torch.diag_embed(diagonal) @ matrix
            labels.append(v)
            tinted |= on

        if self.lumaflip > 0:
            flip = draw.randint(2, n)
            on = draw.gate(self.lumaflip * self.p, n)
            flip = torch.where(on, flip, torch.zeros_like(flip))
            matrix = (eye - 2 * grey_outer * flip.to(work).view(n, 1, 1)) @ matrix
            labels.append(flip)
            tinted |= on

        if self.hue > 0:
            angle = (draw.rand(n) * 2 - 1) * (math.pi * self.hue_max)
            on = draw.gate(self.hue * self.p, n)
            angle = torch.where(on, angle, torch.zeros_like(angle))
            matrix = self._grey_axis_rotation(angle.to(work), grey) @ matrix
            labels += [angle.cos() - 1, angle.sin()]
            tinted |= on

        if self.saturation > 0:
            v = draw.randn(n)
            on = draw.gate(self.saturation * self.p, n)
            v = torch.where(on, v, torch.zeros_like(v))
            factor = torch.exp2(v.to(work) * self.saturation_std).view(n, 1, 1)
            matrix = (grey_outer + (eye - grey_outer) * factor) @ matrix
            labels.append(v)
            tinted |= on

        index = tinted.nonzero().squeeze(1)
        if index.numel() > 0:
            m = matrix[index]
            values = x[index].to(work).reshape(index.numel(), c, h * w)
            if c == 3:
                values = m[:, :3, :3] @ values + m[:, :3, 3:]
            else:   # one channel: the colour matrix averaged over R, G, B applied to a grey pixel
                mean = m[:, :3, :].mean(dim=1)                                            # (k, 4)
                values = values * mean[:, :3].sum(dim=1).view(-1, 1, 1) + mean[:, 3].view(-1, 1, 1)
            x = x.index_copy(0, index, values.reshape(index.numel(), c, h, w).to(x.dtype))
        return x, labels

    @staticmethod
    def _grey_axis_rotation(angle, axis):
        """4x4 matrices rotating RGB by ``angle`` about the unit ``axis`` (its first three entries; Rodrigues)."""
        ux, uy, uz = axis[0], axis[1], axis[2]
        u = axis[:3]
        cross = torch.stack([torch.stack([0 * ux, -uz, uy]), torch.stack([uz, 0 * ux, -ux]),
                             torch.stack([-uy, ux, 0 * ux])])                                # (3, 3)
        cos, sin = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
        eye3 = torch.eye(3, device=angle.device, dtype=angle.dtype)
        rotation = cos * eye3 + sin * cross + (1 - cos) * torch.outer(u, u)
        out = torch.eye(4, device=angle.device, dtype=angle.dtype).repeat(angle.shape[0], 1, 1)
        out[:, :3, :3] = rotation
        return out
