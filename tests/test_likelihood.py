"""The DDPM variational bound on Gaussian data, where the exact denoiser and the exact likelihood of the
discretised data are known in closed form; units, shapes and the discretised decoder."""
import math

import pytest
import torch

from libs.diffusion import vlb
from libs.diffusion.gaussian import Denoiser
from libs.diffusion.schedules import VPSDE, DiscreteSchedule
from libs.errors import UserError
from libs.images import to_uint8

MEAN, STD = 0.1, 0.3  # data x0 ~ N(MEAN, STD^2 I), rounded to the 256 pixel levels
N_STEPS = 100


def assert_close(actual, expected, rtol):
    """Elementwise |actual - expected| <= rtol (|expected| + max |expected|): relative, with an absolute floor that
    scales with the magnitudes compared."""
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * expected.abs().max().item())


def _schedule():
    """A 100-step linear schedule with the same total noise as DDPM's 1000 steps (abar_N ~ 4e-5)."""
    return DiscreteSchedule.linear(N_STEPS, beta_start=1e-3, beta_end=0.2)


def _exact_denoiser(schedule):
    """The exact noise prediction for Gaussian data, sigma_t (x - alpha_t m) / (alpha_t^2 s^2 + sigma_t^2)."""
    def nnet(x, model_time):
        t = model_time / schedule.num_steps
        shape = (-1,) + (1,) * (x.ndim - 1)
        alpha, sigma = schedule.alpha(t).view(shape).to(x.dtype), schedule.sigma(t).view(shape).to(x.dtype)
        return sigma * (x - alpha * MEAN) / (alpha ** 2 * STD ** 2 + sigma ** 2)
    return Denoiser(nnet, schedule)


def _gaussian_data(n, seed, side=2):
    g = torch.Generator().manual_seed(seed)
    x = MEAN + STD * torch.randn(n, 1, side, side, generator=g, dtype=torch.float64)
    return to_uint8(x).double() / 127.5 - 1, g


def _exact_nll(x0, mean=MEAN, std=STD):
    """-log P(x0's pixel bins) under N(mean, std^2) with open edge bins, nats per image."""
    lower = torch.where(x0 < -1 + 1e-9, -math.inf, (x0 - 1 / 255 - mean) / std)
    upper = torch.where(x0 > 1 - 1e-9, math.inf, (x0 + 1 / 255 - mean) / std)
    return -torch.log(torch.special.ndtr(upper) - torch.special.ndtr(lower)).flatten(1).sum(1)


def _joint_gaussian_posterior(abar_n, abar_p):
    """(coefficient of x_0, coefficient of x_n, variance) of q(x_p | x_n, x_0), conditioning the joint Gaussian
    x_p = sqrt(abar_p) x_0 + sqrt(1 - abar_p) e, x_n = sqrt(abar_n / abar_p) x_p + sqrt(1 - abar_n / abar_p) e'."""
    a = math.sqrt(abar_n / abar_p)
    gain = a * (1 - abar_p) / (1 - abar_n)                      # Cov(x_p, x_n) / Var(x_n)
    return math.sqrt(abar_p) - gain * math.sqrt(abar_n), gain, (1 - abar_p) - gain * a * (1 - abar_p)


def _tweedie(x_n, abar_n):
    """E[x_0 | x_n] for x_0 ~ N(MEAN, STD^2): the exact denoiser's data prediction, without the Denoiser."""
    a, sigma2 = math.sqrt(abar_n), 1 - abar_n
    return MEAN + a * STD ** 2 * (x_n - a * MEAN) / (a * a * STD ** 2 + sigma2)


