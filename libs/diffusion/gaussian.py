"""The Gaussian framework: x_t = alpha(t) x_0 + sigma(t) eps with a variance-preserving schedule (the VP SDE, or
a discrete DDPM / Stable Diffusion schedule placed in continuous time; libs/diffusion/schedules.py).

- Corruption: t ~ ``schedule.sample_train_t``, eps ~ N(0, I). Loss: L_simple (Ho et al. 2020), the mean squared
  error of the raw output against the parameterisation's target, one value per sample.
- Parameterisation (``PREDICTIONS``): what the backbone's output means, ``'noise'`` (eps), ``'x0'`` or ``'v'``
  (v = alpha eps - sigma x_0, Salimans & Ho 2022: like x0 at high noise, like eps at low noise); the ``Denoiser``
  turns it into both predictions, and L_simple is the squared error of the output against its own target,
  optionally weighted by Min-SNR-gamma (``min_snr_gamma``). EDM's preconditioning (c_skip, c_out, c_in, c_noise;
  VP, VE and EDM variants, F-prediction) is a subclass: libs/diffusion/edm.py.
- Learned variance (``learned_variance``; DiT, Nichol & Dhariwal 2021): the backbone declares 'image+variance'
  and returns 2C channels, the prediction then the variance output v in [-1, 1] (libs/diffusion/ddpm.py). The loss
  is DiT's hybrid L_simple + vlb_lambda N L_n: L_n is the variational bound's term at the training step n in bits
  per dimension (KL(q(x_{n-1} | x_n, x_0) || p(x_{n-1} | x_n)), at n = 1 the discretised decoder's NLL), computed
  with the prediction detached so that it trains only the variance. DiT's code adds it unweighted (loss type MSE)
  with N = 1000: vlb_lambda = 0.001 is that loss, and the lambda of Nichol & Dhariwal for one term of the sum over
  N steps. Needs a discrete schedule. Samplers see the eps half; ``ddpm_ancestral_learned`` the variance too.
- Time: the backbone sees ``schedule.model_time(t)`` (999 t for the VP SDE, as the released checkpoints expect).
- Prior: N(0, I). Samplers: libs/diffusion/samplers (DPM-Solver, Euler-Maruyama, DDPM ancestral), over the
  noise prediction. Guidance: classifier-free, in eps (libs/diffusion/guidance.py), optionally of the first
  ``sample.guided_channels`` channels only (DiT's convention).
"""
import math

import torch

from libs.diffusion.ddpm import (discretized_gaussian_log_likelihood, learned_log_variance, normal_kl,
                                 posterior_step)
from libs.diffusion.framework import Framework, LikelihoodBound
from libs.diffusion.guidance import classifier_free_guidance
from libs.diffusion.samplers import NOISE_AND_VARIANCE, SAMPLERS, build_sampler
from libs.diffusion.schedules import DiscreteSchedule, build_schedule
from libs.diffusion.vlb import bits_per_dim
from libs.errors import UserError
from libs.rng import generator_noise

PREDICTIONS = ('noise', 'x0', 'v')

# config.pred (the release's names) -> the Denoiser's prediction type
CONFIG_PREDICTIONS = {'noise_pred': 'noise', 'x0_pred': 'x0', 'v_pred': 'v'}


