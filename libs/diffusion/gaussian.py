"""The Gaussian framework: x_t = alpha(t) x_0 + sigma(t) eps with a variance-preserving schedule (the VP SDE, or
a discrete DDPM / Stable Diffusion schedule placed in continuous time; libs/diffusion/schedules.py).

- Corruption: t ~ ``schedule.sample_train_t``, eps ~ N(0, I). Loss: L_simple (Ho et al. 2020), the mean squared
  error of the raw output against the parameterisation's target, one value per sample.
- Parameterisation (``PREDICTIONS``): what the backbone's output means, ``'noise'`` (eps), ``'x0'`` or ``'v'``
  (v = alpha eps - sigma x_0, Salimans & Ho 2022: like x0 at high noise, like eps at low noise); the ``Denoiser``
  turns it into both predictions, and L_simple is the squared error of the output against its own target,
  optionally weighted by Min-SNR-gamma (``min_snr_gamma``). EDM's preconditioning (c_skip, c_out, c_in, c_noise;
  VP, VE and EDM variants, F-prediction) is a subclass: libs/diffusion/edm.py.
- Time: the backbone sees ``schedule.model_time(t)`` (999 t for the VP SDE, as the released checkpoints expect).
- Prior: N(0, I). Samplers: libs/diffusion/samplers (DPM-Solver, Euler-Maruyama, DDPM ancestral), over the
  noise prediction. Guidance: classifier-free, in eps (libs/diffusion/guidance.py).
"""
import torch

from libs.diffusion.framework import Framework
from libs.diffusion.guidance import classifier_free_guidance
from libs.diffusion.samplers import SAMPLERS, build_sampler
from libs.diffusion.schedules import build_schedule
from libs.errors import UserError
from libs.rng import generator_noise

PREDICTIONS = ('noise', 'x0', 'v')

# config.pred (the release's names) -> the Denoiser's prediction type
CONFIG_PREDICTIONS = {'noise_pred': 'noise', 'x0_pred': 'x0', 'v_pred': 'v'}


def broadcast_scales(schedule, t, x, dtype):
    """alpha(t), sigma(t) in ``dtype``, shaped (B, 1, ..., 1) to broadcast against x."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    return schedule.alpha(t).to(dtype).view(shape), schedule.sigma(t).to(dtype).view(shape)


class Denoiser:
    """Wraps ``nnet`` (outputs eps if prediction == 'noise', x0 if 'x0', alpha eps - sigma x0 if 'v') with
    ``schedule``.

    The backbone ``nnet(x, model_time, **cond)`` knows nothing about schedules; this wrapper converts t to what the
    network is called with (``schedule.model_time(t)``) and its output to either prediction.
    x: (B, ...) noisy inputs; t: (B,) tensor or a number (the same time for the whole batch).
    Outputs are at least float32 (a half-precision output under autocast is cast up; float64 stays float64).
    """

    def __init__(self, nnet, schedule, prediction='noise'):
        if prediction not in PREDICTIONS:
            raise UserError(f'unknown prediction type {prediction!r}; known: {", ".join(PREDICTIONS)}')
        self.nnet = nnet
        self.schedule = schedule
        self.prediction = prediction

    def _times(self, x, t):
        if not torch.is_tensor(t) or t.ndim == 0:
            dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
            return torch.full((x.shape[0],), float(t), dtype=dtype, device=x.device)
        return t

    def _scales(self, x, t, dtype):
        return broadcast_scales(self.schedule, t, x, dtype)

    def output(self, x, t, **cond):
        """The raw network output (eps or x0, per ``prediction``), cast to at least float32."""
        t = self._times(x, t)
        out = self.nnet(x, self.schedule.model_time(t), **cond)
        return out.to(torch.promote_types(out.dtype, torch.float32))

    def noise(self, x, t, **cond):
        """eps prediction, same shape as x."""
        return self._predict('noise', x, t, cond)

    def data(self, x, t, **cond):
        """x0 prediction, same shape as x."""
        return self._predict('x0', x, t, cond)

    def features(self, x, t, layers, **cond):
        """The backbone's pooled features of ``layers`` at (x, t) (libs/nets/protocol.py)."""
        return self.nnet.features(x, self.schedule.model_time(self._times(x, t)), layers, **cond)

    def _predict(self, target, x, t, cond):
        """The ``target`` ('noise' or 'x0') prediction from the output, with x = alpha x0 + sigma eps."""
        t = self._times(x, t)
        out = self.output(x, t, **cond)
        if self.prediction == target:
            return out
        alpha, sigma = self._scales(x, t, out.dtype)
        x = x.to(out.dtype)
        if self.prediction == 'v':  # eps = sigma x + alpha v, x0 = alpha x - sigma v (alpha^2 + sigma^2 = 1)
            return sigma * x + alpha * out if target == 'noise' else alpha * x - sigma * out
        known, other = (alpha, sigma) if target == 'noise' else (sigma, alpha)  # out is x0 or eps
        return (x - known * out) / other


def squared_error(prediction, target):
    """Mean squared error per sample, (B,) float32 whatever the precision of the prediction."""
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(1)


def noised(schedule, x0, generator=None):
    """Draw t ~ schedule.sample_train_t and eps ~ N(0, I); return (t, eps, x_t = alpha(t) x0 + sigma(t) eps).

    Without a generator the random numbers come from the global RNG of x0's device, so restoring that RNG state on
    resume reproduces the losses exactly.
    """
    t = schedule.sample_train_t(x0.shape[0], x0.device, generator=generator)
    eps = generator_noise(generator)(x0)
    alpha, sigma = broadcast_scales(schedule, t, x0, x0.dtype)
    return t, eps, alpha * x0 + sigma * eps