@pytest.mark.parametrize('variance', ['beta_tilde', 'beta'])
def test_terms_are_their_closed_forms_at_the_same_draws(variance):
    # The generator's draws are one x0-shaped tensor per step n = 1..N (the documented order), so every term can be
    # recomputed here: each KL between the joint-Gaussian posterior and the reverse step at the Tweedie x0_hat, the
    # decoder's bin probability at x_1, and the prior in closed form.
    schedule = _schedule()
    x0, g = _gaussian_data(500, seed=0)
    terms = vlb.vlb_terms(_exact_denoiser(schedule), x0, generator=g, variance=variance)
    assert terms['kl'].shape == (500, N_STEPS - 1)
    abar = [1.0] + schedule.alphas_cumprod.tolist()
    betas = schedule.betas.tolist()
    _, g = _gaussian_data(500, seed=0)                          # the same generator state again
    Normal = torch.distributions.Normal
    for n in range(1, N_STEPS + 1):
        x_n = math.sqrt(abar[n]) * x0 + math.sqrt(1 - abar[n]) * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        x0_hat = _tweedie(x_n, abar[n])
        if n == 1:
            std = math.sqrt(betas[0] if variance == 'beta' else _joint_gaussian_posterior(abar[2], abar[1])[2])
            assert_close(terms['decoder'], _exact_nll(x0, x0_hat, std), rtol=1e-7)
            continue
        x0_coef, xt_coef, posterior_var = _joint_gaussian_posterior(abar[n], abar[n - 1])
        model_var = betas[n - 1] if variance == 'beta' else posterior_var
        q = Normal(x0_coef * x0 + xt_coef * x_n, math.sqrt(posterior_var))
        p = Normal(x0_coef * x0_hat + xt_coef * x_n, math.sqrt(model_var))
        kl = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
        assert_close(terms['kl'][:, n - 2], kl, rtol=1e-7)
    q = Normal(math.sqrt(abar[-1]) * x0, math.sqrt(1 - abar[-1]))
    prior = torch.distributions.kl_divergence(q, Normal(0.0, 1.0)).flatten(1).sum(1)
    assert_close(terms['prior'], prior, rtol=1e-10)
    total = terms['prior'] + terms['kl'].sum(1) + terms['decoder']
    assert_close(terms['total'], total, rtol=1e-12)


def test_kl_terms_match_their_expectation_under_the_exact_denoiser():
    # With the exact denoiser x0_hat = m + k (x_n - a m), k = a s^2 / (a^2 s^2 + sigma^2) (a = sqrt(abar_n),
    # sigma^2 = 1 - abar_n), so given x0, E (x0 - x0_hat)^2 = (1 - k a)^2 (x0 - m)^2 + k^2 sigma^2 and, for v_n = bt_n,
    # E[L_{n-1} | x0] = c_n^2 / (2 bt_n) sum_d E (x0 - x0_hat)^2. Only the noise draws differ from that average.
    schedule = _schedule()
    x0, g = _gaussian_data(2000, seed=1)
    kl = vlb.vlb_terms(_exact_denoiser(schedule), x0, generator=g)['kl'].mean(0)
    betas = schedule.betas
    abar = torch.cat([torch.ones(1, dtype=torch.float64), schedule.alphas_cumprod])
    n = torch.arange(2, N_STEPS + 1)
    coef = abar[n - 1].sqrt() * betas[n - 1] / (1 - abar[n])
    posterior_var = (1 - abar[n - 1]) * betas[n - 1] / (1 - abar[n])
    a, sigma2 = abar[n].sqrt(), 1 - abar[n]
    k = a * STD ** 2 / (a ** 2 * STD ** 2 + sigma2)
    spread = (x0 - MEAN).square().flatten(1).sum(1).mean()
    expected = coef ** 2 / (2 * posterior_var) * ((1 - k * a) ** 2 * spread + 4 * k ** 2 * sigma2)
    ratio = kl / expected
    print(f'KL per step / its expectation: {float(ratio.min()):.3f} .. {float(ratio.max()):.3f}; '
          f'sum {float(kl.sum() / expected.sum()):.4f}')  # measured 0.976 .. 1.015, sum 1.005
    assert float(kl.sum()) == pytest.approx(float(expected.sum()), rel=0.02)
    assert bool(((kl / expected - 1).abs() < 0.06).all())


