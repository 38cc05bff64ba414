"""The discrete-state framework (libs/diffusion/ctmc.py, rates.py, samplers/tau_leaping.py): transition matrices
against matrix exponentials, the CT-ELBO on a 2-state case by hand, tau-leaping against the exact reverse chain on a
one-pixel toy problem, the likelihood bound against the data's entropy, and the backbones' discrete heads."""
import math

import pytest
import torch

from libs.config import d
from libs.diffusion.ctmc import CTMCFramework, states_of, values_of
from libs.diffusion.rates import RATES, build_rate
from libs.diffusion.samplers.tau_leaping import build_ctmc_sampler, gillespie, leap, tau_leaping
from libs.errors import UserError
from libs.nets.dit import DiT
from libs.nets.uvit import UViT

RATE_CFG = dict(profile='exponential', time_base=1.0, time_exp=20.0, rate_sigma=2.0, Q_sigma=3.0)
TIMES = torch.tensor([0.01, 0.2, 0.7, 1.0], dtype=torch.float64)


def rate_of(name, num_states=5, **overrides):
    return build_rate(d(rate=name, **dict(RATE_CFG, **overrides)), num_states)


@pytest.mark.parametrize('name', list(RATES))
@pytest.mark.parametrize('profile', ['exponential', 'constant', 'log_linear'])
def test_transitions_are_the_matrix_exponential_of_the_integrated_rate(name, profile):
    rate = rate_of(name, 7, profile=profile, rate_const=2.5)
    p = rate.transition(TIMES)
    exact = torch.linalg.matrix_exp(rate.profile.integral(TIMES).view(-1, 1, 1) * rate.base)
    assert torch.allclose(p.sum(-1), torch.ones((), dtype=torch.float64), atol=1e-12)
    assert (p >= 0).all()
    assert torch.allclose(p, exact, atol=1e-10)
    # rows of the base rate sum to zero, and the stationary law is a left null vector
    assert torch.allclose(rate.base.sum(1), torch.zeros((), dtype=torch.float64), atol=1e-12)
    assert torch.allclose(rate.stationary @ rate.base, torch.zeros((), dtype=torch.float64), atol=1e-12)


def test_the_profiles_rate_is_the_derivative_of_its_integral():
    for profile in ('exponential', 'constant', 'log_linear'):
        rate = rate_of('uniform', profile=profile, rate_const=2.5)
        t, h = torch.tensor([0.3, 0.8], dtype=torch.float64), 1e-6
        numeric = (rate.profile.integral(t + h) - rate.profile.integral(t - h)) / (2 * h)
        assert torch.allclose(rate.profile.beta(t), numeric, rtol=1e-7)
    # the exponential profile is the seed's: rate(t) = time_base time_exp^t log(time_exp)
    rate = rate_of('gaussian', time_base=3.0, time_exp=100.0)
    assert float(rate.profile.beta(torch.tensor([0.5]))) == pytest.approx(3.0 * 10.0 * math.log(100.0))


def test_the_gaussian_target_rate_is_reversible_towards_a_centred_gaussian():
    S = 16
    rate = rate_of('gaussian', S, rate_sigma=2.0, Q_sigma=4.0)
    pi, base = rate.stationary, rate.base
    flux = pi[:, None] * base
    assert torch.allclose(flux, flux.T, atol=1e-14)   # detailed balance
    k = torch.arange(S, dtype=torch.float64)
    expected = torch.exp(-((k + 1) - S / 2) ** 2 / (2 * 4.0 ** 2))
    assert torch.allclose(pi, expected / expected.sum(), atol=1e-12)
    # jumps towards the middle have the Gaussian sizes: from 0, one step up is exp(0), two steps exp(-1/4)
    assert float(base[0, 1]) == pytest.approx(1.0) and float(base[0, 2]) == pytest.approx(math.exp(-0.25))
    assert float(base[S - 1, S - 2]) == pytest.approx(1.0)
    # the chain mixes to pi
    assert torch.allclose(rate_of('gaussian', S, rate_sigma=2.0, Q_sigma=4.0, time_base=50.0)
                          .transition(torch.ones(1, dtype=torch.float64))[0], pi.expand(S, S), atol=1e-6)


