"""EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models") inside the Gaussian
framework: the same forward process, with EDM's preconditioning, training noise levels and loss weight.

In EDM's variance-exploding coordinates y = x_0 + s n (s: the noise level sigma_ve, n ~ N(0, I)), the denoiser is

    D(y; s) = c_skip(s) y + c_out(s) F(c_in(s) y, c_noise(s))

with F the backbone. The three columns of their Table 1 (``PRECONDITIONINGS``):

    kind  c_skip               c_out                     c_in                 c_noise          training s
    vp    1                    -s                        1 / sqrt(s^2 + 1)    (M - 1) t_vp(s)  t ~ U(eps_t, 1)
    ve    1                    s                         1                    ln(s / 2)        ln s ~ U(ln .02, ln 100)
    edm   sd^2 / (s^2 + sd^2)  s sd / sqrt(s^2 + sd^2)   1 / sqrt(s^2 + sd^2) ln(s) / 4        ln s ~ N(P_mean, P_std^2)

(sd = sigma_data; vp: the VP SDE with beta_d = 19.9, beta_min = 0.1, M = 1000, eps_t = 1e-5), and the loss
lambda(s) |D(y; s) - x_0|^2 with lambda = 1 / s^2 (vp, ve) or (s^2 + sd^2) / (s sd)^2 (edm): in every column
lambda c_out^2 = 1, an unweighted regression of F on its target.

The suite's samplers integrate the variance-preserving x = y / sqrt(1 + s^2) over t of ``KarrasSchedule``
(s = sigma_max t^rho), so ``EDMDenoiser`` gives eps and x0 predictions like the Gaussian ``Denoiser``, and
DPM-Solver, UniPC and EDM's Heun (libs/diffusion/samplers/heun.py) all sample an EDM model.
"""
import math

import torch

from libs.diffusion.gaussian import Denoiser, GaussianFramework, squared_error
from libs.diffusion.samplers.grids import karras_grid
from libs.diffusion.schedules import VPSDE, KarrasSchedule
from libs.errors import UserError
from libs.rng import generator_noise

PRECONDITIONINGS = ('vp', 've', 'edm')

# The training noise levels of the VE column (EDM's Table 1) and the VP column's VP SDE and M.
VE_TRAIN_SIGMA = (0.02, 100.0)
VP_TRAIN_T_MIN = 1e-5
VP_STEPS = 1000
LEVEL_STEPS = 18   # DDAE's noise-level index: the 18-level grid of EDM's sampler


def _column(sigma, like):
    """sigma as a float32 (or x's float64) column shaped (B, 1, ..., 1) against ``like``."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return sigma.to(dtype).view((-1,) + (1,) * (like.ndim - 1))


class EDMPrecond:
    """c_skip, c_out, c_in, c_noise of one column of EDM's Table 1; functions of a (B,) tensor of noise levels s."""

    def __init__(self, kind: str = 'edm', sigma_data: float = 0.5):
        if kind not in PRECONDITIONINGS:
            raise UserError(f'unknown EDM preconditioning {kind!r}; known: {", ".join(PRECONDITIONINGS)}')
        if sigma_data <= 0:
            raise UserError(f'EDM needs sigma_data > 0, got {sigma_data}')
        self.kind = kind
        self.sigma_data = float(sigma_data) if kind == 'edm' else 1.0  # vp / ve: c_in = 1 / sqrt(s^2 + 1), 1
        self._vp = VPSDE(beta_min=0.1, beta_max=20.0)

    def __repr__(self):
        return f'EDMPrecond({self.kind!r}, sigma_data={self.sigma_data})'

    def c_skip(self, s):
        return torch.ones_like(s) if self.kind != 'edm' else self.sigma_data ** 2 / (s ** 2 + self.sigma_data ** 2)

    def c_out(self, s):
        if self.kind == 'edm':
            return s * self.sigma_data / torch.sqrt(s ** 2 + self.sigma_data ** 2)
        return -s if self.kind == 'vp' else s

    def c_in(self, s):
        return torch.ones_like(s) if self.kind == 've' else 1.0 / torch.sqrt(s ** 2 + self.sigma_data ** 2)

    def c_noise(self, s):
        if self.kind == 'edm':
            return torch.log(s) / 4.0
        if self.kind == 've':
            return torch.log(0.5 * s)
        return (VP_STEPS - 1) * self._vp.t_from_ve_sigma(s)

    def denoised(self, y, s, output):
        """D = c_skip y + c_out F in the dtype of ``output``, s a (B,) tensor."""
        return _column(self.c_skip(s), output).to(output.dtype) * y + \
            _column(self.c_out(s), output).to(output.dtype) * output

    def loss_weight(self, s):
        """lambda(s) of the column."""
        if self.kind == 'edm':
            return (s ** 2 + self.sigma_data ** 2) / (s * self.sigma_data) ** 2
        return 1.0 / s ** 2

    def sample_train_sigma(self, n, device, p_mean: float, p_std: float, generator=None):
        """(n,) float32 training noise levels of the column, from ``generator`` or the global RNG of ``device``."""
        if self.kind == 'edm':
            return torch.exp(torch.randn(n, device=device, generator=generator) * p_std + p_mean)
        u = torch.rand(n, device=device, generator=generator)
        if self.kind == 've':
            low, high = (math.log(s) for s in VE_TRAIN_SIGMA)
            return torch.exp(low + u * (high - low))
        return self._vp.ve_sigma(VP_TRAIN_T_MIN + u * (1.0 - VP_TRAIN_T_MIN)).float()


