"""The posterior of a discrete DDPM step, written once for the ancestral sampler and the variational bound.

For an N-step chain with abar_n = prod_{i<=n} (1 - beta_i) (abar_0 = 1), a step from n down to an earlier point p
of the (possibly respaced) chain has alpha = abar_n / abar_p and beta = 1 - alpha. The true posterior is

    q(x_p | x_n, x_0) = N(x0_coef x_0 + sqrt(alpha) (1 - abar_p) / (1 - abar_n) x_n, posterior_variance I)
    x0_coef = sqrt(abar_p) beta / (1 - abar_n),
    posterior_variance = (1 - abar_p) beta / (1 - abar_n)     (beta-tilde of Ho et al. 2020).

The reverse model replaces x_0 by the network's prediction and uses a fixed variance: ``'beta'`` or
``'beta_tilde'`` (the posterior's), the two choices of Ho et al. 2020, or a learned one (Nichol & Dhariwal 2021,
"Improved DDPM", eq. 15; DiT's): the network's variance output v in [-1, 1] interpolates in log between the two,
log sigma^2 = frac log beta + (1 - frac) log beta_tilde with frac = (v + 1) / 2 (``learned_log_variance``). At the
chain's first step beta_tilde_1 = 0, so its log is clipped to that of the next step, as they do.

Also here, for the variational bound's terms (the learned variance's loss and libs/diffusion/vlb.py): the
Gaussian KL (``normal_kl``) and the discretised Gaussian decoder of 8-bit data
(``discretized_gaussian_log_likelihood``).
"""
import math
from typing import NamedTuple

import torch

from libs.errors import UserError

VARIANCES = ('beta', 'beta_tilde')


class PosteriorStep(NamedTuple):
    """The constants of one step from abar_n to abar_p, as Python floats."""
    alpha: float
    beta: float
    x0_coef: float
    posterior_variance: float

    def variance(self, kind: str) -> float:
        """The reverse step's variance: ``'beta'`` or ``'beta_tilde'`` (= posterior_variance)."""
        if kind not in VARIANCES:
            raise UserError(f'unknown reverse variance {kind!r}; known: {", ".join(VARIANCES)}')
        return self.beta if kind == 'beta' else self.posterior_variance

    @property
    def xt_coef(self) -> float:
        """The posterior mean's coefficient of x_n: sqrt(alpha) (1 - abar_p) / (1 - abar_n)."""
        return math.sqrt(self.alpha) * self.posterior_variance / self.beta


def posterior_step(abar_n: float, abar_p: float, beta: float = None) -> PosteriorStep:
    """The step from abar_n to abar_p; ``beta``: the chain's own beta_n for a step of one (the schedule's value,
    equal to 1 - abar_n / abar_p up to rounding), else derived."""
    alpha = abar_n / abar_p
    beta = 1.0 - alpha if beta is None else float(beta)
    return PosteriorStep(alpha=alpha, beta=beta, x0_coef=math.sqrt(abar_p) * beta / (1.0 - abar_n),
                         posterior_variance=(1.0 - abar_p) * beta / (1.0 - abar_n))


def learned_log_variance(v, log_beta, log_beta_tilde):
    """log sigma^2 = frac log beta + (1 - frac) log beta_tilde, frac = (v + 1) / 2, elementwise (Nichol & Dhariwal
    2021, eq. 15); v: the network's variance output (a tensor), log_beta / log_beta_tilde: numbers or tensors
    broadcasting against it (beta_tilde > 0: the caller clips it at the chain's first step)."""
    frac = (v + 1.0) / 2.0
    return frac * log_beta + (1.0 - frac) * log_beta_tilde


def normal_kl(mean1, log_var1, mean2, log_var2):
    """KL(N(mean1, e^log_var1) || N(mean2, e^log_var2)) elementwise, in nats; arguments broadcast."""
    return 0.5 * (log_var2 - log_var1 + torch.exp(log_var1 - log_var2)
                  + (mean1 - mean2).square() * torch.exp(-log_var2) - 1.0)


BIN_HALF_WIDTH = 1.0 / 255.0


def _log_prob_in_bin(lower, upper):
    """log(Phi(upper) - Phi(lower)) for lower < upper, accurate in both tails."""
    flip = lower > 0  # both in the upper tail: use Phi(-lower) - Phi(-upper) instead
    hi = torch.where(flip, -lower, upper)
    lo = torch.where(flip, -upper, lower)
    log_hi = torch.special.log_ndtr(hi)
    return log_hi + torch.log(-torch.expm1(torch.special.log_ndtr(lo) - log_hi))


def discretized_gaussian_log_likelihood(x0, mean, std):
    """log P(bin of x0) per element under N(mean, std^2), for x0 in [-1, 1] on 256 levels; edge bins open.

    All of x0, mean, std broadcast; computed in float64 (differentiable in mean and std). Values off the grid
    score the bin of the nearest level, values beyond [-1, 1] the open edge bins.
    """
    x0, mean = x0.double(), mean.double()
    std = std.double() if torch.is_tensor(std) else torch.as_tensor(std, dtype=torch.float64, device=x0.device)
    level = torch.round((x0 + 1.0) * 127.5).clamp(0, 255)
    centre = level / 127.5 - 1.0
    lower = (centre - BIN_HALF_WIDTH - mean) / std
    upper = (centre + BIN_HALF_WIDTH - mean) / std
    inner = _log_prob_in_bin(lower, upper)
    return torch.where(level == 0, torch.special.log_ndtr(upper),
                       torch.where(level == 255, torch.special.log_ndtr(-lower), inner))