def test_bad_rate_settings_are_one_line():
    for cfg, message in [(d(rate='cosine'), "unknown config.ctmc.rate 'cosine'"),
                         (d(rate='uniform', profile='linear'), "unknown config.ctmc.profile 'linear'"),
                         (d(rate='gaussian', rate_sigma=0.0), 'rate_sigma > 0'),
                         (d(rate='uniform', time_exp=0.5), 'time_exp > 1')]:
        with pytest.raises(UserError, match=message) as e:
            build_rate(cfg, 5)
        assert '\n' not in str(e.value)
    with pytest.raises(UserError, match="'masked' is the absorbing rate's loss"):
        CTMCFramework(rate_of('gaussian'), 'masked')


def test_states_and_values_round_trip_on_the_digits_levels():
    states = torch.arange(17)
    assert torch.equal(states_of(values_of(states, 17), 17), states)
    assert torch.equal(states_of(torch.arange(17) / 8 - 1, 17), states)   # the digits' v / 8 - 1


# --- the CT-ELBO ------------------------------------------------------------------------------------------------

def two_state(c=1.5, min_time=0.1):
    rate = build_rate(d(rate='uniform', profile='constant', rate_const=c), 2)
    return CTMCFramework(rate, 'ct_elbo', min_time=min_time, nll_weight=0.0, eps_ratio=0.0), rate


def fixed_logits(p, batch=1):
    """(batch, 1, 1, 1, 2) logits of a model that says p(x_0 = 0 | x_t) = p whatever x_t."""
    return torch.log(torch.tensor([p, 1 - p], dtype=torch.float64)).expand(batch, 1, 1, 1, 2).float()


@pytest.mark.parametrize('one_forward_pass', [True, False])
def test_the_ct_elbo_equals_the_hand_computed_two_state_value(one_forward_pass):
    c, min_time, t, p = 1.5, 0.1, 0.4, 0.7
    fw, rate = two_state(c, min_time)
    # P(t) = 1/2 + (delta - 1/2) exp(-2 c t) for the uniform 2-state rate with off-diagonal c
    stay = 0.5 + 0.5 * math.exp(-2 * c * t)
    move = 1 - stay
    x0, x = torch.zeros(1, 1, 1, 1, dtype=torch.long), torch.zeros(1, 1, 1, 1, dtype=torch.long)
    jumped = torch.ones_like(x)
    aux = {'x0': x0, 'x_t': x, 'jumped': jumped, 'total': torch.tensor([c], dtype=torch.float64)}
    tt = torch.tensor([t], dtype=torch.float64)
    logits = fixed_logits(p)
    # the reverse rate out of x = 0 (to 1), from the call at x, and out of x' = 1 back to 0, from the call at x'
    out_of_0 = c * (p * move / stay + (1 - p) * stay / move)
    back_to_0 = c * (p * stay / move + (1 - p) * move / stay)
    exact_0_to_1 = c * move / stay                      # given x_0 = 0
    constant = exact_0_to_1 * (math.log(exact_0_to_1) - 1)
    reg = back_to_0 if one_forward_pass else out_of_0   # one pass: the first term at x' too
    expected = (1 - min_time) * (reg - c * math.log(back_to_0) + constant)
    got = fw.ct_elbo(logits, aux, tt) if one_forward_pass else fw.ct_elbo(logits, aux, tt, logits_at_x=logits)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_the_ct_elbo_and_the_path_kl_agree_in_expectation_on_two_states():
    """Campbell et al.'s estimator (two passes) plus its constant has the expectation of the path-space KL: on two
    states the expectation over x_t ~ P(t)[x_0, .] is a sum of two terms, so both sides are exact."""
    fw, rate = two_state()
    t = torch.tensor([0.3, 0.3], dtype=torch.float64)
    x0 = torch.zeros(2, 1, 1, 1, dtype=torch.long)
    x = torch.tensor([0, 1]).view(2, 1, 1, 1)
    weights = rate.transition(t[:1])[0, 0]   # P(t)[0, .]
    for p in (0.9, 0.3):
        logits = fixed_logits(p, 2)
        aux = {'x0': x0, 'x_t': x, 'jumped': 1 - x, 'total': torch.full((2,), 1.5, dtype=torch.float64)}
        campbell = fw.ct_elbo(logits, aux, t, logits_at_x=logits).double()
        kl = fw.path_kl(logits, aux, t).double()
        # float32 losses of terms near 1 whose sum is 0.04: agreement to 1e-4 relative is all float32 allows
        assert float((weights * campbell).sum()) == pytest.approx(float((weights * kl).sum()), rel=1e-4)
        assert float((weights * kl).sum()) > 0


