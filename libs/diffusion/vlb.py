"""Negative log-likelihood in bits per dimension from the variational bound of a discrete DDPM: the Gaussian
framework's ``likelihood_bound`` (eval.py --eval=nll, the OOD px score) on a discrete schedule.

For an N-step ``DiscreteSchedule`` with betas beta_1..beta_N, alpha_n = 1 - beta_n and abar_n = prod_{i<=n} alpha_i
(abar_0 = 1), the forward process is q(x_n | x_0) = N(sqrt(abar_n) x_0, (1 - abar_n) I), and the bound of
Ho et al. 2020 on -log p(x_0) is the sum of exactly these terms, in nats per image (summed over all D
dimensions of a sample):

- ``prior``   L_T     = KL(q(x_N | x_0) || N(0, I)), in closed form;
- ``kl``      L_{n-1} = KL(q(x_{n-1} | x_n, x_0) || p(x_{n-1} | x_n)) for n = 2..N, each at one draw
  x_n ~ q(x_n | x_0) (an unbiased one-sample estimate of its expectation); column j holds n = j + 2;
- ``decoder`` L_0     = -log p(x_0 | x_1), the discretised Gaussian decoder, at one draw x_1 ~ q(x_1 | x_0);
- ``total``   = prior + sum(kl) + decoder.

The reverse step (libs/diffusion/ddpm.py) is p(x_{n-1} | x_n) = N(mu(x_n, x0_hat), v_n I): mu is the mean of the true
posterior q(x_{n-1} | x_n, x_0) with x_0 replaced by the denoiser's data prediction
x0_hat = ``denoiser.data(x_n, n / N)`` (for a noise-predicting network this is the usual eps parametrisation), so
KL = 1/2 sum_d [log(v_n / bt_n) + bt_n / v_n - 1 + c_n^2 (x_0 - x0_hat)^2 / v_n] with
c_n = sqrt(abar_{n-1}) beta_n / (1 - abar_n) and the posterior variance bt_n = (1 - abar_{n-1}) beta_n / (1 - abar_n).
The model variance v_n is ``variance='beta_tilde'`` (v_n = bt_n, the last two terms cancel) or ``'beta'``
(v_n = beta_n). Both are the fixed choices of Ho et al. 2020.

The decoder is N(x0_hat(x_1, 1 / N), s^2) integrated over the pixel bin of x_0: data in [-1, 1] on 256 levels,
bin width 2 / 255, the first and last bins extended to -inf and +inf (as in Ho et al. 2020). Since bt_1 = 0,
its variance s^2 is bt_2 for ``'beta_tilde'`` (the smallest positive posterior variance) and beta_1 for ``'beta'``.
x_0 should lie on the 256-level grid (images read from uint8 do); the decoder scores the bin containing x_0.
Because the decoder gives probabilities of 8-bit values, ``bits_per_dim`` = total / (D ln 2) is directly
comparable with the bits/dim reported for 8-bit image models.
"""
import math

import torch

from libs.errors import UserError
from libs.diffusion.ddpm import VARIANCES, discretized_gaussian_log_likelihood, posterior_step
from libs.diffusion.schedules import DiscreteSchedule


def _check(denoiser, x0, variance):
    if not isinstance(denoiser.schedule, DiscreteSchedule):
        raise UserError(f'the variational bound needs a DiscreteSchedule, the denoiser has {denoiser.schedule!r}')
    if variance not in VARIANCES:
        raise UserError(f'unknown reverse variance {variance!r}; known: {", ".join(VARIANCES)}')
    if not torch.is_tensor(x0) or not x0.is_floating_point() or x0.ndim < 2 or x0.shape[0] == 0:
        raise UserError('x0 must be a floating tensor (B, ...) with B >= 1')
    if bool((x0.abs() > 1.0 + 1e-6).any()):
        raise UserError('x0 must lie in [-1, 1] (the discretised decoder scores 256 levels in that range)')


