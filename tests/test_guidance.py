"""Classifier-free guidance: the arithmetic and the single batched call."""
import pytest
import torch

from libs.diffusion.guidance import bind_condition, classifier_free_guidance
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