def test_the_masked_loss_is_the_path_kl_of_the_absorbing_rate():
    rate = build_rate(d(rate='absorbing', profile='log_linear'), 4)
    fw = CTMCFramework(rate, 'masked', min_time=0.01, eps_ratio=0.0)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 4, (6, 1, 3, 3), generator=g)
    t = torch.rand(6, generator=g, dtype=torch.float64) * 0.9 + 0.05
    aux = {'x0': x0, 'x_t': fw.noised(x0, t, g)}
    logits = torch.randn(6, 1, 3, 3, 4, generator=g)
    assert torch.allclose(fw.masked_loss(logits, aux, t), fw.path_kl(logits, aux, t), rtol=1e-5)


def test_the_likelihood_bound_of_the_exact_model_is_the_datas_entropy():
    """With the exact p(x_0 | x_t) of a one-pixel law, the bound is -log p(x_0) up to the prior's small mismatch, so
    its mean over the data is the entropy; a model that ignores x_t scores worse."""
    S = 5
    rate = rate_of('birth_death', S, time_base=1.0, time_exp=40.0)
    fw = CTMCFramework(rate, 'path_kl', min_time=0.005, eps_ratio=0.0)
    pdata = torch.tensor([0.5, 0.05, 0.1, 0.3, 0.05], dtype=torch.float64)
    exact = ExactModel(rate, pdata)
    n = 4000   # one image's bound has a standard deviation of about 0.6 bits: the weighted mean's is 0.013
    x0 = torch.arange(S).repeat_interleave(n).view(-1, 1, 1, 1)
    images = values_of(x0, S)
    g = torch.Generator().manual_seed(0)
    bits = fw.nll_bound(exact, images, generator=g, time_samples=4).view(S, n).mean(1)
    entropy_bits = float(-(pdata * pdata.log()).sum() / math.log(2))
    assert float((pdata * bits).sum()) == pytest.approx(entropy_bits, abs=0.05)
    blind = ConstantModel(pdata)
    blind_bits = fw.nll_bound(blind, images, generator=g, time_samples=4).view(S, n).mean(1)
    assert float((pdata * blind_bits).sum()) > entropy_bits + 0.3


class ExactModel:
    """p(x_0 | x_t) of a one-pixel data law, in closed form: pdata(x0) P(t)[x0, x_t], normalised."""

    def __init__(self, rate, pdata):
        self.rate, self.pdata = rate, pdata

    def logits(self, x, t, **cond):
        S = self.pdata.numel()
        p = self.rate.transition(t.double())[:, :S, :]
        column = p.gather(2, x.view(-1, 1, 1).expand(-1, S, 1)).squeeze(-1)
        return torch.log(self.pdata * column).view(-1, 1, 1, 1, S)


class ConstantModel:
    def __init__(self, pdata):
        self.pdata = pdata

    def logits(self, x, t, **cond):
        return self.pdata.log().expand(x.shape[0], -1).reshape(-1, 1, 1, 1, self.pdata.numel())


# --- the samplers -----------------------------------------------------------------------------------------------

def total_variation(samples, pdata):
    hist = torch.bincount(samples.flatten(), minlength=pdata.numel()).double() / samples.numel()
    return 0.5 * float((hist - pdata).abs().sum())