class GaussianFramework(Framework):
    """The framework of the U-ViT release: a VP schedule, eps or x0 prediction, L_simple."""

    name = 'gaussian'
    samplers = SAMPLERS

    def __init__(self, schedule, prediction: str = 'noise', min_snr_gamma: float = 0.0):
        if prediction not in PREDICTIONS:
            raise UserError(f'unknown prediction type {prediction!r}; known: {", ".join(PREDICTIONS)}')
        if min_snr_gamma < 0:
            raise UserError(f'config.min_snr_gamma must be >= 0 (0: plain L_simple), got {min_snr_gamma}')
        self.schedule = schedule
        self.prediction = prediction
        self.min_snr_gamma = float(min_snr_gamma)

    @classmethod
    def from_config(cls, config) -> 'GaussianFramework':
        """``config.schedule`` and ``config.pred`` ('noise_pred' / 'x0_pred')."""
        if config.pred not in CONFIG_PREDICTIONS:
            raise UserError(f"config.pred must be one of {', '.join(CONFIG_PREDICTIONS)}, got {config.pred!r}")
        return cls(build_schedule(config.schedule), CONFIG_PREDICTIONS[config.pred],
                   float(config.get('min_snr_gamma', 0.0)))

    def __repr__(self):
        return f'GaussianFramework({self.schedule!r}, prediction={self.prediction!r})'

    def check_backbone(self, nnet) -> None:
        from libs.nets.protocol import OUTPUT_IMAGE, backbone_output
        output = backbone_output(nnet)
        if output != OUTPUT_IMAGE:
            raise UserError(f'the Gaussian framework needs a backbone whose output is shaped like its input '
                            f'({OUTPUT_IMAGE!r}); {type(nnet).__name__} declares {output!r}')

    def model_time(self, t):
        return self.schedule.model_time(t)

    def network_input(self, x_t, t):
        return x_t

    def corrupt(self, x0, generator=None):
        return noised(self.schedule, x0, generator)

    def loss_of_output(self, output, x0, noise, x_t, t):
        error = squared_error(output, self.target(x0, noise, t))
        return error if not self.min_snr_gamma else error * self.min_snr_weight(t)

    def min_snr_weight(self, t):
        """(B,) float32: Min-SNR-gamma (Hang et al. 2023, arXiv 2303.09556) weighs the x0 error by min(SNR, gamma),
        i.e. the squared error of this output by min(SNR, gamma) / SNR (eps), min(SNR, gamma) (x0) or
        min(SNR, gamma) / (SNR + 1) (v)."""
        snr = torch.exp(2.0 * self.schedule.log_snr(t).double())
        capped = torch.clamp(snr, max=self.min_snr_gamma)
        weight = {'noise': capped / snr, 'x0': capped, 'v': capped / (snr + 1.0)}[self.prediction]
        return weight.float()

    def target(self, x0, noise, t):
        """What the output is trained to be: eps, x0 or v = alpha(t) eps - sigma(t) x0."""
        if self.prediction == 'noise':
            return noise
        if self.prediction == 'x0':
            return x0
        alpha, sigma = broadcast_scales(self.schedule, t, x0, x0.dtype)
        return alpha * noise - sigma * x0

    def loss(self, nnet, x0, cond=None, generator=None):
        """L_simple: (B,) float32, one mean squared error per sample, through the ``Denoiser``."""
        t, eps, x_t = self.corrupt(x0, generator)
        output = self.denoiser(nnet).output(x_t, t, **(cond or {}))
        return self.loss_of_output(output, x0, eps, x_t, t)

    def denoiser(self, nnet) -> Denoiser:
        return Denoiser(nnet, self.schedule, self.prediction)

    def prior(self, shape, noise):
        return noise.randn(tuple(shape))

    def guided(self, denoiser, cond: dict, null_cond: dict = None, scale: float = 0.0):
        """eps_fn(x, t): the noise prediction conditioned on ``cond``; with scale > 0, eps_c + scale (eps_c - eps_u)
        in one batched call."""
        return classifier_free_guidance(denoiser.noise, cond, null_cond, scale)

    def build_sampler(self, sample_cfg):
        return build_sampler(sample_cfg, self.schedule)

    def level_range(self) -> tuple:
        """The noise-level indices (DDAE's "timestep"): step n in 1..N of a discrete N-step chain, or n / 1000 of
        continuous time otherwise."""
        return 1, getattr(self.schedule, 'num_steps', 1000)

    LEVELS = 'step n of the N-step chain, or n / 1000 of continuous time'

    def check_level(self, index) -> int:
        low, high = self.level_range()
        if not isinstance(index, int) or isinstance(index, bool) or not low <= index <= high:
            raise UserError(f'a noise level is an integer in {low}..{high} ({self.LEVELS}), got {index!r}')
        return index

    def level_time(self, index: int) -> float:
        """The time of noise-level ``index`` (see ``level_range``)."""
        return self.check_level(index) / self.level_range()[1]

    def default_levels(self) -> list:
        """DDAE's test levels of the noise-conditional classifiers: 20 levels, 1, 51, ..., 951 of 1000."""
        high = self.level_range()[1]
        return list(range(1, high + 1, max(1, high // 20)))
