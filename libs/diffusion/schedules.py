"""Noise schedules: the forward process x_t = alpha(t) x_0 + sigma(t) eps in continuous time t in [0, 1], t = 0 the
data and t = 1 the noise.

``NoiseSchedule`` is any such Gaussian path, alpha and sigma independent; ``VPSchedule`` the variance-preserving
ones (alpha^2 + sigma^2 = 1: the VP SDE, the discrete DDPM / Stable Diffusion schedules, EDM's levels), each
described by log_alpha(t). SiT's interpolants (Ma et al. 2024) are flow-matching paths: ``LinearPath`` (alpha = 1 - t,
sigma = t) and ``GVPPath`` (alpha = cos(pi t / 2), sigma = sin(pi t / 2), variance preserving). SiT's own code runs
time the other way (its t = 1 - ours: 0 is the noise, 1 the data, x_t = t x_data + (1 - t) noise); here every path
uses the suite's direction, and ``model_time`` gives the network what SiT's release feeds it.

Methods take and return torch tensors and work on any device. A float16/bfloat16/integer `t` is promoted to
float32, a Python number becomes a float64 tensor; float32 and float64 are kept (samplers use float64).
"""
import inspect
import math

import torch

from libs.errors import UserError


def _as_time(t):
    """A floating tensor for the time (or log-SNR) argument; see the module docstring for the dtype rule."""
    if not torch.is_tensor(t):
        return torch.as_tensor(t, dtype=torch.float64)
    if t.dtype not in (torch.float32, torch.float64):
        return t.to(torch.float32)
    return t


def _interp(x, xs, ys):
    """Piecewise-linear interpolation through the knots (xs increasing), extrapolating the end segments.

    Returns (value, slope) at x, where slope is that of the segment used (the right one at a knot).
    """
    idx = torch.searchsorted(xs, x.contiguous(), right=True) - 1
    idx = idx.clamp(0, xs.numel() - 2)
    x0, x1, y0, y1 = xs[idx], xs[idx + 1], ys[idx], ys[idx + 1]
    slope = (y1 - y0) / (x1 - x0)
    return y0 + (x - x0) * slope, slope


class NoiseSchedule:
    """A Gaussian forward process x_t = alpha(t) x_0 + sigma(t) eps, with alpha and sigma independent: subclasses
    define ``alpha``, ``sigma``, their time derivatives and the inverse of the log-SNR (``VPSchedule`` for the
    variance-preserving ones, ``LinearPath`` for SiT's linear interpolant).

    The general relations (each subclass may override them with an exact or better-conditioned form):

    - lambda(t) = log_snr(t) = log alpha - log sigma, strictly decreasing;
    - sigma_ve(t) = sigma / alpha = exp(-lambda), EDM's noise level (``ve_sigma``);
    - the forward SDE dx = f x dt + g dW with the same marginals: f = alpha' / alpha and
      g^2 = d(sigma^2)/dt - 2 f sigma^2 = 2 (sigma sigma' - f sigma^2) (``sde_coefficients``).

    Attributes:
        variance_preserving: alpha^2 + sigma^2 = 1 (Salimans' v and the release's VP formulas need it).
        t_min: smallest time the schedule is meant to be used at; the default end of the log-SNR solvers.
        t_max: largest time at which lambda is finite: 1, or below 1 on a path whose alpha(1) = 0 (the default
            start of the log-SNR solvers, and of every sampler of a noise-predicting model).
        train_range: (low, high), the interval the training times lie in.
    """

    variance_preserving = False
    t_max = 1.0
    train_range = (0.0, 1.0)

    def alpha(self, t):
        raise NotImplementedError

    def sigma(self, t):
        raise NotImplementedError

    def d_alpha_dt(self, t):
        raise NotImplementedError

    def d_sigma_dt(self, t):
        raise NotImplementedError

    def t_from_log_snr(self, lam):
        """Inverse of ``log_snr``."""
        raise NotImplementedError

    def model_time(self, t):
        """What the network is called with at continuous time t."""
        raise NotImplementedError

    def sample_train_t(self, n, device, generator=None):
        """(n,) float32 training times, drawn from the global RNG of `device` unless a generator is given."""
        raise NotImplementedError

    def log_snr(self, t):
        """lambda(t) = log(alpha / sigma)."""
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def ve_sigma(self, t):
        """The noise level of the equivalent variance-exploding process x / alpha = x_0 + (sigma / alpha) eps:
        sigma / alpha = exp(-lambda(t)) (EDM's sigma; 0 at t = 0)."""
        return torch.exp(-self.log_snr(t))

    def t_from_ve_sigma(self, ve_sigma):
        """Inverse of ``ve_sigma``."""
        return self.t_from_log_snr(-torch.log(_as_time(ve_sigma)))

    def sde_coefficients(self, t):
        """(f(t), g^2(t)) of the forward SDE dx = f x dt + g dW with this schedule's marginals."""
        alpha, sigma = self.alpha(t), self.sigma(t)
        f = self.d_alpha_dt(t) / alpha
        return f, 2.0 * (sigma * self.d_sigma_dt(t) - f * sigma ** 2)