def toy_problem(seed: int, n: int = 4000):
    """(rate, framework, data law, its exact model, samples): one pixel of five states, the Gaussian-target rate."""
    rate = rate_of('gaussian', 5)
    pdata = torch.tensor([0.5, 0.05, 0.1, 0.3, 0.05], dtype=torch.float64)
    torch.manual_seed(seed)
    return rate, CTMCFramework(rate, 'nll', min_time=0.01), pdata, ExactModel(rate, pdata), n


def test_tau_leaping_approaches_the_data_law_and_agrees_with_the_exact_chain():
    """One pixel, five states, the exact reverse rates: tau-leaping's total variation to the data falls as its
    steps grow, and the exact (Gillespie) simulation matches the data and tau-leaping's finest grid."""
    rate, fw, pdata, model, n = toy_problem(0)
    q1 = (pdata[:, None] * rate.transition(torch.ones(1, dtype=torch.float64))[0]).sum(0)
    x_T = torch.multinomial(q1.float(), n, replacement=True).view(n, 1, 1, 1)
    tv = {}
    for steps in (2, 10, 200):
        times = torch.linspace(1.0, 0.01, steps + 1).tolist()
        samples = tau_leaping(model.logits, fw, x_T, times, final_step='sample')
        tv[steps] = total_variation(samples, pdata)
    assert tv[2] > tv[10] + 0.05 > tv[200] + 0.1, tv
    share = torch.bincount(samples.flatten(), minlength=5).double() / (n * pdata)   # 200 steps, per state
    assert ((share > 0.67) & (share < 1.5)).all(), share   # measured 0.97 to 1.29; the top state too
    exact = gillespie(model.logits, fw, x_T, 0.01, final_step='sample')
    assert total_variation(exact, pdata) < 0.03
    assert tv[200] < 0.05


def test_a_leap_without_rates_leaves_every_state_and_clips_to_the_end_states():
    """Zero rates: no jump, so every state, the end ones included, stays; rates towards far values clip to 0 and
    S - 1, and no further (ordinal)."""
    S = 6
    x = torch.arange(S).repeat(2, 1)                                          # (B=2, D=S): every state
    assert torch.equal(leap(x, torch.zeros(2, S, S, dtype=torch.float64), 0.5, None, True, S - 1), x)
    assert torch.equal(leap(x, torch.zeros(2, S, S, dtype=torch.float64), 0.5, None, False, S - 1), x)
    up = torch.zeros(2, S, S, dtype=torch.float64)
    up[0, :, S - 1], up[1, :, 0] = 1e3, 1e3                                  # many jumps to the top / the bottom
    assert torch.equal(leap(x, up, 1.0, None, True, S - 1), torch.tensor([[S - 1] * S, [0] * S]))


def test_midpoint_and_predictor_corrector_run_and_beat_plain_tau_leaping_at_few_steps():
    rate, fw, pdata, model, n = toy_problem(1)
    x_T = torch.multinomial(rate.stationary.float(), n, replacement=True).view(n, 1, 1, 1)
    times = torch.linspace(1.0, 0.01, 6).tolist()
    plain = total_variation(tau_leaping(model.logits, fw, x_T, times, final_step='sample'), pdata)
    midpoint = total_variation(tau_leaping(model.logits, fw, x_T, times, midpoint=True, final_step='sample'), pdata)
    corrected = total_variation(tau_leaping(model.logits, fw, x_T, times, corrector_steps=2, corrector_entry_time=1.0,
                                            final_step='sample'), pdata)
    assert midpoint < plain and corrected < plain, (plain, midpoint, corrected)


