"""A diffusion *framework*: one family of diffusion processes, and everything about it that is not the backbone.

The Trainer, the evaluation harness, checkpoints and configs talk to a framework only through this interface, so a
new family (EDM's parameterisation inside the Gaussian framework, the discrete-state CTMC family) adds files rather
than edits. A framework owns:

- the corruption of clean data and the training loss, with its weighting and its noise-level distribution
  (``corrupt``, ``loss``, ``loss_of_output``);
- what the network is called with (``model_time``) and how its raw output becomes what samplers consume
  (``denoiser``: the preconditioning / parameterisation wrapper);
- the prior (``prior``), the samplers that are valid for it (``samplers``, ``build_sampler``) and guidance
  (``guided``);
- a check that a backbone's declared output fits it (``check_backbone``, libs/nets/protocol.py);
- its likelihood bound, if it has one (``likelihood_bound``), the steps of its discrete chain, if time is discrete
  (``chain_steps``), and what one step of its samplers computes (``sampler_step``, for benchmarks).

Callers never ask which framework they hold (``framework.name`` names it in messages and files only): what differs
is a method here.

Conventions: data ``x0`` is ``(B, *data_shape)`` (images in [-1, 1], or latents); conditions are dicts of keyword
arguments for the backbone (``{'y': labels}``, ``{'context': ...}``); a sampler is ``sampler(model_fn, x_T, noise)``
where ``noise`` is the per-sample random source of libs/rng.py.
"""
from typing import Callable, NamedTuple

import torch

from libs.errors import UserError


class LikelihoodBound(NamedTuple):
    """A framework's bound on -log p(x_0): ``bits_per_dim(denoiser, x0, cond=None, generator=None)`` gives (B,)
    float64 bits per dimension of images x0 in [-1, 1] on 256 levels; ``settings``: what its value depends on (for
    the JSON); ``tag``: a word for the file name."""
    bits_per_dim: Callable
    settings: dict
    tag: str


class Framework:
    """The interface; see the module docstring. Subclasses: libs/diffusion/gaussian.py (and, next, ctmc.py)."""

    name = ''
    samplers: dict = {}

    def check_backbone(self, nnet) -> None:
        """UserError when the backbone's declared output (libs/nets/protocol.py) does not fit this framework."""
        raise NotImplementedError

    def data_shape(self, nnet) -> tuple:
        """(C, H, W) of the data this framework models with ``nnet``: the backbone's input shape, unless the
        framework feeds it more than the data (the absorbing rate's mask channels)."""
        return tuple(nnet.input_shape)

    def model_time(self, t):
        """What the backbone is called with at time t, (B,)."""
        raise NotImplementedError

    def network_input(self, x_t, t):
        """What the backbone is called with at the corrupted data x_t (x_t itself, or a preconditioned input)."""
        raise NotImplementedError

    def corrupt(self, x0, generator=None):
        """(t, noise, x_t): a training time per sample, the noise drawn and the corrupted data."""
        raise NotImplementedError

    def loss_of_output(self, output, x0, noise, x_t, t):
        """(B,) float32 loss of the backbone's raw ``output`` at (x_t, t) for clean ``x0``."""
        raise NotImplementedError

    def loss(self, nnet, x0, cond=None, generator=None):
        """(B,) float32 training loss: corrupt, call the backbone once, score its output."""
        t, noise, x_t = self.corrupt(x0, generator)
        output = nnet(self.network_input(x_t, t), self.model_time(t), **(cond or {}))
        return self.loss_of_output(output, x0, noise, x_t, t)

    def denoiser(self, nnet):
        """The backbone wrapped into what this framework's samplers consume."""
        raise NotImplementedError

    def prior(self, shape, noise):
        """x_T for a batch: ``noise`` is a libs.rng.SampleRandom (or anything with ``randn(shape)``)."""
        raise NotImplementedError

    def guided(self, denoiser, cond: dict, null_cond: dict = None, scale: float = 0.0):
        """The model function a sampler integrates, conditioned on ``cond`` and guided towards it when scale > 0."""
        raise NotImplementedError

    def build_sampler(self, sample_cfg):
        """``sampler(model_fn, x_T, noise=None) -> x_0`` for ``config.sample``."""
        raise NotImplementedError

    def sample(self, denoiser, sampler, shape, cond: dict, random, null_cond: dict = None, scale: float = 0.0):
        """``len(random)`` samples of ``shape`` (per sample) conditioned on ``cond``: prior, guidance, sampler."""
        x_T = self.prior(shape, random)
        return sampler(self.guided(denoiser, cond, null_cond, scale), x_T, noise=random)

    def likelihood_bound(self, config) -> LikelihoodBound:
        """The bound eval.py --eval=nll and the OOD px score report, with its options from ``config``; a UserError
        (one line) when this framework has none."""
        raise UserError(f'{self!r} has no likelihood bound (bits_per_dim): eval.py --eval=nll and the px score of '
                        f'--eval=ood need a discrete chain or discrete states')

    def level_range(self) -> tuple:
        """(low, high): the noise-level indices of the feature evaluations (linear probe, contrastive, noisy
        classifiers), which noise images on a Gaussian path; a UserError (one line) when this framework has none."""
        raise UserError(f'{self!r} has no Gaussian noise levels: the feature evaluations (eval.py --eval='
                        f'linear_probe, contrastive, noisy_clf) noise images on a Gaussian path')

    def chain_steps(self):
        """N, the steps of this framework's discrete chain (what an ancestral sampler over the whole chain takes),
        or None when its time is continuous."""
        return None

    def sampler_step(self, denoiser, x, cond: dict):
        """(call, network evaluations per call): one step of this framework's samplers on the batch ``x`` (data,
        (B, *data_shape)), for benchmarks. By default one evaluation of the model function at t = 1/2."""
        model_fn = self.guided(denoiser, cond)
        t = torch.full((x.shape[0],), 0.5, device=x.device)
        return (lambda: model_fn(x, t)), 1
