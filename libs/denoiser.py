"""A backbone plus a noise schedule: noise and data predictions at continuous time t.

The backbone `nnet(x, model_time, **cond)` knows nothing about schedules; this wrapper converts t to what the network
is called with (`schedule.model_time(t)`) and its output to either prediction, using x = alpha x0 + sigma eps.
"""
import torch

from libs.errors import UserError

PREDICTIONS = ('noise', 'x0')

# config.pred (the release's names) -> the Denoiser's prediction type
CONFIG_PREDICTIONS = {'noise_pred': 'noise', 'x0_pred': 'x0'}


class Denoiser:
    """Wraps `nnet` (outputs eps if prediction == 'noise', x0 if 'x0') with `schedule`.

    x: (B, ...) noisy inputs; t: (B,) tensor or a number (the same time for the whole batch).
    Outputs are at least float32 (a half-precision output under autocast is cast up; float64 stays float64).
    """

    def __init__(self, nnet, schedule, prediction='noise'):
        if prediction not in PREDICTIONS:
            raise UserError(f'unknown prediction type {prediction!r}; known: {", ".join(PREDICTIONS)}')
        self.nnet = nnet
        self.schedule = schedule
        self.prediction = prediction

    @classmethod
    def from_config(cls, nnet, schedule, config) -> 'Denoiser':
        """With the prediction type named by ``config.pred`` ('noise_pred' / 'x0_pred')."""
        return cls(nnet, schedule, CONFIG_PREDICTIONS[config.pred])

    def _times(self, x, t):
        if not torch.is_tensor(t) or t.ndim == 0:
            dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
            return torch.full((x.shape[0],), float(t), dtype=dtype, device=x.device)
        return t

    def _scales(self, x, t, dtype):
        """alpha(t), sigma(t) shaped (B, 1, ..., 1) to broadcast against x."""
        shape = (-1,) + (1,) * (x.ndim - 1)
        return self.schedule.alpha(t).to(dtype).view(shape), self.schedule.sigma(t).to(dtype).view(shape)

    def output(self, x, t, **cond):
        """The raw network output (eps or x0, per `prediction`), cast to at least float32."""
        t = self._times(x, t)
        out = self.nnet(x, self.schedule.model_time(t), **cond)
        return out.to(torch.promote_types(out.dtype, torch.float32))

    def noise(self, x, t, **cond):
        """eps prediction, same shape as x."""
        t = self._times(x, t)
        out = self.output(x, t, **cond)
        if self.prediction == 'noise':
            return out
        alpha, sigma = self._scales(x, t, out.dtype)
        return (x.to(out.dtype) - alpha * out) / sigma

    def data(self, x, t, **cond):
        """x0 prediction, same shape as x."""
        t = self._times(x, t)
        out = self.output(x, t, **cond)
        if self.prediction == 'x0':
            return out
        alpha, sigma = self._scales(x, t, out.dtype)
        return (x.to(out.dtype) - sigma * out) / alpha