def network_input(schedule, precond: EDMPrecond, x, t):
    """(y = x / alpha, s, the backbone's input c_in y and time c_noise) at the VP state x, (B,) times t."""
    s = schedule.ve_sigma(t)
    y = x / _column(schedule.alpha(t), x).to(x.dtype)
    c_noise = precond.c_noise(s).to(torch.promote_types(x.dtype, torch.float32))
    return y, s, (_column(precond.c_in(s), x) * y).to(x.dtype), c_noise


class EDMDenoiser(Denoiser):
    """The preconditioned backbone, seen by the samplers in the variance-preserving coordinates of ``schedule``:
    ``noise(x, t)`` and ``data(x, t)`` (x0) as the Gaussian ``Denoiser``'s, ``output(x, t)`` (the raw F),
    ``denoise(y, s)`` (EDM's D in its own coordinates) and ``features(x, t, layers)``."""

    def __init__(self, nnet, schedule, precond: EDMPrecond):
        super().__init__(nnet, schedule, 'x0')
        self.precond = precond

    def _network_input(self, x, t):
        return network_input(self.schedule, self.precond, x, self._times(x, t))

    def _evaluate(self, x, t, cond):
        """(y, s, the raw F cast to at least float32): one network call, its inputs computed once."""
        y, s, net_in, c_noise = self._network_input(x, t)
        out = self.nnet(net_in, c_noise, **cond)
        return y, s, out.to(torch.promote_types(out.dtype, torch.float32))

    def output(self, x, t, **cond):
        return self._evaluate(x, t, cond)[2]

    def _predict(self, target, x, t, cond):
        y, s, out = self._evaluate(x, t, cond)
        y = y.to(out.dtype)
        denoised = self.precond.denoised(y, s, out)
        if target == 'x0':
            return denoised
        if target == 'noise':
            return (y - denoised) / _column(s, out).to(out.dtype)
        return self._convert(target, denoised, x, self._times(x, t))  # the velocity or the score, from x0

    def denoise(self, y, s, **cond):
        """EDM's D(y; s) for y = x_0 + s n, s a (B,) tensor of noise levels."""
        t = self.schedule.t_from_ve_sigma(s)
        return self.data(y * _column(self.schedule.alpha(t), y).to(y.dtype), t, **cond)

    def features(self, x, t, layers, **cond):
        _, _, net_in, c_noise = self._network_input(x, t)
        return self.nnet.features(net_in, c_noise, layers, **cond)