class VPSchedule(NoiseSchedule):
    """A variance-preserving forward process (alpha^2 + sigma^2 = 1), described by log_alpha(t), a strictly
    decreasing function with log_alpha(0) = 0; subclasses define ``log_alpha``, ``d_log_alpha_dt`` and the
    inverse. Everything else follows from it: sigma = sqrt(1 - alpha^2), ``t_from_log_snr`` inverts lambda exactly,
    and the forward SDE has f = d log_alpha / dt and g^2 = -2 f.
    """

    variance_preserving = True

    def log_alpha(self, t):
        raise NotImplementedError

    def d_log_alpha_dt(self, t):
        raise NotImplementedError

    def t_from_log_alpha(self, log_alpha):
        """Inverse of `log_alpha` (strictly decreasing, negative for t > 0)."""
        raise NotImplementedError

    def alpha(self, t):
        return torch.exp(self.log_alpha(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def d_alpha_dt(self, t):
        return self.alpha(t) * self.d_log_alpha_dt(t)

    def d_sigma_dt(self, t):
        """sigma' = -alpha^2 (d log_alpha / dt) / sigma (infinite at t = 0, where sigma = 0)."""
        return -self.alpha(t) ** 2 * self.d_log_alpha_dt(t) / self.sigma(t)

    def log_snr(self, t):
        """lambda(t) = log(alpha / sigma)."""
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(-torch.expm1(2.0 * log_alpha))

    def t_from_log_snr(self, lam):
        """Inverse of `log_snr`: alpha^2 = sigmoid(2 lambda), so log_alpha = -softplus(-2 lambda) / 2."""
        lam = _as_time(lam)
        return self.t_from_log_alpha(-0.5 * torch.nn.functional.softplus(-2.0 * lam))

    def sde_coefficients(self, t):
        """(f(t), g^2(t)) of the forward SDE dx = f x dt + g dW; for a VP process g^2 = -2 f."""
        f = self.d_log_alpha_dt(t)
        return f, -2.0 * f


class VPSDE(VPSchedule):
    """The VP SDE with linear beta(t) = beta_min + t (beta_max - beta_min) (Song et al. 2021).

    log_alpha(t) = -(beta_max - beta_min) t^2 / 4 - beta_min t / 2. The network sees 999 t, as the released U-ViT
    pixel-space checkpoints expect; training times are Uniform(0, 1) as in the release. `t_min` = 1e-5
    (sigma ~ 1.4e-3, lambda ~ 6.6); the sampler presets end at 1e-4 (DPM-Solver) or 1e-3 (Euler-Maruyama).
    """

    t_min = 1e-5

    def __init__(self, beta_min=0.1, beta_max=20.0):
        if not 0 < beta_min <= beta_max:
            raise UserError(f'VPSDE needs 0 < beta_min <= beta_max, got beta_min={beta_min}, beta_max={beta_max}')
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def __repr__(self):
        return f'VPSDE(beta_min={self.beta_min}, beta_max={self.beta_max})'

    def log_alpha(self, t):
        t = _as_time(t)
        return -0.25 * (self.beta_max - self.beta_min) * t ** 2 - 0.5 * self.beta_min * t

    def d_log_alpha_dt(self, t):
        t = _as_time(t)
        return -0.5 * (self.beta_min + (self.beta_max - self.beta_min) * t)

    def t_from_log_alpha(self, log_alpha):
        # Root of (b1 - b0)/4 t^2 + b0/2 t - L = 0 with L = -log_alpha, written without cancellation.
        big_l = -_as_time(log_alpha)
        b = 0.5 * self.beta_min
        return 2.0 * big_l / (b + torch.sqrt(b ** 2 + (self.beta_max - self.beta_min) * big_l))

    def model_time(self, t):
        return 999.0 * t

    def sample_train_t(self, n, device, generator=None):
        return torch.rand(n, device=device, generator=generator)


class DiscreteSchedule(VPSchedule):
    """An N-step DDPM schedule placed in continuous time.

    alphas_cumprod[n] = prod_{i <= n} (1 - beta_i) sits at t_n = n / N (n = 1..N), and log_alpha(t) is the
    piecewise-linear interpolation of log(alphas_cumprod) / 2 over the knots t_n together with t_0 = 0,
    log_alpha = 0 (clean data). So below t_1 = 1/N the schedule follows the straight line to (0, 0), which keeps
    alpha <= 1; above t = 1 the last segment is extrapolated. The network sees N t (the integer n at t = n / N, as
    the released text-to-image code calls it with steps 1..N), or ``time_scale`` t (DDAE's UNets see n / N:
    ``time_scale=1``), plus ``time_offset`` (DiT's released checkpoints see the step index n - 1 in 0..N-1:
    ``time_offset=-1``); training times are n / N with n uniform in 1..N.
    `t_min` = 1 / N.
    """

    def __init__(self, betas, time_scale=None, time_offset=0.0):
        betas = torch.as_tensor(betas, dtype=torch.float64).cpu()
        if betas.ndim != 1 or betas.numel() < 2 or not bool(((betas > 0) & (betas < 1)).all()):
            raise UserError('DiscreteSchedule needs a 1-D sequence of at least 2 betas, each in (0, 1)')
        self.betas = betas
        self.num_steps = betas.numel()
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.t_min = 1.0 / self.num_steps
        self.train_range = (self.t_min, 1.0)
        self.time_scale = float(self.num_steps if time_scale is None else time_scale)
        self.time_offset = float(time_offset)
        zero = torch.zeros(1, dtype=torch.float64)
        self._t_knots = torch.arange(self.num_steps + 1, dtype=torch.float64) / self.num_steps
        self._log_alpha_knots = torch.cat([zero, 0.5 * torch.log(self.alphas_cumprod)])
        self._knot_cache = {}

    def _knots(self, like):
        """(t knots, log_alpha knots) on the device and in the dtype of `like`, cached."""
        key = (like.device, like.dtype)
        if key not in self._knot_cache:
            self._knot_cache[key] = (self._t_knots.to(device=like.device, dtype=like.dtype),
                                     self._log_alpha_knots.to(device=like.device, dtype=like.dtype))
        return self._knot_cache[key]

    def __repr__(self):
        return f'DiscreteSchedule(N={self.num_steps})'

    @classmethod
    def linear(cls, N=1000, beta_start=1e-4, beta_end=0.02, time_scale=None, time_offset=0.0):
        """DDPM (Ho et al. 2020): betas linear from beta_start to beta_end."""
        return cls(torch.linspace(beta_start, beta_end, N, dtype=torch.float64), time_scale, time_offset)

    @classmethod
    def scaled_linear(cls, N=1000, beta_start=0.00085, beta_end=0.012, time_scale=None, time_offset=0.0):
        """Stable Diffusion: betas = linspace(sqrt(beta_start), sqrt(beta_end), N)^2."""
        return cls(torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), N, dtype=torch.float64) ** 2,
                   time_scale, time_offset)

    @classmethod
    def cosine(cls, N=1000, s=0.008, time_scale=None, time_offset=0.0):
        """Nichol & Dhariwal 2021: alphas_cumprod(t) = cos((t + s) / (1 + s) pi / 2)^2, normalised; betas <= 0.999."""
        t = torch.arange(N + 1, dtype=torch.float64) / N
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        betas = 1.0 - f[1:] / f[:-1]
        return cls(betas.clamp(max=0.999), time_scale, time_offset)

    def log_alpha(self, t):
        t = _as_time(t)
        return _interp(t, *self._knots(t))[0]

    def d_log_alpha_dt(self, t):
        t = _as_time(t)
        return _interp(t, *self._knots(t))[1]

    def t_from_log_alpha(self, log_alpha):
        log_alpha = _as_time(log_alpha)
        t_knots, log_alpha_knots = self._knots(log_alpha)
        return _interp(log_alpha, log_alpha_knots.flip(0), t_knots.flip(0))[0]

    def model_time(self, t):
        return self.time_scale * t + self.time_offset

    def sample_train_t(self, n, device, generator=None):
        steps = torch.randint(1, self.num_steps + 1, (n,), device=device, generator=generator)
        return steps.to(torch.float32) / self.num_steps


