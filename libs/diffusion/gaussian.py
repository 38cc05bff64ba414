"""The Gaussian framework: x_t = alpha(t) x_0 + sigma(t) eps with any schedule of libs/diffusion/schedules.py (the
VP SDE, a discrete DDPM / Stable Diffusion schedule placed in continuous time, or SiT's flow-matching paths 'linear'
and 'gvp').

- Corruption: t ~ ``schedule.sample_train_t``, eps ~ N(0, I). Loss: L_simple (Ho et al. 2020), the mean squared
  error of the raw output against the parameterisation's target, one value per sample.
- Parameterisation (``PREDICTIONS``, libs/diffusion/predictions.py): what the backbone's output means, ``'noise'``
  (eps), ``'x0'``, ``'v'`` (v = alpha eps - sigma x_0, Salimans & Ho 2022: like x0 at high noise, like eps at low
  noise; variance-preserving schedules only), ``'velocity'`` (the flow velocity dx_t / dt = alpha' x_0 + sigma' eps,
  flow matching as SiT trains it) or ``'score'`` (-eps / sigma); the ``Denoiser`` turns it into eps, x0 and the
  velocity, and L_simple is the squared error of the output against its own target (the score's is SiT's
  |sigma s + eps|^2), optionally weighted by Min-SNR-gamma (``min_snr_gamma``; eps, x0, v) or by SiT's
  ``loss_weight`` (eps, score: 'velocity' (g^2 / (2 sigma))^2, 'likelihood' g^2 / (2 sigma^2), with g^2 the forward
  SDE's). EDM's preconditioning (c_skip, c_out, c_in, c_noise; VP, VE and EDM variants, F-prediction) is a
  subclass: libs/diffusion/edm.py.
- Learned variance (``learned_variance``; DiT, Nichol & Dhariwal 2021): the backbone declares 'image+variance'
  and returns 2C channels, the prediction then the variance output v in [-1, 1] (libs/diffusion/ddpm.py). The loss
  is DiT's hybrid L_simple + vlb_lambda N L_n: L_n is the variational bound's term at the training step n in bits
  per dimension (KL(q(x_{n-1} | x_n, x_0) || p(x_{n-1} | x_n)), at n = 1 the discretised decoder's NLL), computed
  with the prediction detached so that it trains only the variance. DiT's code adds it unweighted (loss type MSE)
  with N = 1000: vlb_lambda = 0.001 is that loss, and the lambda of Nichol & Dhariwal for one term of the sum over
  N steps. Needs a discrete schedule. Samplers see the eps half; ``ddpm_ancestral_learned`` the variance too.
  ``drop_variance`` takes the same 2C head and drops the variance half (SiT's release).
- Time: the backbone sees ``schedule.model_time(t)`` (999 t for the VP SDE, as the released checkpoints expect).
- Prior: N(0, I). Samplers: libs/diffusion/samplers (DPM-Solver, UniPC, Heun, Euler-Maruyama and DDPM ancestral
  over the noise prediction; SiT's ODE and SDE over the velocity). Guidance: classifier-free, in what the sampler
  consumes (libs/diffusion/guidance.py), optionally of the first ``sample.guided_channels`` channels only (DiT's
  convention) and only at noise levels inside ``sample.guidance_interval`` (Kynkaanniemi et al. 2024).
"""
import math

import torch

from libs.diffusion.ddpm import (discretized_gaussian_log_likelihood, learned_log_variance, normal_kl,
                                 posterior_step)
from libs.diffusion.framework import Framework, LikelihoodBound
from libs.diffusion.guidance import GuidanceInterval, classifier_free_guidance
from libs.diffusion.predictions import (NOISE_LIKE, PREDICTIONS, broadcast_rates, broadcast_scales, convert_at,
                                        convert_prediction)