@pytest.mark.parametrize('variance, max_gap_bits', [('beta_tilde', 2.5), ('beta', 0.25)])
def test_bound_is_above_the_exact_nll_of_the_discretised_data(variance, max_gap_bits):
    # E[bound] >= E[-log p_model(x0)] >= E[-log p_data(x0)] (cross-entropy >= entropy). Measured gap with the exact
    # denoiser, bits/dim (2000 images of 8 x 8, 100 steps): beta_tilde 1.65, beta 0.06, each +- 0.004 (with DDPM's
    # 1000 steps: 0.80 and 0.006). The exact NLL itself is 7.30 bits/dim.
    schedule = _schedule()
    x0, g = _gaussian_data(2000, seed=2, side=8)
    total = vlb.vlb_terms(_exact_denoiser(schedule), x0, generator=g, variance=variance)['total']
    gap = (total - _exact_nll(x0)) / (64 * math.log(2))
    stderr = float(gap.std()) / math.sqrt(gap.numel())
    print(f'{variance}: bound - exact NLL = {float(gap.mean()):.4f} +- {stderr:.4f} bits/dim')
    assert float(gap.mean()) > 4 * stderr
    assert float(gap.mean()) < max_gap_bits


def test_bits_per_dim_units_shapes_and_batching():
    schedule = DiscreteSchedule.linear(20, beta_start=1e-2, beta_end=0.5)
    seen = []

    def nnet(x, model_time, y=None):
        seen.append((x.shape[0], None if y is None else y.shape[0]))
        return 0.5 * torch.tanh(x) + 0.01 * y.view(-1, 1, 1, 1)

    denoiser = Denoiser(nnet, schedule)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 256, (3, 3, 4, 4), generator=g).float() / 127.5 - 1
    y = torch.tensor([0, 1, 2])
    terms = vlb.vlb_terms(denoiser, x0, cond={'y': y}, generator=torch.Generator().manual_seed(5))
    assert terms['kl'].shape == (3, 19) and terms['kl'].dtype == torch.float64
    assert all(terms[k].shape == (3,) for k in ('prior', 'decoder', 'total'))
    assert seen == [(3, 3)] * 20

    seen.clear()
    stacked = vlb.vlb_terms(denoiser, x0, cond={'y': y}, generator=torch.Generator().manual_seed(5),
                                   per_step=False, steps_per_call=7)
    assert seen == [(21, 21), (21, 21), (18, 18)]
    assert_close(stacked['kl'], terms['kl'].sum(1), rtol=1e-6)
    assert_close(stacked['total'], terms['total'], rtol=1e-6)

    bpd = vlb.bits_per_dim(denoiser, x0, cond={'y': y}, generator=torch.Generator().manual_seed(5))
    assert bpd.shape == (3,)
    assert_close(bpd, terms['total'] / (48 * math.log(2)), rtol=1e-6)


@pytest.mark.parametrize('mean, std', [(0.3, 0.05), (-0.99, 1e-3), (0.0, 3.0), (1.5, 0.01)])
def test_discretised_decoder_is_a_distribution_over_the_256_levels(mean, std):
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    log_p = vlb.discretized_gaussian_log_likelihood(levels, torch.tensor(mean), std)
    assert bool(torch.isfinite(log_p).all())
    assert float(torch.logsumexp(log_p, 0).exp()) == pytest.approx(1.0, abs=1e-9)



def _log_ndtr_far_tail(z):
    """log Phi(-z) for large z > 0 from the asymptotic series (error ~ 945 / z^10 relative)."""
    series = 1 - 1 / z ** 2 + 3 / z ** 4 - 15 / z ** 6 + 105 / z ** 8
    return -0.5 * z * z - math.log(z) - 0.5 * math.log(2 * math.pi) + math.log(series)