class KarrasSchedule(VPSchedule):
    """EDM's noise levels (Karras et al. 2022) as a variance-preserving schedule in t in [0, 1].

    The variance-exploding level is sigma_ve(t) = sigma_max t^rho, so alpha = 1 / sqrt(1 + sigma_ve^2) and
    log_alpha(t) = -log1p(sigma_ve^2) / 2. Uniform steps in t from 1 down to t_min = (sigma_min / sigma_max)^(1/rho)
    are exactly EDM's rho-grid, and every sampler of the suite (DPM-Solver, UniPC, Heun) integrates the same ODE.
    The network never sees t: EDM's preconditioning (libs/diffusion/edm.py) calls it with c_noise(sigma_ve);
    ``model_time`` is EDM's c_noise = ln(sigma_ve) / 4. Training levels come from the preconditioning's
    distribution, not from here (``sample_train_t`` draws EDM's log-normal levels for completeness).
    """

    def __init__(self, sigma_min=0.002, sigma_max=80.0, rho=7.0):
        if not 0 < sigma_min < sigma_max or rho <= 0:
            raise UserError(f'KarrasSchedule needs 0 < sigma_min < sigma_max and rho > 0, got sigma_min={sigma_min}, '
                            f'sigma_max={sigma_max}, rho={rho}')
        self.sigma_min, self.sigma_max, self.rho = float(sigma_min), float(sigma_max), float(rho)
        self.t_min = (self.sigma_min / self.sigma_max) ** (1.0 / self.rho)

    def __repr__(self):
        return f'KarrasSchedule(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, rho={self.rho})'

    def ve_sigma(self, t):
        return self.sigma_max * _as_time(t) ** self.rho

    def t_from_ve_sigma(self, ve_sigma):
        return (_as_time(ve_sigma) / self.sigma_max) ** (1.0 / self.rho)

    def log_alpha(self, t):
        return -0.5 * torch.log1p(self.ve_sigma(t) ** 2)

    def d_log_alpha_dt(self, t):
        t = _as_time(t)
        sigma = self.ve_sigma(t)
        return -sigma ** 2 * self.rho / (t * (1.0 + sigma ** 2))

    def t_from_log_alpha(self, log_alpha):
        return self.t_from_ve_sigma(torch.sqrt(torch.expm1(-2.0 * _as_time(log_alpha))))

    def model_time(self, t):
        return torch.log(self.ve_sigma(t)) / 4.0

    def sample_train_t(self, n, device, generator=None):
        log_sigma = torch.randn(n, device=device, generator=generator) * 1.2 - 1.2
        return self.t_from_ve_sigma(torch.exp(log_sigma))