from libs.diffusion.samplers import NOISE, NOISE_AND_VARIANCE, SAMPLERS, VELOCITY, build_sampler
from libs.diffusion.schedules import DiscreteSchedule, build_schedule
from libs.diffusion.vlb import bits_per_dim
from libs.errors import UserError
from libs.rng import generator_noise

# config.pred -> the Denoiser's prediction type: the release's names, then the flow velocity dx_t / dt and the score
# (SiT's names; 'velocity' is not Salimans' 'v_pred').
CONFIG_PREDICTIONS = {'noise_pred': 'noise', 'x0_pred': 'x0', 'v_pred': 'v', 'velocity': 'velocity', 'score': 'score'}

# SiT's loss weightings (config.loss_weight; '' is its None) of the noise and score losses.
LOSS_WEIGHTS = ('', 'velocity', 'likelihood')

__all__ = ['CONFIG_PREDICTIONS', 'LOSS_WEIGHTS', 'PREDICTIONS', 'Denoiser', 'GaussianFramework', 'broadcast_rates',
           'broadcast_scales', 'convert_prediction', 'noised', 'squared_error']


class Denoiser:
    """Wraps ``nnet`` (its output is eps, x0, Salimans' v, the flow velocity or the score: ``prediction``, see
    libs/diffusion/predictions.py) with ``schedule``.

    The backbone ``nnet(x, model_time, **cond)`` knows nothing about schedules; this wrapper converts t to what the
    network is called with (``schedule.model_time(t)``) and its output to every prediction: ``noise``, ``data``
    (x0) and ``velocity`` (dx_t / dt).
    x: (B, ...) noisy inputs; t: (B,) tensor or a number (the same time for the whole batch).
    Outputs are at least float32 (a half-precision output under autocast is cast up; float64 stays float64).
    With ``learned_variance`` the network returns 2C channels: ``noise`` and ``data`` read the first C (the
    prediction), ``variance`` the last C (v in [-1, 1]) and ``noise_and_variance`` both from one call. With
    ``drop_variance`` it returns 2C channels too and the last C are not used (SiT's release keeps DiT's head so).
    """

    def __init__(self, nnet, schedule, prediction='noise', learned_variance=False, drop_variance=False):
        if prediction not in PREDICTIONS:
            raise UserError(f'unknown prediction type {prediction!r}; known: {", ".join(PREDICTIONS)}')
        self.nnet = nnet
        self.schedule = schedule
        self.prediction = prediction
        self.learned_variance = bool(learned_variance)
        self.drop_variance = bool(drop_variance)

    def _times(self, x, t):
        if not torch.is_tensor(t) or t.ndim == 0:
            dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
            return torch.full((x.shape[0],), float(t), dtype=dtype, device=x.device)
        return t

    def output(self, x, t, **cond):
        """The raw network output (the ``prediction``; then the variance output with ``learned_variance`` or
        ``drop_variance``), cast to at least float32."""
        t = self._times(x, t)
        out = self.nnet(x, self.schedule.model_time(t), **cond)
        return out.to(torch.promote_types(out.dtype, torch.float32))

    def noise(self, x, t, **cond):
        """eps prediction, same shape as x."""
        return self._predict('noise', x, t, cond)

    def data(self, x, t, **cond):
        """x0 prediction, same shape as x."""
        return self._predict('x0', x, t, cond)

    def velocity(self, x, t, **cond):
        """The flow velocity dx_t / dt = alpha' x0 + sigma' eps, same shape as x."""
        return self._predict('velocity', x, t, cond)

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
        """(prediction, learned variance output or None) of a raw output."""
        if not (self.learned_variance or self.drop_variance):
            return out, None
        prediction, variance = out.chunk(2, dim=1)
        return prediction, (variance if self.learned_variance else None)

    def _convert(self, target, out, x, t):
        return convert_at(self.schedule, self.prediction, target, out, x, t, out.dtype)

    def _predict(self, target, x, t, cond):
        """The ``target`` prediction from the output, with x = alpha x0 + sigma eps."""
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
    ``learned_variance``, DiT's: a variance head trained by the variational bound; with a flow path and the
    velocity, SiT's (the module docstring)."""

    name = 'gaussian'
    samplers = SAMPLERS

    def __init__(self, schedule, prediction: str = 'noise', min_snr_gamma: float = 0.0,
                 learned_variance: bool = False, vlb_lambda: float = 0.001, loss_weight: str = '',
                 drop_variance: bool = False):
        if prediction not in PREDICTIONS:
            raise UserError(f'unknown prediction type {prediction!r}; known: {", ".join(PREDICTIONS)}')
        if prediction == 'v' and not schedule.variance_preserving:
            raise UserError(f"config.pred='v_pred' (Salimans' v = alpha eps - sigma x0) needs a variance-preserving "
                            f"schedule, not {schedule!r}: use config.pred='velocity' (the flow velocity dx_t/dt)")
        if min_snr_gamma < 0:
            raise UserError(f'config.min_snr_gamma must be >= 0 (0: plain L_simple), got {min_snr_gamma}')
        if min_snr_gamma and prediction in ('velocity', 'score'):
            raise UserError(f'config.min_snr_gamma weighs eps, x0 or v prediction, not {prediction!r}: set it to 0')
        if loss_weight not in LOSS_WEIGHTS:
            raise UserError(f'unknown config.loss_weight {loss_weight!r}; known: {", ".join(map(repr, LOSS_WEIGHTS))}')
        if loss_weight and (prediction not in NOISE_LIKE or min_snr_gamma):
            raise UserError(f"config.loss_weight={loss_weight!r} weighs SiT's noise and score losses (config.pred "
                            f"'noise_pred' or 'score', min_snr_gamma 0), got {prediction!r}")
        if learned_variance and not isinstance(schedule, DiscreteSchedule):
            raise UserError(f'config.learned_variance=True needs a discrete schedule (config.schedule.name '
                            f'ddpm_linear, cosine, ...), got {schedule!r}')
        if learned_variance and drop_variance:
            raise UserError('config.learned_variance trains the variance half that config.drop_variance drops: set '
                            'one of them')
        if vlb_lambda < 0:
            raise UserError(f'config.vlb_lambda must be >= 0, got {vlb_lambda}')
        self.schedule = schedule
        self.prediction = prediction
        self.min_snr_gamma = float(min_snr_gamma)
        self.loss_weight = loss_weight
        self.learned_variance = bool(learned_variance)
        self.drop_variance = bool(drop_variance)
        self.vlb_lambda = float(vlb_lambda)
        self._tables = {}
        self._check_training_range()

    @classmethod
    def from_config(cls, config) -> 'GaussianFramework':
        """``config.schedule``, ``config.pred`` ('noise_pred' / 'x0_pred' / 'v_pred' / 'velocity' / 'score'),
        ``min_snr_gamma``, ``loss_weight``, ``learned_variance``, ``drop_variance`` and ``vlb_lambda``."""
        if config.pred not in CONFIG_PREDICTIONS:
            raise UserError(f"config.pred must be one of {', '.join(CONFIG_PREDICTIONS)}, got {config.pred!r}")
        return cls(build_schedule(config.schedule), CONFIG_PREDICTIONS[config.pred],
                   float(config.get('min_snr_gamma', 0.0)), bool(config.get('learned_variance', False)),
                   float(config.get('vlb_lambda', 0.001)), config.get('loss_weight', '') or '',
                   bool(config.get('drop_variance', False)))

    def __repr__(self):
        extra = ''.join([', learned_variance=True' if self.learned_variance else '',
                         ', drop_variance=True' if self.drop_variance else '',
                         f', loss_weight={self.loss_weight!r}' if self.loss_weight else ''])
        return f'GaussianFramework({self.schedule!r}, prediction={self.prediction!r}{extra})'

    def _check_training_range(self) -> None:
        """UserError when the score's target or SiT's loss weight is infinite at an end of the training times."""
        if self.prediction != 'score' and not self.loss_weight:
            return
        ends = torch.tensor(self.schedule.train_range, dtype=torch.float64)
        values = self.schedule.sigma(ends) if not self.loss_weight else 1.0 / self.sit_weight(ends)
        if not bool((values > 0).all()) or not bool(torch.isfinite(values).all()):
            what = f'config.loss_weight={self.loss_weight!r}' if self.loss_weight else 'the score (-eps / sigma)'
            raise UserError(f'{what} is infinite at an end of the training times {self.schedule.train_range} of '
                            f'{self.schedule!r}: set config.schedule.train_eps (SiT: 1e-3) on a flow path')

    def check_backbone(self, nnet) -> None:
        from libs.nets.protocol import OUTPUT_IMAGE, OUTPUT_IMAGE_AND_VARIANCE, backbone_output
        output = backbone_output(nnet)
        two_halves = self.learned_variance or self.drop_variance
        expected = OUTPUT_IMAGE_AND_VARIANCE if two_halves else OUTPUT_IMAGE
        if output == expected:
            return
        name = type(nnet).__name__
        if output == OUTPUT_IMAGE_AND_VARIANCE:
            raise UserError(f"{name} declares 'image+variance' (a learned variance): set config.learned_variance="
                            f"True (DiT) or config.drop_variance=True (SiT), or build it without the variance head "
                            f"(DiT: nnet.learn_sigma=False)")
        if two_halves:
            key = 'learned_variance' if self.learned_variance else 'drop_variance'
            raise UserError(f'config.{key}=True needs a backbone with a variance head '
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
        two_halves = self.learned_variance or self.drop_variance
        prediction, v = output.chunk(2, dim=1) if two_halves else (output, None)
        if self.prediction == 'score':   # SiT's |sigma s + eps|^2: sigma^2 |s - score|^2
            error = squared_error(broadcast_scales(self.schedule, t, x0, prediction.dtype)[1] * prediction, -noise)
        else:
            error = squared_error(prediction, self.target(x0, noise, t))
        if self.min_snr_gamma:
            error = error * self.min_snr_weight(t)
        if self.loss_weight:
            error = error * self.sit_weight(t).float()
        if not self.learned_variance:
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
        x0_hat = convert_at(self.schedule, self.prediction, 'x0', prediction.double(), x_t.double(), t, torch.float64)
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

    def sit_weight(self, t):
        """SiT's loss weight at t, float64: with D = g^2 / 2 of the forward SDE (SiT's drift variance),
        (D / sigma)^2 ('velocity') or D / sigma^2 ('likelihood')."""
        t = t.double()
        drift_variance = 0.5 * self.schedule.sde_coefficients(t)[1]
        sigma = self.schedule.sigma(t)
        if self.loss_weight == 'velocity':
            return (drift_variance / sigma) ** 2
        return drift_variance / sigma ** 2

    def target(self, x0, noise, t):
        """What the output is trained to be: eps, x0, v = alpha(t) eps - sigma(t) x0 or the velocity
        alpha'(t) x0 + sigma'(t) eps (a score's loss is written in ``loss_of_output``)."""
        if self.prediction == 'noise':
            return noise
        if self.prediction == 'x0':
            return x0
        alpha, sigma = broadcast_scales(self.schedule, t, x0, x0.dtype)
        if self.prediction == 'velocity':
            d_alpha, d_sigma = broadcast_rates(self.schedule, t, x0, x0.dtype)
            return d_alpha * x0 + d_sigma * noise
        return alpha * noise - sigma * x0

    def loss(self, nnet, x0, cond=None, generator=None):
        """L_simple (+ the learned variance's term): (B,) float32 per sample, through the ``Denoiser``."""
        t, eps, x_t = self.corrupt(x0, generator)
        output = self.denoiser(nnet).output(x_t, t, **(cond or {}))
        return self.loss_of_output(output, x0, eps, x_t, t)

    def denoiser(self, nnet) -> Denoiser:
        return Denoiser(nnet, self.schedule, self.prediction, self.learned_variance, self.drop_variance)

    def prior(self, shape, noise):
        return noise.randn(tuple(shape))

    def guided(self, denoiser, cond: dict, null_cond: dict = None, scale: float = 0.0, channels: int = 0,
               consumes: str = NOISE, interval=None):
        """The model function a sampler integrates: what it ``consumes`` (``NOISE``: eps; ``VELOCITY``: the flow
        velocity; ``NOISE_AND_VARIANCE``: (B, 2C), eps then the (conditional) learned variance output, and then
        ``channels`` (1..C) must be given, so that the variance is never guided) conditioned on ``cond``; with
        scale > 0, m_c + scale (m_c - m_u) in one batched call, of the first ``channels`` channels only when > 0
        (the rest conditional), and only at noise levels sigma / alpha in ``interval`` = (lo, hi] when given.
        Guidance is affine in the output, so guiding eps or the velocity gives the same update."""
        if consumes == NOISE_AND_VARIANCE and not channels:
            raise ValueError('guidance of eps and variance needs the number of eps channels to guide')
        model_fn = getattr(denoiser, {NOISE: 'noise', NOISE_AND_VARIANCE: 'noise_and_variance',
                                      VELOCITY: 'velocity'}[consumes])
        window = None if interval is None else GuidanceInterval(*interval, level=self.schedule.ve_sigma)
        return classifier_free_guidance(model_fn, cond, null_cond, scale, channels, window)

    def sampling_range(self) -> tuple:
        """(start, end): the times between which the model's velocity is finite. Start: 1, or the schedule's t_max
        for eps and the score, which say nothing of x0 where alpha(1) = 0 (SiT's sample_eps). End: 0 where sigma'(0)
        is finite (the flow paths; not the VP schedules, whose sigma ~ sqrt(t)) and the model is not x0's (eps =
        (x - alpha x0) / sigma), else the schedule's t_min."""
        start = self.schedule.t_max if self.prediction in NOISE_LIKE else 1.0
        finite = bool(torch.isfinite(self.schedule.d_sigma_dt(torch.tensor(0.0, dtype=torch.float64))))
        return start, 0.0 if finite and self.prediction != 'x0' else self.schedule.t_min

    def build_sampler(self, sample_cfg):
        return build_sampler(sample_cfg, self.schedule, self.sampling_range())

    def sample(self, denoiser, sampler, shape, cond: dict, random, null_cond: dict = None, scale: float = 0.0):
        """The interface's ``sample``, with the model function, guided channels and guidance interval the
        sampler declares."""
        channels = getattr(sampler, 'guided_channels', 0)
        if channels > shape[0]:
            raise UserError(f'sample.guided_channels={channels} is more than the {shape[0]} channels of the data')
        consumes = getattr(sampler, 'consumes', NOISE)
        channels = channels or (shape[0] if consumes == NOISE_AND_VARIANCE else 0)
        model_fn = self.guided(denoiser, cond, null_cond, scale, channels, consumes,
                               getattr(sampler, 'guidance_interval', None))
        return sampler(model_fn, self.prior(shape, random), noise=random)

    def chain_steps(self):
        return self.schedule.num_steps if isinstance(self.schedule, DiscreteSchedule) else None

    def likelihood_bound(self, config) -> LikelihoodBound:
        """Ho et al.'s variational bound of the discrete chain (libs/diffusion/vlb.py) with config.clf_eval's reverse
        variance and steps per network call; a continuous schedule (the VP SDE, EDM's) has none."""
        steps = self.chain_steps()
        if steps is None:
            raise UserError(f"{self!r} has no likelihood bound: the variational bound needs a discrete chain "
                            f"(config.schedule.name 'ddpm_linear', 'stable_diffusion' or 'cosine')")
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