def test_discretised_decoder_far_in_the_tail():
    # 90 and 190 standard deviations from the mean: finite, and equal to the Gaussian tail. The bin of level 128
    # ([0, 2/255]) has log P = log Phi(-z_upper) + log(1 - Phi(-z_lower) / Phi(-z_upper)), the ratio e^-70.
    far = vlb.discretized_gaussian_log_likelihood(torch.tensor([-1.0, 1 / 255], dtype=torch.float64),
                                                         torch.tensor(0.9, dtype=torch.float64), 1e-2)
    assert float(far[0]) == pytest.approx(_log_ndtr_far_tail((0.9 + 1 - 1 / 255) / 1e-2), rel=1e-12)  # edge bin
    assert float(far[1]) == pytest.approx(_log_ndtr_far_tail((0.9 - 2 / 255) / 1e-2), rel=1e-12)


def test_bad_input_raises_user_error():
    schedule = _schedule()
    x0 = torch.zeros(2, 1, 2, 2)
    cases = [
        lambda: vlb.vlb_terms(Denoiser(lambda x, t: x, VPSDE()), x0),
        lambda: vlb.vlb_terms(_exact_denoiser(schedule), x0, variance='learned'),
        lambda: vlb.bits_per_dim(_exact_denoiser(schedule), x0 + 1.5),
        lambda: vlb.bits_per_dim(_exact_denoiser(schedule), torch.zeros(2, 4, dtype=torch.int64)),
    ]
    for case in cases:
        with pytest.raises(UserError) as info:
            case()
        assert '\n' not in str(info.value)


def test_each_framework_answers_for_its_own_likelihood_bound():
    """A discrete Gaussian chain gives the variational bound with config.clf_eval's options, the CTMC its own bound
    with config.ctmc's; a continuous schedule (the VP SDE, EDM's, flow matching's path) says in one line that it has
    none."""
    from libs.config import defaults
    from libs.diffusion.ctmc import CTMCFramework
    from libs.diffusion.edm import EDMFramework, EDMPrecond
    from libs.diffusion.gaussian import GaussianFramework
    from libs.diffusion.rates import build_rate
    from libs.diffusion.schedules import LinearPath
    config = defaults()
    config.clf_eval.update(nll_variance='beta_tilde', nll_steps_per_call=3)
    config.ctmc.nll_time_samples = 2
    x0 = torch.randint(0, 256, (2, 1, 2, 2), generator=torch.Generator().manual_seed(0)).float() / 127.5 - 1
    schedule = _schedule()
    bound = GaussianFramework(schedule).likelihood_bound(config)
    assert bound.settings == {'variance': 'beta_tilde', 'schedule_steps': N_STEPS} and bound.tag == 'beta_tilde'
    assert_close(bound.bits_per_dim(_exact_denoiser(schedule), x0, generator=torch.Generator().manual_seed(1)),
                 vlb.bits_per_dim(_exact_denoiser(schedule), x0, generator=torch.Generator().manual_seed(1),
                                  variance='beta_tilde'), rtol=1e-6)
    ctmc = CTMCFramework(build_rate(config.ctmc, 4), 'nll')
    bound = ctmc.likelihood_bound(config)
    assert bound.settings['time_samples'] == 2 and bound.tag == 'ctmc'

    class Uniform:  # p(x_0 | x_t) uniform over the 4 states
        def logits(self, x, t, **cond):
            return torch.zeros(*x.shape, 4)
    bits = bound.bits_per_dim(Uniform(), x0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(bits, ctmc.nll_bound(Uniform(), x0, generator=torch.Generator().manual_seed(2), time_samples=2))
    assert not torch.equal(bits, ctmc.nll_bound(Uniform(), x0, generator=torch.Generator().manual_seed(2)))  # 8 times
    flow = GaussianFramework(LinearPath(), prediction='velocity')  # SiT's flow matching, in the Gaussian family
    for framework in (GaussianFramework(VPSDE()), EDMFramework(EDMPrecond()), flow):
        with pytest.raises(UserError, match=r'has no likelihood bound: the variational bound needs a discrete chain'
                                            r" \(config.schedule.name 'ddpm_linear', 'stable_diffusion' or "
                                            r"'cosine'\)$"):
            framework.likelihood_bound(config)
        assert framework.chain_steps() is None
    assert GaussianFramework(schedule).chain_steps() == N_STEPS and ctmc.chain_steps() is None
