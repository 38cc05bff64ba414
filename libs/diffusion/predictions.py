"""What a Gaussian-family network predicts, and the conversions between the predictions at x = alpha x0 + sigma eps.

Five parameterisations (``PREDICTIONS``), all affine in the network's output at a fixed (x, t):

- ``'noise'``: eps (Ho et al. 2020);
- ``'x0'``: the clean data;
- ``'v'``: Salimans & Ho's v = alpha eps - sigma x0 (2022), defined here for variance-preserving schedules only
  (config.pred='v_pred');
- ``'velocity'``: the flow velocity dx_t / dt = alpha' x0 + sigma' eps (flow matching, SiT's default prediction;
  config.pred='velocity'); on the linear path eps - x0;
- ``'score'``: grad_x log p_t(x) = -eps / sigma (SiT's score prediction; config.pred='score').

With kappa = alpha sigma' - alpha' sigma (= -alpha sigma dlambda/dt > 0; 1 on the linear path), a velocity gives
eps = (alpha v - alpha' x) / kappa and x0 = (sigma' x - sigma v) / kappa, finite where alpha = 0, so a velocity model
can be sampled from t = 1 on a flow path; the noise and the score cannot (x0 = (x - sigma eps) / alpha).
Scales are broadcast against x: (B, 1, ..., 1) tensors, or Python floats for a whole batch at one time.
"""
import torch

PREDICTIONS = ('noise', 'x0', 'v', 'velocity', 'score')

# The predictions that hold no information on x0 where alpha = 0 (samplers of such a model start below t = 1 there).
NOISE_LIKE = ('noise', 'score')


def broadcast_scales(schedule, t, x, dtype):
    """alpha(t), sigma(t) in ``dtype``, shaped (B, 1, ..., 1) to broadcast against x."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    return schedule.alpha(t).to(dtype).view(shape), schedule.sigma(t).to(dtype).view(shape)


def broadcast_rates(schedule, t, x, dtype):
    """alpha'(t), sigma'(t) in ``dtype``, shaped (B, 1, ..., 1) to broadcast against x."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    return schedule.d_alpha_dt(t).to(dtype).view(shape), schedule.d_sigma_dt(t).to(dtype).view(shape)


def convert_prediction(prediction, target, out, x, alpha, sigma, d_alpha=None, d_sigma=None):
    """The ``target`` ('noise', 'x0' or 'velocity') prediction from an output of kind ``prediction`` at
    x = alpha x0 + sigma eps; the time derivatives d_alpha, d_sigma are needed when either kind is 'velocity'."""
    if prediction == target:
        return out
    x = x.to(out.dtype)
    if prediction == 'score':  # eps = -sigma score
        return convert_prediction('noise', target, -sigma * out, x, alpha, sigma, d_alpha, d_sigma)
    if target == 'velocity':   # v = alpha' x0 + sigma' eps
        eps = convert_prediction(prediction, 'noise', out, x, alpha, sigma, d_alpha, d_sigma)
        x0 = convert_prediction(prediction, 'x0', out, x, alpha, sigma, d_alpha, d_sigma)
        return d_alpha * x0 + d_sigma * eps
    if prediction == 'velocity':
        kappa = alpha * d_sigma - d_alpha * sigma
        return (alpha * out - d_alpha * x) / kappa if target == 'noise' else (d_sigma * x - sigma * out) / kappa
    if prediction == 'v':  # eps = sigma x + alpha v, x0 = alpha x - sigma v (alpha^2 + sigma^2 = 1)
        return sigma * x + alpha * out if target == 'noise' else alpha * x - sigma * out
    known, other = (alpha, sigma) if target == 'noise' else (sigma, alpha)  # out is x0 or eps
    return (x - known * out) / other


def convert_at(schedule, prediction, target, out, x, t, dtype):
    """``convert_prediction`` with the schedule's scales at the (B,) times t, in ``dtype``."""
    if prediction == target:
        return out
    alpha, sigma = broadcast_scales(schedule, t, x, dtype)
    rates = broadcast_rates(schedule, t, x, dtype) if 'velocity' in (prediction, target) else (None, None)
    return convert_prediction(prediction, target, out, x, alpha, sigma, *rates)


def time_derivatives(schedule, t: float):
    """(alpha, sigma, alpha', sigma') at one time t, as Python floats (what a sampler's step uses)."""
    tt = torch.tensor(float(t), dtype=torch.float64)
    return tuple(float(f(tt)) for f in (schedule.alpha, schedule.sigma, schedule.d_alpha_dt, schedule.d_sigma_dt))