def test_sampler_settings_are_checked_in_one_line():
    fw = CTMCFramework(build_rate(d(rate='absorbing', profile='log_linear'), 4), 'masked')
    for cfg, message in [(d(algorithm='euler'), "unknown sample.algorithm 'euler'"),
                         (d(algorithm='tau_leaping', sample_steps=0), 'positive integer'),
                         (d(algorithm='tau_leaping', sample_steps=5, is_ordinal=True), 'is_ordinal=False'),
                         (d(algorithm='tau_leaping', sample_steps=5, is_ordinal=False, initial_dist='uniform'),
                          "initial_dist='uniform' does not fit the absorbing rate"),
                         (d(algorithm='tau_leaping', sample_steps=5, is_ordinal=False, final_step='mode'),
                          "unknown sample.final_step 'mode'")]:
        with pytest.raises(UserError, match=message) as e:
            build_ctmc_sampler(cfg, fw)
        assert '\n' not in str(e.value)


def test_the_absorbing_sampler_unmasks_everything():
    rate = build_rate(d(rate='absorbing', profile='log_linear'), 4)
    fw = CTMCFramework(rate, 'masked')
    sampler = build_ctmc_sampler(d(algorithm='tau_leaping', sample_steps=10, is_ordinal=False), fw)
    from libs.rng import SampleRandom
    random = SampleRandom(0, range(3))
    x_T = fw.prior((1, 2, 2), random, sampler.initial_dist)
    assert (x_T == rate.mask_state).all()
    out = sampler(lambda x, t: torch.zeros(*x.shape, 4), x_T, noise=random)
    assert out.shape == (3, 1, 2, 2) and out.max() < 4


# --- the discrete heads -----------------------------------------------------------------------------------------

def test_uvit_and_dit_discrete_heads_with_the_seeds_names():
    uvit = UViT(img_size=8, in_channels=1, patch_size=2, depth=2, hidden_dim=32, num_heads=2, mlp_ratio=2,
                dropout_attention=0.1, num_classes=11, use_checkpoint=False, num_states=17)
    dit = DiT(img_size=8, in_channels=1, patch_size=2, depth=2, hidden_dim=32, num_heads=2, mlp_ratio=2,
              dropout_attention=0.1, num_classes=10, learn_sigma=False, num_states=17)
    x, t, y = torch.rand(3, 1, 8, 8) * 2 - 1, torch.rand(3) * 999, torch.tensor([0, 1, 2])
    for net in (uvit, dit):
        assert net.output == 'logits' and net.num_states == 17 and net.input_shape == (1, 8, 8)
        assert net(x, t, y).shape == (3, 1, 8, 8, 17)
    assert uvit.embed_dim == 32 and dit.x_embedder.proj.out_channels == 32
    # a logit of pixel (i, j) depends on that pixel's patch: the head's layout is (C, H, W, S)
    uvit.eval()
    base = uvit(x, t, y)
    moved = x.clone()
    moved[:, :, 0:2, 0:2] += 0.5
    changed = (uvit(moved, t, y) - base).abs().amax(-1)[:, 0]
    assert changed[:, 0:2, 0:2].min() > 0
    with pytest.raises(ValueError, match='disagree'):
        UViT(in_chans=2, in_channels=1)


def test_the_framework_checks_the_discrete_head():
    fw = CTMCFramework(build_rate(d(rate='absorbing', profile='log_linear'), 17), 'masked')
    for net, message in [(UViT(img_size=8, in_chans=1, patch_size=2, embed_dim=16, depth=1, num_heads=2),
                          "declares 'image'"),
                         (UViT(img_size=8, in_chans=1, patch_size=2, embed_dim=16, depth=1, num_heads=2,
                               num_states=9), 'num_states=9'),
                         (UViT(img_size=8, in_chans=1, patch_size=2, embed_dim=16, depth=1, num_heads=2,
                               num_states=17), 'so set 2')]:
        with pytest.raises(UserError, match=message) as e:
            fw.check_backbone(net)
        assert '\n' not in str(e.value)
    good = UViT(img_size=8, in_chans=2, out_chans=1, patch_size=2, embed_dim=16, depth=1, num_heads=2, num_states=17)
    fw.check_backbone(good)
    assert fw.data_shape(good) == (1, 8, 8)
    states = torch.tensor([0, 16, 17]).view(1, 1, 1, 3)
    assert fw.network_input(states, None).tolist() == [[[[-1.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]]]]