# SiT's sample_eps for models that cannot be evaluated at alpha = 0: where the flow paths' log-SNR solvers start
# (t_max = 1 - SAMPLE_EPS, lambda = -6.9 on the linear path) and end (t_min, sigma_ve = 1e-3).
SAMPLE_EPS = 1e-3
TIME_SAMPLINGS = ('uniform', 'logit_normal')


class FlowTimes:
    """The training times and the network's time input of SiT's interpolants (``LinearPath``, ``GVPPath``).

    Training times lie in [train_eps, 1 - train_eps] (SiT's train_eps: 0 for velocity prediction, 1e-3 for the noise
    and the score, whose losses or weights are infinite at an end): ``time_sampling`` 'uniform' (SiT), or
    'logit_normal': log sigma_ve = log(sigma / alpha) ~ N(logit_location, logit_scale^2), which on the linear path is
    SD3's logit-normal t = sigmoid(u) (Esser et al. 2024; a positive location puts more weight on the noisy half) and
    on any path REPA's 'lognormal' (EDM's log-normal levels, P_mean and P_std); either is mapped affinely into the
    interval. The network sees
    time_scale t + time_offset: SiT's released checkpoints see its own time 1 - t (the defaults -1, 1), REPA's see
    t (1, 0).
    """

    t_min = SAMPLE_EPS
    t_max = 1.0 - SAMPLE_EPS

    def __init__(self, time_sampling='uniform', logit_location=0.0, logit_scale=1.0, train_eps=0.0,
                 time_scale=-1.0, time_offset=1.0):
        if time_sampling not in TIME_SAMPLINGS:
            raise UserError(f'unknown schedule.time_sampling {time_sampling!r}; known: {", ".join(TIME_SAMPLINGS)}')
        if logit_scale <= 0:
            raise UserError(f'schedule.logit_scale must be > 0, got {logit_scale}')
        if not 0.0 <= train_eps < 0.5:
            raise UserError(f'schedule.train_eps must lie in [0, 0.5), got {train_eps}')
        self.time_sampling = time_sampling
        self.logit_location, self.logit_scale = float(logit_location), float(logit_scale)
        self.train_eps = float(train_eps)
        self.train_range = (self.train_eps, 1.0 - self.train_eps)
        self.time_scale, self.time_offset = float(time_scale), float(time_offset)

    def __repr__(self):
        sampling = (f'logit_normal({self.logit_location:g}, {self.logit_scale:g})'
                    if self.time_sampling == 'logit_normal' else 'uniform')
        return f'{type(self).__name__}({sampling}, train_eps={self.train_eps:g})'

    def model_time(self, t):
        return self.time_scale * t + self.time_offset

    def sample_train_t(self, n, device, generator=None):
        if self.time_sampling == 'uniform':
            u = torch.rand(n, device=device, generator=generator)
        else:
            u = self.t_from_log_snr(-(torch.randn(n, device=device, generator=generator) * self.logit_scale
                                      + self.logit_location))
        if not self.train_eps:
            return u
        low, high = self.train_range
        return low + (high - low) * u


