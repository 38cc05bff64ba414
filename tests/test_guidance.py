"""Classifier-free guidance: the arithmetic and the single batched call."""
import pytest
import torch

from libs.diffusion.guidance import GuidanceInterval, bind_condition, classifier_free_guidance, guidance_interval
from libs.diffusion.samplers import dpm_solver, singlestep_grid
from libs.diffusion.schedules import VPSDE


def assert_close(actual, expected, rtol=1e-6):
    """Elementwise |actual - expected| <= rtol (|expected| + max |expected|): relative, with an absolute floor that
    scales with the magnitudes compared."""
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * expected.abs().max().item())


class RecordingNoiseFn:
    """A fake conditional noise predictor, eps = x * (1 + y) + t, that records the shapes it was called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, y, flag=None):
        self.calls.append({'x': x.clone(), 't': t.clone(), 'y': y.clone(), 'flag': flag})
        return x * (1.0 + y.to(x.dtype)[:, None]) + t[:, None]


def test_guidance_is_one_batched_call_with_the_paper_convention():
    noise_fn = RecordingNoiseFn()
    x = torch.randn(3, 5)
    t = torch.tensor([0.1, 0.5, 0.9])
    y = torch.tensor([2, 0, 7])
    null = torch.full((3,), 10)
    eps_fn = classifier_free_guidance(noise_fn, {'y': y, 'flag': 'a'}, {'y': null, 'flag': 'a'}, scale=0.4)
    out = eps_fn(x, t)

    assert len(noise_fn.calls) == 1
    call = noise_fn.calls[0]
    assert torch.equal(call['x'], torch.cat([x, x]))
    assert torch.equal(call['t'], torch.cat([t, t]))
    assert torch.equal(call['y'], torch.cat([y, null]))
    assert call['flag'] == 'a'
    eps_c = x * (1.0 + y[:, None]) + t[:, None]
    eps_u = x * (1.0 + null[:, None]) + t[:, None]
    assert_close(out, eps_c + 0.4 * (eps_c - eps_u))
    assert_close(out, 1.4 * eps_c - 0.4 * eps_u)


def test_scale_zero_is_the_conditional_prediction():
    noise_fn = RecordingNoiseFn()
    x, t, y = torch.randn(2, 4), torch.tensor([0.3, 0.6]), torch.tensor([1, 2])
    out = classifier_free_guidance(noise_fn, {'y': y}, {'y': torch.zeros_like(y)}, scale=0.0)(x, t)
    assert_close(out, x * (1.0 + y[:, None]) + t[:, None])
    assert len(noise_fn.calls) == 1 and noise_fn.calls[0]['x'].shape == (2, 4)


def test_bind_condition():
    noise_fn = RecordingNoiseFn()
    x, t, y = torch.randn(2, 4), torch.tensor([0.3, 0.6]), torch.tensor([1, 2])
    assert_close(bind_condition(noise_fn, {'y': y})(x, t), noise_fn(x, t, y=y))


def test_mismatched_conditions():
    with pytest.raises(ValueError, match='same keys'):
        classifier_free_guidance(RecordingNoiseFn(), {'y': torch.zeros(1)}, {}, scale=1.0)
    with pytest.raises(ValueError, match='differs'):
        classifier_free_guidance(RecordingNoiseFn(), {'y': torch.zeros(1), 'flag': 'a'},
                                 {'y': torch.zeros(1), 'flag': 'b'}, scale=1.0)


def test_one_network_call_per_solver_step():
    noise_fn = RecordingNoiseFn()
    x = 0.1 * torch.randn(4, 3, dtype=torch.float64)
    y = torch.arange(4)
    eps_fn = classifier_free_guidance(noise_fn, {'y': y}, {'y': torch.full_like(y, 4)}, scale=3.0)
    schedule = VPSDE()
    boundaries, orders = singlestep_grid(schedule, 7, 3, 1.0, schedule.t_min, 'logSNR')
    dpm_solver(eps_fn, schedule, x, boundaries, order=3, method='singlestep', orders=orders)
    assert len(noise_fn.calls) == 7
    assert all(call['x'].shape == (8, 3) and call['t'].dtype == torch.float64 for call in noise_fn.calls)


def test_guidance_interval_guides_only_inside_lo_hi():
    """Kynkaanniemi et al.'s (lo, hi]: outside it the guided function is the conditional one (one call on B
    samples), inside it is classifier-free guidance, and a batch with both gets each where it belongs."""
    x = torch.randn(4, 3, dtype=torch.float64)
    y, null = torch.tensor([2, 0, 7, 1]), torch.full((4,), 10)
    interval = GuidanceInterval(0.5, 2.0, level=lambda t: 10.0 * t)   # level 10 t: inside for 0.05 < t <= 0.2
    noise_fn = RecordingNoiseFn()
    eps_fn = classifier_free_guidance(noise_fn, {'y': y}, {'y': null}, scale=0.4, interval=interval)
    conditional = lambda t: x * (1.0 + y[:, None]) + t[:, None]  # noqa: E731
    unconditional = lambda t: x * (1.0 + null[:, None]) + t[:, None]  # noqa: E731
    cfg = lambda t: conditional(t) + 0.4 * (conditional(t) - unconditional(t))  # noqa: E731
    for times, inside in (([0.3, 0.3, 0.3, 0.3], [False] * 4), ([0.05, 0.05, 0.05, 0.05], [False] * 4),
                          ([0.2, 0.2, 0.2, 0.2], [True] * 4), ([0.1, 0.3, 0.2, 0.01], [True, False, True, False])):
        t = torch.tensor(times, dtype=torch.float64)
        expected = torch.where(torch.tensor(inside)[:, None], cfg(t), conditional(t))
        assert_close(eps_fn(x, t), expected)
        assert noise_fn.calls[-1]['x'].shape[0] == (8 if any(inside) else 4)
    scalar = classifier_free_guidance(lambda x, t, y: x * (1.0 + y[:, None]) + t, {'y': y}, {'y': null}, 0.4,
                                      interval=interval)
    assert_close(scalar(x, 0.15), cfg(torch.full((4,), 0.15, dtype=torch.float64)))   # a number for t
    assert_close(scalar(x, 0.5), conditional(torch.full((4,), 0.5, dtype=torch.float64)))


def test_the_interval_is_in_sigma_over_alpha_of_every_gaussian_schedule():
    """The framework's interval reads EDM's noise level sigma / alpha of the model's schedule, and the samplers
    carry it from config.sample."""
    from ml_collections import ConfigDict

    from libs.diffusion.edm import EDMFramework, EDMPrecond
    from libs.diffusion.gaussian import GaussianFramework
    from libs.diffusion.schedules import LinearPath
    for framework in (GaussianFramework(LinearPath(), 'velocity'), GaussianFramework(VPSDE()),
                      EDMFramework(EDMPrecond())):
        schedule = framework.schedule
        sample_cfg = ConfigDict({'algorithm': 'dpm_solver++', 'sample_steps': 5, 'guidance_interval': '0.5,2'})
        interval = framework.build_sampler(sample_cfg).guidance_interval
        assert interval == (0.5, 2.0)
        inside, outside = (schedule.t_from_ve_sigma(torch.tensor(s, dtype=torch.float64)).item() for s in (1.0, 3.0))

        class Net(torch.nn.Module):
            def forward(self, x, model_time, y):
                return x + y.to(x.dtype)[:, None]

        denoiser = framework.denoiser(Net())
        x, y, null = torch.randn(2, 3, dtype=torch.float64), torch.tensor([1, 2]), torch.tensor([5, 5])
        guided = framework.guided(denoiser, {'y': y}, {'y': null}, 1.0, interval=interval)
        plain = framework.guided(denoiser, {'y': y}, {'y': null}, 1.0)
        assert_close(guided(x, torch.full((2,), inside, dtype=torch.float64)),
                     plain(x, torch.full((2,), inside, dtype=torch.float64)))
        conditional = framework.guided(denoiser, {'y': y})
        assert_close(guided(x, torch.full((2,), outside, dtype=torch.float64)),
                     conditional(x, torch.full((2,), outside, dtype=torch.float64)))


def test_guidance_interval_config_settings_and_file_names():
    from ml_collections import ConfigDict

    from libs.diffusion.samplers.tau_leaping import build_ctmc_sampler
    from libs.evaluation.harness import json_safe, sample_settings, sample_tags
    from libs.errors import UserError
    cfg = lambda **kw: ConfigDict({'algorithm': 'flow_sde', 'sample_steps': 250, 'scale': 0.5, **kw})  # noqa: E731
    assert guidance_interval(cfg()) is None and guidance_interval(cfg(guidance_interval=())) is None
    assert guidance_interval(cfg(guidance_interval='0.28, 5.42')) == (0.28, 5.42)
    assert guidance_interval(cfg(guidance_interval=(0, 'inf'))) == (0.0, float('inf'))
    for bad in ('2,1', '1', '1,2,3', '-1,1', 'a,b'):
        with pytest.raises(UserError, match='sample.guidance_interval'):
            guidance_interval(cfg(guidance_interval=bad))
    names, settings = set(), []
    for value in ('', '0.28,5.42', '0.19,1.61', '0,inf'):
        names.add('_'.join(sample_tags(cfg(guidance_interval=value), 'fid')))
        settings.append(json_safe(sample_settings(cfg(guidance_interval=value), 100, 'fid', {})))
    assert len(names) == 4 and 'fid_flow_sde_nfe250_scale0.5_interval0.28-5.42' in names
    assert [s['guidance_interval'] for s in settings] == [None, [0.28, 5.42], [0.19, 1.61], [0.0, None]]
    assert 'fid_flow_sde_nfe250_scale0.5_start0.9' in '_'.join(sample_tags(cfg(t_start=0.9), 'fid'))
    with pytest.raises(UserError, match="discrete-state framework has none"):
        build_ctmc_sampler(ConfigDict({'algorithm': 'tau_leaping', 'sample_steps': 5, 'guidance_interval': '1,2'}),
                           None)
