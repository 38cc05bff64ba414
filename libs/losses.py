"""Training objectives."""
import torch


def l_simple(denoiser, x0, cond=None, generator=None):
    """The simple diffusion loss (Ho et al. 2020) of a `Denoiser`: (B,) float32, one mean squared error per sample.

    t ~ schedule.sample_train_t, eps ~ N(0, I), x_t = alpha(t) x0 + sigma(t) eps; the target is what the network
    predicts (eps for 'noise', x0 for 'x0'). Without a generator the random numbers come from the global RNG of x0's
    device, so restoring that RNG state on resume reproduces the losses exactly.
    """
    t, eps, x_t = noised(denoiser.schedule, x0, generator)
    target = eps if denoiser.prediction == 'noise' else x0
    return squared_error(denoiser.output(x_t, t, **(cond or {})), target)


def squared_error(prediction, target):
    """Mean squared error per sample, (B,) float32 whatever the precision of the prediction."""
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(1)


def noised(schedule, x0, generator=None):
    """Draw t ~ schedule.sample_train_t and eps ~ N(0, I); return (t, eps, x_t = alpha(t) x0 + sigma(t) eps)."""
    t = schedule.sample_train_t(x0.shape[0], x0.device, generator=generator)
    if generator is None:
        eps = torch.randn_like(x0)
    else:
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    alpha = schedule.alpha(t).to(x0.dtype).view(shape)
    sigma = schedule.sigma(t).to(x0.dtype).view(shape)
    return t, eps, alpha * x0 + sigma * eps
