"""The discrete-state framework: diffusion as a continuous-time Markov chain on each pixel's S values (Campbell et
al. 2022, "A Continuous Time Framework for Discrete Denoising Models", arXiv 2205.14987).

- Data: pixels are categorical, x in {0..S-1} (``states_of``: an image in [-1, 1] on S evenly spaced levels, 256
  for 8-bit images, 17 for the bundled digits). The Trainer and the samplers' callers keep images in [-1, 1]; the
  framework converts at its edges, so spaces, scorers and PNGs work unchanged.
- Forward process: every pixel independently follows the rate of libs/diffusion/rates.py; x_t ~ P(t)[x_0, :] in
  closed form. t in [min_time, 1].
- Backbone: ``output = 'logits'``, (B, C, H, W, S) logits of p_theta(x_0 | x_t), called with the state scaled to
  [-1, 1] (``network_input``; with the absorbing rate two channels per channel: the value, 0 where masked, and the
  mask) and ``model_time`` = 999 t.
- Reverse rates (Campbell et al.'s eq. 4, per pixel): from state x to y != x,
  R_hat(x, y) = R_t(y, x) sum_{x0} p_theta(x0 | x_t) P(t)[x0, y] / P(t)[x0, x]  (``rates.reverse_rates``).
- Losses (``config.loss.name``):
  ``ct_elbo``: Campbell et al.'s continuous-time ELBO, E_t E_{x ~ q_t} E_{x' ~ r_t(.|x)} [sum_y R_hat(x, y) -
  Z_t(x) log R_hat(x', x)], where x' is x after one forward jump (dimension and value drawn in proportion to the
  forward rates out of x, whose total is Z_t(x)); the second term needs the network at x'. With
  ``one_forward_pass`` the first term is also taken at x' (one network call, as the seed does by default; x' is
  one jump away from a draw of q_t), else the network is called at x and at x'. Plus ``nll_weight`` times the
  direct cross-entropy -log p_theta(x_0 | .) of the same call.
  ``path_kl``: the same bound written with the exact reverse rate given x_0 (the integrand of ``nll_bound`` below):
  one network call at x_t and no jump to draw. On the digits at initialisation its per-sample standard deviation
  is 17 nats per pixel against the CT-ELBO's 690 (one pass) and 836 (two passes), at the same mean up to noise.
  ``nll``: the direct denoising cross-entropy -log p_theta(x_0 | x_t) alone.
  ``masked``: the simplified masked-diffusion loss (Shi et al. 2024; Sahoo et al. 2024), absorbing rate only:
  beta(t) e^-B / (1 - e^-B) times the cross-entropy summed over the masked pixels.
  All are per pixel (divided by C H W), in nats.
- Likelihood (``nll_bound``): -log p(x_0) <= KL(q_1(.|x_0) || prior) + int_{min_time}^1 E_{q_t} sum_y [R_hat -
  R* + R* log(R* / R_hat)] dt + E[-log p_theta(x_0 | x_{min_time})], with R*(x, y) = R_t(y, x) P(t)[x_0, y] /
  P(t)[x_0, x] the exact reverse rate given x_0: the path-space KL of the two chains, one network call per time.
- Prior: the rate's stationary law (``initial_dist`` of the sampler: 'stationary', or the seed's 'uniform' and
  'gaussian'). Samplers: libs/diffusion/samplers/tau_leaping.py. Guidance: classifier-free, on the logits.
"""
import math

import torch
import torch.nn.functional as F

from libs.diffusion.framework import Framework, LikelihoodBound
from libs.diffusion.guidance import classifier_free_guidance
from libs.diffusion.rates import (TINY, AbsorbingRate, build_rate, draw_categorical, exact_reverse_rates,
                                  forward_rates, jump_once, reverse_rates, rows_of)
from libs.errors import UserError

LOSSES = ('ct_elbo', 'path_kl', 'nll', 'masked')
MODEL_TIME_SCALE = 999.0


def states_of(x: torch.Tensor, num_states: int) -> torch.Tensor:
    """Images in [-1, 1] -> int64 states 0..S-1 (the nearest of S evenly spaced levels)."""
    return torch.round((x.float().clamp(-1, 1) + 1) * (num_states - 1) / 2).long()