class EDMFramework(GaussianFramework):
    """EDM's preconditioning, noise levels and loss over ``KarrasSchedule``; sampled by every Gaussian sampler.

    ``augment``: EDM's non-leaking augmentation (libs/data/edm_augment.py) applied to each training batch, its
    labels given to the backbone as ``augment_labels`` (None at sampling: no augmentation)."""

    name = 'edm'

    def __init__(self, precond: EDMPrecond, schedule: KarrasSchedule = None, p_mean: float = -1.2,
                 p_std: float = 1.2, augment=None):
        super().__init__(schedule or KarrasSchedule(), 'x0')
        if p_std <= 0:
            raise UserError(f'EDM needs p_std > 0, got {p_std}')
        self.precond = precond
        self.p_mean, self.p_std = float(p_mean), float(p_std)
        self.augment = augment

    @classmethod
    def from_config(cls, config) -> 'EDMFramework':
        """``config.edm``: precond, sigma_data, p_mean, p_std, sigma_min, sigma_max, rho, augment_prob."""
        cfg = config.edm
        augment = None
        if cfg.augment_prob > 0:
            from libs.data.edm_augment import AugmentPipe
            augment = AugmentPipe(p=cfg.augment_prob, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1,
                                  translate_frac=1)
        return cls(EDMPrecond(cfg.precond, cfg.sigma_data), KarrasSchedule(cfg.sigma_min, cfg.sigma_max, cfg.rho),
                   cfg.p_mean, cfg.p_std, augment)

    def __repr__(self):
        return f'EDMFramework({self.precond!r}, {self.schedule!r}, p_mean={self.p_mean}, p_std={self.p_std})'

    def check_backbone(self, nnet) -> None:
        super().check_backbone(nnet)
        if self.augment is not None and getattr(nnet, 'augment_dim', 0) != self.augment.label_dim:
            raise UserError(f'config.edm.augment_prob > 0 gives the backbone {self.augment.label_dim} augmentation '
                            f'labels; {type(nnet).__name__} takes {getattr(nnet, "augment_dim", 0)} (use '
                            f'nnet.name=unet with augment_dim={self.augment.label_dim})')

    def denoiser(self, nnet) -> EDMDenoiser:
        return EDMDenoiser(nnet, self.schedule, self.precond)

    def model_time(self, t):
        return self.precond.c_noise(self.schedule.ve_sigma(t))

    def network_input(self, x_t, t):
        return network_input(self.schedule, self.precond, x_t, t)[2]

    def corrupt(self, x0, generator=None):
        """s from the preconditioning's training distribution, mapped to t; x_t = alpha x_0 + sigma eps."""
        s = self.precond.sample_train_sigma(x0.shape[0], x0.device, self.p_mean, self.p_std, generator)
        t = self.schedule.t_from_ve_sigma(s)
        eps = generator_noise(generator)(x0)
        alpha = _column(self.schedule.alpha(t), x0).to(x0.dtype)
        return t, eps, alpha * (x0 + _column(s, x0).to(x0.dtype) * eps)

    def loss_of_output(self, output, x0, noise, x_t, t):
        """lambda(s) |D - x_0|^2 per sample, float32."""
        y, s, _, _ = network_input(self.schedule, self.precond, x_t.float(), t)
        denoised = self.precond.denoised(y, s, output.float())
        return squared_error(denoised, x0) * self.precond.loss_weight(s).float()

    def loss(self, nnet, x0, cond=None, generator=None):
        cond = dict(cond or {})
        if self.augment is not None:
            x0, cond['augment_labels'] = self.augment(x0, generator=generator)
        return super().loss(nnet, x0, cond, generator)

    def level_range(self) -> tuple:
        """Noise-level indices as DDAE's: k in 1..18 of its 18-level rho-grid read from the bottom, 1 = sigma_min,
        18 = sigma_max (DDAE's linear probe uses 4: sigma = 0.06)."""
        return 1, LEVEL_STEPS

    LEVELS = f"DDAE's index into EDM's {LEVEL_STEPS}-level grid, 1 = sigma_min"

    def level_time(self, index: int) -> float:
        schedule = self.schedule
        grid = karras_grid(schedule, LEVEL_STEPS - 1, 1.0, schedule.t_min, schedule.rho)
        return grid[LEVEL_STEPS - self.check_level(index)]

    def default_levels(self) -> list:
        return list(range(1, LEVEL_STEPS + 1))

    def prior(self, shape, noise):
        """x_T = alpha(1) sigma_max n = sigma(1) n: EDM's y_T ~ N(0, sigma_max^2 I) in these coordinates."""
        return noise.randn(tuple(shape)) * float(self.schedule.sigma(torch.tensor(1.0, dtype=torch.float64)))
