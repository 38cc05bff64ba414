"""The posterior of a discrete DDPM step, written once for the ancestral sampler and the variational bound.

For an N-step chain with abar_n = prod_{i<=n} (1 - beta_i) (abar_0 = 1), a step from n down to an earlier point p
of the (possibly respaced) chain has alpha = abar_n / abar_p and beta = 1 - alpha. The true posterior is

    q(x_p | x_n, x_0) = N(x0_coef x_0 + sqrt(alpha) (1 - abar_p) / (1 - abar_n) x_n, posterior_variance I)
    x0_coef = sqrt(abar_p) beta / (1 - abar_n),
    posterior_variance = (1 - abar_p) beta / (1 - abar_n)     (beta-tilde of Ho et al. 2020).

The reverse model replaces x_0 by the network's prediction and uses a fixed variance: ``'beta'`` or
``'beta_tilde'`` (the posterior's), the two choices of Ho et al. 2020.
"""
import math
from typing import NamedTuple

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


def posterior_step(abar_n: float, abar_p: float, beta: float = None) -> PosteriorStep:
    """The step from abar_n to abar_p; ``beta``: the chain's own beta_n for a step of one (the schedule's value,
    equal to 1 - abar_n / abar_p up to rounding), else derived."""
    alpha = abar_n / abar_p
    beta = 1.0 - alpha if beta is None else float(beta)
    return PosteriorStep(alpha=alpha, beta=beta, x0_coef=math.sqrt(abar_p) * beta / (1.0 - abar_n),
                         posterior_variance=(1.0 - abar_p) * beta / (1.0 - abar_n))