def values_of(states: torch.Tensor, num_states: int) -> torch.Tensor:
    """int64 states 0..S-1 -> float32 values in [-1, 1]."""
    return states.float() * (2.0 / (num_states - 1)) - 1.0


def _uniform(shape, generator, device):
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)


class CTMCDenoiser:
    """The backbone as p_theta(x_0 | x_t): ``logits(x, t, **cond)`` takes int64 states (B, C, H, W) and t ((B,) or a
    number) and returns (B, C, H, W, S) float32 logits."""

    def __init__(self, nnet, framework: 'CTMCFramework'):
        self.nnet = nnet
        self.framework = framework

    def logits(self, x, t, **cond):
        if not torch.is_tensor(t) or t.ndim == 0:
            t = torch.full((x.shape[0],), float(t), device=x.device)
        out = self.nnet(self.framework.network_input(x, t), self.framework.model_time(t), **cond)
        return out.float()


class CTMCFramework(Framework):
    """Discrete-state diffusion in continuous time; see the module docstring."""

    name = 'ctmc'

    def __init__(self, rate, loss: str = 'ct_elbo', min_time: float = 0.01, nll_weight: float = 0.0,
                 one_forward_pass: bool = True, eps_ratio: float = 1e-9):
        if loss not in LOSSES:
            raise UserError(f"unknown config.loss.name {loss!r}; known: {', '.join(LOSSES)}")
        if loss == 'masked' and not isinstance(rate, AbsorbingRate):
            raise UserError(f"config.loss.name='masked' is the absorbing rate's loss; config.ctmc.rate is "
                            f"{rate.name!r} (use 'ct_elbo' or 'nll', or rate 'absorbing')")
        if not 0.0 < min_time < 1.0:
            raise UserError(f'config.loss.min_time must lie in (0, 1), got {min_time}')
        if nll_weight < 0:
            raise UserError(f'config.loss.nll_weight must be >= 0, got {nll_weight}')
        self.rate = rate
        self.num_states = rate.num_states
        self.loss_name = loss
        self.min_time = float(min_time)
        self.nll_weight = float(nll_weight)
        self.one_forward_pass = bool(one_forward_pass)
        self.eps_ratio = float(eps_ratio)
        self.masked = isinstance(rate, AbsorbingRate)

    @classmethod
    def from_config(cls, config) -> 'CTMCFramework':
        """``config.ctmc`` (the rate and S) and ``config.loss`` (the seed's names)."""
        cfg = config.loss
        return cls(build_rate(config.ctmc, config.ctmc.num_states), cfg.name, float(cfg.min_time),
                   float(cfg.nll_weight), bool(cfg.one_forward_pass), float(cfg.eps_ratio))

    def __repr__(self):
        return f'CTMCFramework({self.rate!r}, loss={self.loss_name!r}, min_time={self.min_time:g})'

    @property
    def samplers(self):
        from libs.diffusion.samplers.tau_leaping import CTMC_SAMPLERS
        return CTMC_SAMPLERS

    # --- the backbone ---------------------------------------------------------------------------------------------

    def check_backbone(self, nnet) -> None:
        from libs.nets.protocol import OUTPUT_LOGITS, backbone_output
        output = backbone_output(nnet)
        if output != OUTPUT_LOGITS:
            raise UserError(f'the discrete-state framework needs a backbone with logits over the pixel values '
                            f"(output {OUTPUT_LOGITS!r}: config.nnet.num_states = {self.num_states}); "
                            f'{type(nnet).__name__} declares {output!r}')
        if nnet.num_states != self.num_states:
            raise UserError(f'config.nnet.num_states={nnet.num_states} but config.ctmc.num_states='
                            f'{self.num_states}: the logits must cover the pixel values')
        channels, out_channels = nnet.input_shape[0], nnet.out_chans
        expected = 2 * out_channels if self.masked else out_channels
        if channels != expected:
            how = ('the absorbing rate feeds the value and the mask of each channel' if self.masked
                   else 'input and output channels must agree')
            raise UserError(f'config.nnet has {channels} input channels for {out_channels} output channels; '
                            f'{how}, so set {expected}')

    def data_shape(self, nnet) -> tuple:
        return (nnet.out_chans,) + tuple(nnet.input_shape[1:])

    def model_time(self, t):
        return MODEL_TIME_SCALE * t

    def network_input(self, x_t, t):
        """int64 states (B, C, H, W) -> float (B, C, H, W) in [-1, 1]; absorbing: (B, 2C, H, W), [value, mask]."""
        if not self.masked:
            return values_of(x_t, self.num_states)
        mask = x_t == self.rate.mask_state
        value = torch.where(mask, torch.zeros((), device=x_t.device), values_of(x_t, self.num_states))
        return torch.cat([value, mask.float()], dim=1)

    def denoiser(self, nnet) -> CTMCDenoiser:
        return CTMCDenoiser(nnet, self)

    def probabilities(self, logits):
        """(B, C, H, W, S) logits -> (B, D, S) float64 probabilities."""
        return torch.softmax(logits.double().flatten(1, -2), dim=-1)

    @staticmethod
    def pixel_nll(logits, x0_states):
        """(B, D) -log p_theta(x_0 | .) of each pixel, in the logits' precision."""
        return F.cross_entropy(logits.flatten(1, -2).transpose(1, 2), x0_states.flatten(1), reduction='none')

    # --- training -------------------------------------------------------------------------------------------------

    def sample_time(self, n, device, generator=None):
        return self.min_time + (1.0 - self.min_time) * _uniform((n,), generator, device)

    def noised(self, x0_states, t, generator=None):
        """x_t ~ P(t)[x_0, :] for int64 states (B, C, H, W) and times (B,)."""
        rows = rows_of(self.rate.transition(t.double()), x0_states.flatten(1))
        drawn = draw_categorical(rows, _uniform(rows.shape[:-1], generator, rows.device))
        return drawn.view_as(x0_states)

    def one_jump(self, x_t, t, generator=None):
        """(x', total): x_t after one forward jump, its pixel and value drawn in proportion to the rates out of
        x_t, and Z_t(x_t) (B,), the total of those rates. A state with Z = 0 stays."""
        x = x_t.flatten(1)
        out = forward_rates(self.rate, x, t)                               # (B, D, K)
        u = _uniform((x.shape[0], 2), generator, x.device)
        return jump_once(x, out, u[:, 0], u[:, 1]).view_as(x_t), out.sum((1, 2))

    def corrupt(self, x0, generator=None):
        """(t, aux, x_net): x_net is the state the network is called at (x_t, or the jumped x' of a one-pass
        CT-ELBO); aux holds the draws the loss needs ({'x0', 'x_t', 'jumped', 'total'})."""
        x0_states = states_of(x0, self.num_states)
        t = self.sample_time(x0.shape[0], x0.device, generator)
        x_t = self.noised(x0_states, t, generator)
        aux = {'x0': x0_states, 'x_t': x_t}
        if self.loss_name != 'ct_elbo':
            return t, aux, x_t  # the other losses need no jump
        aux['jumped'], aux['total'] = self.one_jump(x_t, t, generator)
        return t, aux, aux['jumped'] if self.one_forward_pass else x_t

    def loss(self, nnet, x0, cond=None, generator=None):
        """(B,) float32: the configured loss; a two-pass CT-ELBO calls the network at x_t and at x'."""
        t, aux, x_net = self.corrupt(x0, generator)
        output = nnet(self.network_input(x_net, t), self.model_time(t), **(cond or {}))
        if self.loss_name == 'ct_elbo' and not self.one_forward_pass:
            jumped = nnet(self.network_input(aux['jumped'], t), self.model_time(t), **(cond or {}))
            return self.ct_elbo(jumped, aux, t, logits_at_x=output) + self.nll_weight * self.cross_entropy(output, aux)
        return self.loss_of_output(output, x0, aux, x_net, t)

    def cross_entropy(self, logits, aux):
        """(B,) mean over pixels of -log p_theta(x_0 | .)."""
        return self.pixel_nll(logits.float(), aux['x0']).mean(1)

    def loss_of_output(self, output, x0, noise, x_t, t):
        aux = noise
        if self.loss_name == 'nll':
            return self.cross_entropy(output, aux)
        if self.loss_name == 'masked':
            return self.masked_loss(output, aux, t)
        if self.loss_name == 'path_kl':
            return self.path_kl(output, aux, t) + self.nll_weight * self.cross_entropy(output, aux)
        if not self.one_forward_pass:
            raise UserError('a two-pass CT-ELBO (config.loss.one_forward_pass=False) calls the network twice; '
                            'the hybrid objective makes one call: set config.loss.one_forward_pass=True')
        return self.ct_elbo(output, aux, t) + self.nll_weight * self.cross_entropy(output, aux)

    def ct_elbo(self, logits_jumped, aux, t, logits_at_x=None):
        """(B,) float32 Campbell et al.'s estimator per pixel: (1 - min_time) [sum_y R_hat(x_reg, y) - Z_t(x_t) log
        R_hat(x', x_t) + c(x_t)], the second term from the call at x', the first from the call at x_t
        (``logits_at_x``, two passes) or, in one pass, at x_reg = x' from the same call. The
        constant c = sum_y R*(x_t, y) (log R*(x_t, y) - 1) does not depend on the network; with it the expectation
        is the path-space KL of ``nll_bound`` (exactly so with two passes), so the logged loss reads as nats per
        pixel of the bound rather than a number offset by thousands."""
        x, jumped = aux['x_t'].flatten(1), aux['jumped'].flatten(1)
        transition = self.rate.transition(t.double())
        back = reverse_rates(self.rate, self.probabilities(logits_jumped), jumped, t, self.eps_ratio, transition)
        reg = back if logits_at_x is None else reverse_rates(self.rate, self.probabilities(logits_at_x), x, t,
                                                             self.eps_ratio, transition)
        changed = (x != jumped)                                            # the one pixel that jumped (or none)
        back_rate = (back.gather(-1, x.unsqueeze(-1)).squeeze(-1) * changed).sum(-1)
        moved = changed.any(-1)
        log_back = torch.where(moved, torch.log(back_rate.clamp_min(TINY)), torch.zeros_like(back_rate))
        exact = exact_reverse_rates(self.rate, aux['x0'].flatten(1), x, t, transition)
        constant = torch.where(exact > 0, exact * (torch.log(exact.clamp_min(TINY)) - 1.0), torch.zeros(()))
        elbo = reg.sum((1, 2)) - aux['total'] * log_back + constant.sum((1, 2))
        return ((1.0 - self.min_time) * elbo / x.shape[1]).float()

    def path_kl(self, logits, aux, t):
        """(B,) float32 (1 - min_time) sum_y [R_hat - R* + R* log(R* / R_hat)](x_t, y) per pixel."""
        return ((1.0 - self.min_time) * self.kl_integrand(logits, aux['x0'], aux['x_t'], t)
                / aux['x_t'][0].numel()).float()

    def kl_integrand(self, logits, x0_states, x_t, t):
        """(B,) float64 the path-space KL's integrand at (x_t, t) for clean states x0, summed over pixels."""
        x = x_t.flatten(1)
        transition = self.rate.transition(t.double())
        model = reverse_rates(self.rate, self.probabilities(logits), x, t, self.eps_ratio, transition)
        exact = exact_reverse_rates(self.rate, x0_states.flatten(1), x, t, transition)
        log_ratio = torch.log(exact.clamp_min(TINY)) - torch.log(model.clamp_min(TINY))
        return (model - exact + torch.where(exact > 0, exact * log_ratio, torch.zeros_like(exact))).sum((1, 2))

    def masked_loss(self, logits, aux, t):
        """(B,) float32: (1 - min_time) beta(t) e^-B / (1 - e^-B) x the cross-entropy summed over masked pixels, per
        pixel; for the absorbing rate this is ``path_kl`` written out (the tests check it)."""
        kept = self.rate.kept(t.double())
        masked_fraction = -torch.expm1(-self.rate.profile.integral(t))  # 1 - e^-B
        weight = (1.0 - self.min_time) * self.rate.profile.beta(t) * kept / masked_fraction
        masked = (aux['x_t'] == self.rate.mask_state).flatten(1)
        nll = self.pixel_nll(logits.float(), aux['x0'])
        return (weight.float() * (nll * masked).sum(1) / masked.shape[1]).float()

    # --- likelihood -----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def nll_bound(self, denoiser, x0, cond=None, generator=None, time_samples: int = 8) -> torch.Tensor:
        """(B,) float64 bits per pixel of the bound in the module docstring: the time integral by stratified
        Monte Carlo with ``time_samples`` times per image."""
        states = states_of(x0, self.num_states)
        x0_flat = states.flatten(1)
        B, D = x0_flat.shape
        device = x0.device
        # prior: KL(q_1(. | x_0) || stationary), per pixel, summed
        one = torch.ones(B, dtype=torch.float64, device=device)
        q1 = rows_of(self.rate.transition(one), x0_flat)
        prior = self.rate.stationary.to(device)
        kl_prior = (q1 * (torch.log(q1.clamp_min(TINY)) - torch.log(prior.clamp_min(TINY)))).sum((1, 2))
        integral = torch.zeros(B, dtype=torch.float64, device=device)
        for k in range(time_samples):
            u = (k + _uniform((B,), generator, device)) / time_samples
            t = self.min_time + (1.0 - self.min_time) * u
            x = self.noised(states, t, generator)
            logits = denoiser.logits(x, t, **(cond or {}))
            integral += (1.0 - self.min_time) * self.kl_integrand(logits, states, x, t) / time_samples
        t_min = torch.full((B,), self.min_time, dtype=torch.float64, device=device)
        x_min = self.noised(states, t_min, generator)
        decoder = self.pixel_nll(denoiser.logits(x_min, t_min, **(cond or {})).double(), states).sum(1)
        return (kl_prior + integral + decoder) / (D * math.log(2.0))

    def likelihood_bound(self, config) -> LikelihoodBound:
        """``nll_bound`` with config.ctmc.nll_time_samples times per image."""
        samples = int(config.ctmc.nll_time_samples)

        def bits(denoiser, x0, cond=None, generator=None):
            return self.nll_bound(denoiser, x0, cond=cond, generator=generator, time_samples=samples)
        return LikelihoodBound(bits, {'framework': repr(self), 'time_samples': samples}, 'ctmc')

    # --- sampling -------------------------------------------------------------------------------------------------

    def prior(self, shape, noise, initial_dist: str = 'stationary'):
        """(B, *shape) int64 states from the initial law (``initial_dist``: 'stationary', 'uniform', 'gaussian')."""
        law = self.initial_law(initial_dist)
        u = noise.rand(tuple(shape), dtype=torch.float64)
        return draw_categorical(law.to(u.device).expand(*u.shape, -1), u)

    def initial_law(self, initial_dist: str) -> torch.Tensor:
        if initial_dist == 'stationary':
            return self.rate.stationary
        if initial_dist == 'uniform':
            if self.masked:
                raise UserError("sample.initial_dist='uniform' does not fit the absorbing rate, which starts "
                                "from the mask: use 'stationary'")
            return torch.full((self.num_states,), 1.0 / self.num_states, dtype=torch.float64)
        if initial_dist == 'gaussian':
            if self.rate.name != 'gaussian':
                raise UserError(f"sample.initial_dist='gaussian' is the Gaussian-target rate's law; this rate is "
                                f"{self.rate.name!r}: use 'stationary' or 'uniform'")
            return self.rate.stationary
        raise UserError(f"unknown sample.initial_dist {initial_dist!r}; known: stationary, uniform, gaussian")

    def guided(self, denoiser, cond: dict, null_cond: dict = None, scale: float = 0.0):
        """logits_fn(x, t): conditional logits; with scale > 0, l_c + scale (l_c - l_u) (one batched call)."""
        return classifier_free_guidance(denoiser.logits, cond, null_cond, scale)

    def build_sampler(self, sample_cfg):
        from libs.diffusion.samplers.tau_leaping import build_ctmc_sampler
        return build_ctmc_sampler(sample_cfg, self)

    def sampler_step(self, denoiser, x, cond: dict):
        """One whole tau-leaping step at t = 1/2 on the states of images ``x`` (logits, reverse rates, Poisson jumps)
        and the final argmax: two network evaluations."""
        from libs.diffusion.samplers.tau_leaping import tau_leaping
        states = states_of(x, self.num_states)

        def step():
            tau_leaping(lambda s, t: denoiser.logits(s, t, **cond), self, states, [0.5, 0.49], ordinal=not self.masked)
        return step, 2

    def sample(self, denoiser, sampler, shape, cond: dict, random, null_cond: dict = None, scale: float = 0.0):
        """Samples as images in [-1, 1] (B, *shape) from the sampler's initial law."""
        x_T = self.prior(shape, random, sampler.initial_dist)
        states = sampler(self.guided(denoiser, cond, null_cond, scale), x_T, noise=random)
        return values_of(states, self.num_states)