def broadcast_scales(schedule, t, x, dtype):
    """alpha(t), sigma(t) in ``dtype``, shaped (B, 1, ..., 1) to broadcast against x."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    return schedule.alpha(t).to(dtype).view(shape), schedule.sigma(t).to(dtype).view(shape)


def convert_prediction(prediction, target, out, x, alpha, sigma):
    """The ``target`` ('noise' or 'x0') prediction from an output of kind ``prediction`` at x = alpha x0 + sigma eps
    (alpha, sigma broadcast against x)."""
    if prediction == target:
        return out
    x = x.to(out.dtype)
    if prediction == 'v':  # eps = sigma x + alpha v, x0 = alpha x - sigma v (alpha^2 + sigma^2 = 1)
        return sigma * x + alpha * out if target == 'noise' else alpha * x - sigma * out
    known, other = (alpha, sigma) if target == 'noise' else (sigma, alpha)  # out is x0 or eps
    return (x - known * out) / other


class Denoiser:
    """Wraps ``nnet`` (outputs eps if prediction == 'noise', x0 if 'x0', alpha eps - sigma x0 if 'v') with
    ``schedule``.

    The backbone ``nnet(x, model_time, **cond)`` knows nothing about schedules; this wrapper converts t to what the
    network is called with (``schedule.model_time(t)``) and its output to either prediction.
    x: (B, ...) noisy inputs; t: (B,) tensor or a number (the same time for the whole batch).
    Outputs are at least float32 (a half-precision output under autocast is cast up; float64 stays float64).
    With ``learned_variance`` the network returns 2C channels: ``noise`` and ``data`` read the first C (the
    prediction), ``variance`` the last C (v in [-1, 1]) and ``noise_and_variance`` both from one call.
    """

    def __init__(self, nnet, schedule, prediction='noise', learned_variance=False):
        if prediction not in PREDICTIONS:
            raise UserError(f'unknown prediction type {prediction!r}; known: {", ".join(PREDICTIONS)}')
        self.nnet = nnet
        self.schedule = schedule
        self.prediction = prediction
        self.learned_variance = bool(learned_variance)

    def _times(self, x, t):
        if not torch.is_tensor(t) or t.ndim == 0:
            dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
            return torch.full((x.shape[0],), float(t), dtype=dtype, device=x.device)
        return t

    def _scales(self, x, t, dtype):
        return broadcast_scales(self.schedule, t, x, dtype)

    def output(self, x, t, **cond):
        """The raw network output (eps or x0, per ``prediction``; then the variance output with
        ``learned_variance``), cast to at least float32."""
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

    def variance(self, x, t, **cond):
        """The learned variance output v in [-1, 1], same shape as x."""
        self._require_variance()
        return self._split(self.output(x, t, **cond))[1]

    def noise_and_variance(self, x, t, **cond):
        """(B, 2C): the eps prediction, then the variance output, from one network call."""
        self._require_variance()
        t = self._times(x, t)
        out, v = self._split(self.output(x, t, **cond))
        return torch.cat([self._convert('noise', out, x, t), v], dim=1)

    def _require_variance(self):
        if not self.learned_variance:
            raise UserError('this model has no learned variance (config.learned_variance=False); sample it with '
                            'ddpm_ancestral or another sampler of the noise prediction')

    def _split(self, out):
        """(prediction, variance output or None) of a raw output."""
        if not self.learned_variance:
            return out, None
        return out.chunk(2, dim=1)

    def _convert(self, target, out, x, t):
        if self.prediction == target:
            return out
        return convert_prediction(self.prediction, target, out, x, *self._scales(x, t, out.dtype))

    def _predict(self, target, x, t, cond):
        """The ``target`` ('noise' or 'x0') prediction from the output, with x = alpha x0 + sigma eps."""
        t = self._times(x, t)
        return self._convert(target, self._split(self.output(x, t, **cond))[0], x, t)


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
    """The framework of the U-ViT release: a VP schedule, eps or x0 prediction, L_simple; with
    ``learned_variance``, DiT's: a variance head trained by the variational bound (the module docstring)."""

    name = 'gaussian'
    samplers = SAMPLERS

    def __init__(self, schedule, prediction: str = 'noise', min_snr_gamma: float = 0.0,
                 learned_variance: bool = False, vlb_lambda: float = 0.001):
        if prediction not in PREDICTIONS:
            raise UserError(f'unknown prediction type {prediction!r}; known: {", ".join(PREDICTIONS)}')
        if min_snr_gamma < 0:
            raise UserError(f'config.min_snr_gamma must be >= 0 (0: plain L_simple), got {min_snr_gamma}')
        if learned_variance and not isinstance(schedule, DiscreteSchedule):
            raise UserError(f'config.learned_variance=True needs a discrete schedule (config.schedule.name '
                            f'ddpm_linear, cosine, ...), got {schedule!r}')
        if vlb_lambda < 0:
            raise UserError(f'config.vlb_lambda must be >= 0, got {vlb_lambda}')
        self.schedule = schedule
        self.prediction = prediction
        self.min_snr_gamma = float(min_snr_gamma)
        self.learned_variance = bool(learned_variance)
        self.vlb_lambda = float(vlb_lambda)
        self._tables = {}

    @classmethod
    def from_config(cls, config) -> 'GaussianFramework':
        """``config.schedule``, ``config.pred`` ('noise_pred' / 'x0_pred' / 'v_pred'), ``min_snr_gamma``,
        ``learned_variance`` and ``vlb_lambda``."""
        if config.pred not in CONFIG_PREDICTIONS:
            raise UserError(f"config.pred must be one of {', '.join(CONFIG_PREDICTIONS)}, got {config.pred!r}")
        return cls(build_schedule(config.schedule), CONFIG_PREDICTIONS[config.pred],
                   float(config.get('min_snr_gamma', 0.0)), bool(config.get('learned_variance', False)),
                   float(config.get('vlb_lambda', 0.001)))

    def __repr__(self):
        learned = ', learned_variance=True' if self.learned_variance else ''
        return f'GaussianFramework({self.schedule!r}, prediction={self.prediction!r}{learned})'

    def check_backbone(self, nnet) -> None:
        from libs.nets.protocol import OUTPUT_IMAGE, OUTPUT_IMAGE_AND_VARIANCE, backbone_output
        output = backbone_output(nnet)
        expected = OUTPUT_IMAGE_AND_VARIANCE if self.learned_variance else OUTPUT_IMAGE
        if output == expected:
            return
        name = type(nnet).__name__
        if output == OUTPUT_IMAGE_AND_VARIANCE:
            raise UserError(f"{name} declares 'image+variance' (a learned variance): set config.learned_variance="
                            f"True, or build it without the variance head (DiT: nnet.learn_sigma=False)")
        if self.learned_variance:
            raise UserError(f'config.learned_variance=True needs a backbone with a variance head '
                            f'({OUTPUT_IMAGE_AND_VARIANCE!r}, DiT with nnet.learn_sigma=True); {name} declares '
                            f'{output!r}')
        raise UserError(f'the Gaussian framework needs a backbone whose output is shaped like its input '
                        f'({OUTPUT_IMAGE!r}); {name} declares {output!r}')

    def model_time(self, t):
        return self.schedule.model_time(t)

    def network_input(self, x_t, t):
        return x_t

    def corrupt(self, x0, generator=None):
        return noised(self.schedule, x0, generator)

    def loss_of_output(self, output, x0, noise, x_t, t):
        prediction, v = output.chunk(2, dim=1) if self.learned_variance else (output, None)
        error = squared_error(prediction, self.target(x0, noise, t))
        if self.min_snr_gamma:
            error = error * self.min_snr_weight(t)
        if v is None:
            return error
        weight = self.vlb_lambda * self.schedule.num_steps
        return error + weight * self.vlb_term(prediction.detach(), v, x0, x_t, t)

    def _chain_tables(self, device) -> dict:
        """Per step n = 1..N (index n - 1), float64 on ``device``: the posterior's x0 and x_n coefficients, its
        log variance, and log beta; beta_tilde_1 = 0 is clipped to beta_tilde_2 (Nichol & Dhariwal's clipping)."""
        if device not in self._tables:
            abar = [1.0] + self.schedule.alphas_cumprod.tolist()
            steps = [posterior_step(abar[n], abar[n - 1], beta) for n, beta in
                     zip(range(1, self.schedule.num_steps + 1), self.schedule.betas.tolist())]
            tilde = [step.posterior_variance for step in steps]
            tilde[0] = tilde[1]
            table = lambda values: torch.tensor(values, dtype=torch.float64, device=device)  # noqa: E731
            self._tables[device] = {'x0_coef': table([s.x0_coef for s in steps]),
                                    'xt_coef': table([s.xt_coef for s in steps]),
                                    'log_beta_tilde': torch.log(table(tilde)),
                                    'log_beta': torch.log(table([s.beta for s in steps]))}
        return self._tables[device]

    def vlb_term(self, prediction, v, x0, x_t, t):
        """(B,) float32: the variational bound's term at each sample's step n = N t, in bits per dimension (mean over
        dimensions / ln 2): KL(q(x_{n-1} | x_n, x_0) || N(mu, sigma^2)) for n >= 2, the discretised Gaussian
        decoder's -log p(x_0 | x_1) at n = 1. mu: the posterior mean at the x0 of ``prediction``; log sigma^2:
        ``learned_log_variance`` of ``v``. Differentiable in both (the loss detaches the prediction)."""
        tables = self._chain_tables(x0.device)
        index = torch.round(t.double() * self.schedule.num_steps).long().clamp(1, self.schedule.num_steps) - 1
        shape = (-1,) + (1,) * (x0.ndim - 1)
        column = {key: value[index].view(shape) for key, value in tables.items()}
        alpha, sigma = broadcast_scales(self.schedule, t, x_t, torch.float64)
        x0_hat = convert_prediction(self.prediction, 'x0', prediction.double(), x_t.double(), alpha, sigma)
        x0, x_t = x0.double(), x_t.double()
        model_mean = column['x0_coef'] * x0_hat + column['xt_coef'] * x_t
        model_log_var = learned_log_variance(v.double(), column['log_beta'], column['log_beta_tilde'])
        true_mean = column['x0_coef'] * x0 + column['xt_coef'] * x_t
        kl = normal_kl(true_mean, column['log_beta_tilde'], model_mean, model_log_var)
        decoder = -discretized_gaussian_log_likelihood(x0, model_mean, torch.exp(0.5 * model_log_var))
        first = (index == 0).view(shape)
        nats = torch.where(first, decoder, kl).flatten(1).mean(1)
        return (nats / math.log(2.0)).float()

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
        """L_simple (+ the learned variance's term): (B,) float32 per sample, through the ``Denoiser``."""
        t, eps, x_t = self.corrupt(x0, generator)
        output = self.denoiser(nnet).output(x_t, t, **(cond or {}))
        return self.loss_of_output(output, x0, eps, x_t, t)

    def denoiser(self, nnet) -> Denoiser:
        return Denoiser(nnet, self.schedule, self.prediction, self.learned_variance)

    def prior(self, shape, noise):
        return noise.randn(tuple(shape))

    def guided(self, denoiser, cond: dict, null_cond: dict = None, scale: float = 0.0, channels: int = 0,
               with_variance: bool = False):
        """eps_fn(x, t): the noise prediction conditioned on ``cond``; with scale > 0, eps_c + scale (eps_c - eps_u)
        in one batched call, of the first ``channels`` channels only when > 0 (the rest conditional). With
        ``with_variance``: (B, 2C), eps then the (conditional) learned variance output; ``channels`` (1..C) must
        then be given, so that the variance is never guided."""
        if with_variance:
            if not channels:
                raise ValueError('guidance of eps and variance needs the number of eps channels to guide')
            return classifier_free_guidance(denoiser.noise_and_variance, cond, null_cond, scale, channels)
        return classifier_free_guidance(denoiser.noise, cond, null_cond, scale, channels)

    def build_sampler(self, sample_cfg):
        return build_sampler(sample_cfg, self.schedule)

    def sample(self, denoiser, sampler, shape, cond: dict, random, null_cond: dict = None, scale: float = 0.0):
        """The interface's ``sample``, with the guided channels and model function the sampler declares."""
        channels = getattr(sampler, 'guided_channels', 0)
        if channels > shape[0]:
            raise UserError(f'sample.guided_channels={channels} is more than the {shape[0]} channels of the data')
        with_variance = getattr(sampler, 'consumes', None) == NOISE_AND_VARIANCE
        channels = channels or (shape[0] if with_variance else 0)
        x_T = self.prior(shape, random)
        return sampler(self.guided(denoiser, cond, null_cond, scale, channels, with_variance), x_T, noise=random)

    def chain_steps(self):
        return self.schedule.num_steps if isinstance(self.schedule, DiscreteSchedule) else None

    def likelihood_bound(self, config) -> LikelihoodBound:
        """Ho et al.'s variational bound of the discrete chain (libs/diffusion/vlb.py) with config.clf_eval's reverse
        variance and steps per network call; a continuous schedule (the VP SDE, EDM's) has none."""
        steps = self.chain_steps()
        if steps is None:
            raise UserError(f"{self!r} has no likelihood bound: the variational bound needs a discrete chain "
                            f"(config.schedule.name 'linear' or 'cosine')")
        variance, per_call = config.clf_eval.nll_variance, config.clf_eval.nll_steps_per_call

        def bits(denoiser, x0, cond=None, generator=None):
            return bits_per_dim(denoiser, x0, cond=cond, generator=generator, variance=variance,
                                steps_per_call=per_call)
        return LikelihoodBound(bits, {'variance': variance, 'schedule_steps': steps}, variance)

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