class LinearPath(FlowTimes, NoiseSchedule):
    """SiT's linear interpolant (rectified flow): alpha = 1 - t, sigma = t, not variance preserving.

    lambda = log((1 - t) / t), sigma_ve = t / (1 - t); alpha(1) = 0, so lambda(1) = -inf and t_max = 1 - 1e-3.
    The flow velocity is dx_t / dt = eps - x_0.
    """

    def alpha(self, t):
        return 1.0 - _as_time(t)

    def sigma(self, t):
        return _as_time(t)

    def d_alpha_dt(self, t):
        return -torch.ones_like(_as_time(t))

    def d_sigma_dt(self, t):
        return torch.ones_like(_as_time(t))

    def log_snr(self, t):
        t = _as_time(t)
        return torch.log1p(-t) - torch.log(t)

    def t_from_log_snr(self, lam):
        return torch.sigmoid(-_as_time(lam))

    def ve_sigma(self, t):
        t = _as_time(t)
        return t / (1.0 - t)


class GVPPath(FlowTimes, VPSchedule):
    """SiT's generalised variance-preserving interpolant: alpha = cos(pi t / 2), sigma = sin(pi t / 2).

    log_alpha = log cos(pi t / 2), lambda = -log tan(pi t / 2), sigma_ve = tan(pi t / 2); alpha(1) vanishes (to
    rounding), so t_max = 1 - 1e-3 as on the linear path. The flow velocity is (pi / 2) (cos(pi t / 2) eps -
    sin(pi t / 2) x_0).
    """

    def _angle(self, t):
        return 0.5 * math.pi * _as_time(t)

    def log_alpha(self, t):
        return torch.log(torch.cos(self._angle(t)))

    def d_log_alpha_dt(self, t):
        return -0.5 * math.pi * torch.tan(self._angle(t))

    def t_from_log_alpha(self, log_alpha):
        return torch.acos(torch.exp(_as_time(log_alpha))) * (2.0 / math.pi)

    def alpha(self, t):
        return torch.cos(self._angle(t))

    def sigma(self, t):
        return torch.sin(self._angle(t))

    def d_alpha_dt(self, t):
        return -0.5 * math.pi * torch.sin(self._angle(t))

    def d_sigma_dt(self, t):
        return 0.5 * math.pi * torch.cos(self._angle(t))

    def log_snr(self, t):
        return -torch.log(torch.tan(self._angle(t)))

    def t_from_log_snr(self, lam):
        return torch.atan(torch.exp(-_as_time(lam))) * (2.0 / math.pi)

    def ve_sigma(self, t):
        return torch.tan(self._angle(t))


SCHEDULES = {
    'vpsde': VPSDE,
    'ddpm_linear': DiscreteSchedule.linear,
    'stable_diffusion': DiscreteSchedule.scaled_linear,
    'cosine': DiscreteSchedule.cosine,
    'karras': KarrasSchedule,
    'linear': LinearPath,       # SiT's interpolants (flow matching); SiT's 'VP' path is 'vpsde'
    'gvp': GVPPath,
}


def build_schedule(cfg=None):
    """A schedule from a mapping / ConfigDict with `name` and the constructor's keyword arguments.

    A missing cfg or `name` None gives the default VPSDE().
    """
    if cfg is None:
        return VPSDE()
    options = dict(cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg)
    name = options.pop('name', None)
    if name is None:
        name = 'vpsde'
    if name not in SCHEDULES:
        raise UserError(f'unknown schedule {name!r}; known schedules: {", ".join(sorted(SCHEDULES))}')
    constructor = SCHEDULES[name]
    accepted = set(inspect.signature(constructor).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise UserError(f'schedule {name!r} has no option(s) {", ".join(unknown)}; '
                        f'it accepts: {", ".join(sorted(accepted)) or "none"}')
    return constructor(**options)