def _repeat_cond(cond: dict, batch: int, times: int) -> dict:
    """Repeat tensors with a leading batch dimension ``times`` times along it (one copy per stacked step)."""
    if times == 1:
        return cond
    return {k: torch.cat([v] * times) if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == batch else v
            for k, v in cond.items()}


@torch.no_grad()
def vlb_terms(denoiser, x0, cond: dict = None, generator: torch.Generator = None, variance: str = 'beta_tilde',
              per_step: bool = True, steps_per_call: int = 1) -> dict:
    """The terms of the DDPM variational bound for each image of x0, in nats per image (see the module docstring).

    denoiser: a ``Denoiser`` over a ``DiscreteSchedule``; x0: ``(B, ...)`` data in [-1, 1] on the 256-level grid;
    cond: keyword arguments for the network (e.g. ``{'y': labels}``); generator: draws the noise, one ``x0``-shaped
    tensor per step n = 1..N in that order (so results do not depend on ``steps_per_call``).
    Returns float64 ``prior (B,)``, ``decoder (B,)``, ``kl (B, N - 1)`` (or ``(B,)``, summed, if not
    ``per_step``) and ``total (B,)``. ``steps_per_call`` steps are stacked into one network call of batch
    ``B * steps_per_call``.
    """
    _check(denoiser, x0, variance)
    cond = dict(cond or {})
    schedule = denoiser.schedule
    betas = schedule.betas.tolist()
    abar = [1.0] + schedule.alphas_cumprod.tolist()  # abar[n], n = 0..N
    big_n, batch, dims = schedule.num_steps, x0.shape[0], x0[0].numel()
    time_dtype = torch.float64 if x0.dtype == torch.float64 else torch.float32
    x0_64 = x0.double()

    prior = 0.5 * (abar[big_n] * x0_64.square() - abar[big_n] - math.log1p(-abar[big_n])).flatten(1).sum(1)
    kl = torch.zeros(batch, big_n - 1, dtype=torch.float64, device=x0.device)
    decoder = None
    steps_per_call = max(1, int(steps_per_call))
    for first in range(1, big_n + 1, steps_per_call):
        steps = list(range(first, min(first + steps_per_call, big_n + 1)))
        noise = [torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype) for _ in steps]
        x_n = torch.cat([math.sqrt(abar[n]) * x0 + math.sqrt(1.0 - abar[n]) * e for n, e in zip(steps, noise)])
        t = torch.cat([torch.full((batch,), n / big_n, dtype=time_dtype, device=x0.device) for n in steps])
        x0_hat = denoiser.data(x_n, t, **_repeat_cond(cond, batch, len(steps))).double()
        for n, pred in zip(steps, x0_hat.split(batch)):
            if n == 1:
                var = betas[0] if variance == 'beta' else posterior_step(abar[2], abar[1], betas[1]).posterior_variance
                decoder = -discretized_gaussian_log_likelihood(x0_64, pred, math.sqrt(var)).flatten(1).sum(1)
                continue
            step = posterior_step(abar[n], abar[n - 1], betas[n - 1])
            var = step.variance(variance)
            const = 0.5 * dims * (math.log(var / step.posterior_variance) + step.posterior_variance / var - 1.0)
            kl[:, n - 2] = const + 0.5 * step.x0_coef ** 2 / var * (x0_64 - pred).square().flatten(1).sum(1)
    total = prior + kl.sum(1) + decoder
    return {'prior': prior, 'decoder': decoder, 'kl': kl if per_step else kl.sum(1), 'total': total}


def bits_per_dim(denoiser, x0, cond: dict = None, generator: torch.Generator = None, variance: str = 'beta_tilde',
                 steps_per_call: int = 1) -> torch.Tensor:
    """(B,) float64 negative log-likelihood bound in bits per dimension: total / (D ln 2), D = x0[0].numel()."""
    terms = vlb_terms(denoiser, x0, cond=cond, generator=generator, variance=variance, per_step=False,
                      steps_per_call=steps_per_call)
    return terms['total'] / (x0[0].numel() * math.log(2.0))
