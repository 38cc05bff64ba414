"""Samplers of the Gaussian framework: plain functions over a noise-prediction callable ``eps_fn(x, t)`` that take
their step grid as an argument (grids.py builds the grids), and the config-name registry.

``build_sampler(config.sample, schedule)`` returns ``sampler(eps_fn, x_T, noise=None) -> x_0``: the preset named
``algorithm`` with the grid built from the config. Config keys read from ``sample``: ``algorithm`` (a name in
SAMPLERS), ``sample_steps`` (required), for the DPM-Solver and UniPC names the optional overrides ``order``,
``method`` (UniPC: only 'multistep'), ``skip_type``; ``t_end`` for the continuous-time ones; ``progress`` (bool). An
override that is missing, None, 0 or '' means the preset's default. The ``ddpm_ancestral`` names need a discrete
schedule and take ``sample_steps`` <= its N (N: the full chain of Ho et al.); so does ``ddim``, with ``eta``.
``ddpm_ancestral_learned`` (DiT's sampler, 250 of its 1000 steps) consumes the learned variance too: its model
function returns (B, 2C), eps then the variance output (``sampler.consumes == 'noise+variance'``; the others'
is 'noise'). ``guided_channels`` (0: all) is read for guidance: how many leading channels of eps are guided
(DiT: 3 of 4), carried by the sampler as ``sampler.guided_channels``.
``heun`` (EDM's sampler, on EDM's rho-grid of ``rho``) takes ``sample_steps`` evaluations exactly: 18 noise levels
for 35, as EDM; with an even count the last two steps are Euler steps. Its churn options are ``s_churn``, ``s_min``,
``s_max``, ``s_noise``. ``noise(x)`` gives the stochastic samplers' N(0, I) draws (libs.rng).

Adding a sampler: write its function here (one file), then one line in SAMPLERS with a preset that builds its
grid from the config.
"""
from libs.diffusion.samplers.ancestral import (check_options as check_ancestral_options, ddpm_ancestral,
                                               ddpm_ancestral_learned, require_discrete)
from libs.diffusion.samplers.dpm_solver import check_options, dpm_solver, singlestep_grid, singlestep_orders
from libs.diffusion.samplers.ddim import ddim
from libs.diffusion.samplers.euler_maruyama import euler_grid, euler_maruyama
from libs.diffusion.samplers.grids import TIME_GRIDS, ddpm_steps, karras_grid, time_grid
from libs.diffusion.samplers.heun import heun
from libs.diffusion.samplers.unipc import check_options as check_unipc_options, unipc
from libs.errors import UserError

# Default ends of sampling (never below the schedule's t_min): DPM-Solver (and UniPC) ends at 1e-4 as the release
# did for the VP SDE (and at 1/N for an N-step discrete schedule, as the release's text-to-image code did); Euler at
# 1e-3.
DPM_SOLVER_T_END = 1e-4
EULER_T_END = 1e-3


def _sample_steps(sample_cfg):
    steps = sample_cfg.get('sample_steps', None)
    if steps is None:
        raise UserError('sample.sample_steps is not set (the number of network evaluations per sample)')
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise UserError(f'sample.sample_steps must be a positive integer, got {steps!r}')
    return steps


def _override(sample_cfg, key):
    """The config's value for `key`, or None when it is unset (missing, None, 0 or '')."""
    value = sample_cfg.get(key, None)
    return None if value is None or value == '' or value == 0 else value


def _t_end(sample_cfg, schedule, default: float, name: str) -> float:
    """The config's ``t_end``, or ``default`` (never below the schedule's t_min) when unset; UserError outside
    (0, 1)."""
    t_end = _override(sample_cfg, 't_end')
    t_end = max(default, schedule.t_min) if not t_end else float(t_end)
    if not 0.0 < t_end < 1.0:
        raise UserError(f'{name} needs 0 < sample.t_end < 1, got {t_end}')
    return t_end


def _options(preset, sample_cfg, schedule, name):
    """(steps, options, skip_type, t_end): the preset's options with the config's `order`, `method`, `skip_type`
    and `t_end` overrides applied, the grid options checked."""
    steps = _sample_steps(sample_cfg)
    options = dict(preset)
    for key in ('order', 'method', 'skip_type'):
        value = _override(sample_cfg, key)
        if value is not None:
            options[key] = value
    skip_type = options.pop('skip_type')
    if skip_type not in TIME_GRIDS:
        raise UserError(f'unknown {name} skip_type {skip_type!r}; known: {", ".join(TIME_GRIDS)}')
    return steps, options, skip_type, _t_end(sample_cfg, schedule, DPM_SOLVER_T_END, name)


def _dpm_solver_preset(**preset):
    """Constructor for a DPM-Solver configuration; `order`, `method`, `skip_type`, `t_end` from the config win."""

    def build(sample_cfg, schedule):
        steps, options, skip_type, t_end = _options(preset, sample_cfg, schedule, 'DPM-Solver')
        check_options(steps, options['order'], options['method'], options['algorithm_type'])
        if options['method'] == 'singlestep':
            timesteps, options['orders'] = singlestep_grid(schedule, steps, options['order'], 1.0, t_end, skip_type)
        else:
            timesteps = time_grid(schedule, steps, 1.0, t_end, skip_type)
        progress = bool(sample_cfg.get('progress', False))

        def sampler(eps_fn, x_T, noise=None):
            return dpm_solver(eps_fn, schedule, x_T, timesteps, progress=progress, **options)

        return sampler

    return build


def _unipc_preset(**preset):
    """Constructor for a UniPC configuration (multistep only); `order`, `skip_type`, `t_end` from the config win."""

    def build(sample_cfg, schedule):
        steps, options, skip_type, t_end = _options(dict(preset, method='multistep'), sample_cfg, schedule, 'UniPC')
        if options.pop('method') != 'multistep':
            raise UserError(f"UniPC is multistep only: sample.method must be 'multistep' or unset, got "
                            f"{sample_cfg.get('method')!r}")
        check_unipc_options(steps, options['order'], options['variant'], options['algorithm_type'])
        timesteps = time_grid(schedule, steps, 1.0, t_end, skip_type)
        progress = bool(sample_cfg.get('progress', False))

        def sampler(eps_fn, x_T, noise=None):
            return unipc(eps_fn, schedule, x_T, timesteps, progress=progress, **options)

        return sampler

    return build


def _euler_preset(ode):
    def build(sample_cfg, schedule):
        timesteps = euler_grid(_sample_steps(sample_cfg), _t_end(sample_cfg, schedule, EULER_T_END, 'Euler-Maruyama'))
        progress = bool(sample_cfg.get('progress', False))

        def sampler(eps_fn, x_T, noise=None):
            return euler_maruyama(eps_fn, schedule, x_T, timesteps, ode=ode, noise=noise, progress=progress)

        return sampler

    return build


def _ancestral_preset(variance):
    def build(sample_cfg, schedule):
        steps_grid = check_ancestral_options(schedule, _sample_steps(sample_cfg), variance)
        progress = bool(sample_cfg.get('progress', False))

        def sampler(eps_fn, x_T, noise=None):
            return ddpm_ancestral(eps_fn, schedule, x_T, steps_grid, variance=variance, noise=noise,
                                  progress=progress)

        return sampler

    return build


def _learned_ancestral_preset(sample_cfg, schedule):
    require_discrete(schedule, 'ddpm_ancestral_learned')
    steps_grid = ddpm_steps(schedule.num_steps, _sample_steps(sample_cfg))
    progress = bool(sample_cfg.get('progress', False))

    def sampler(model_fn, x_T, noise=None):
        return ddpm_ancestral_learned(model_fn, schedule, x_T, steps_grid, noise=noise, progress=progress)

    sampler.consumes = NOISE_AND_VARIANCE
    return sampler


def _ddim_preset(sample_cfg, schedule):
    require_discrete(schedule, 'ddim')
    steps_grid = ddpm_steps(schedule.num_steps, _sample_steps(sample_cfg))
    eta = float(sample_cfg.get('eta', 0.0))
    progress = bool(sample_cfg.get('progress', False))

    def sampler(eps_fn, x_T, noise=None):
        return ddim(eps_fn, schedule, x_T, steps_grid, eta=eta, noise=noise, progress=progress)

    return sampler


def _heun_preset(sample_cfg, schedule):
    """EDM's grid: (sample_steps + 1) // 2 noise levels (+1 for an even count) from t = 1 down to t_end on the
    rho-grid, then 0; exactly sample_steps evaluations."""
    nfe = _sample_steps(sample_cfg)
    euler_steps = 1 if nfe % 2 else 2
    steps = (nfe + euler_steps) // 2
    t_end = _t_end(sample_cfg, schedule, DPM_SOLVER_T_END, 'Heun')
    rho = float(sample_cfg.get('rho', 7.0) or 7.0)
    timesteps = (karras_grid(schedule, steps - 1, 1.0, t_end, rho) if steps > 1 else [1.0]) + [0.0]
    options = {key: float(sample_cfg.get(key, default)) for key, default in HEUN_CHURN.items()}
    progress = bool(sample_cfg.get('progress', False))

    def sampler(eps_fn, x_T, noise=None):
        return heun(eps_fn, schedule, x_T, timesteps, euler_steps=euler_steps, noise=noise, progress=progress,
                    **options)

    return sampler


# What a sampler's model function returns: eps, or eps and the learned variance output (2C channels).
NOISE, NOISE_AND_VARIANCE = 'noise', 'noise+variance'

# Heun's churn options and their defaults (deterministic; DDAE's configs set s_min 0.01, s_max 1, s_noise 1.007).
HEUN_CHURN = {'s_churn': 0.0, 's_min': 0.0, 's_max': 1e9, 's_noise': 1.0}

# Options beyond the common ones that change a sampler's samples (recorded with every score).
SAMPLER_OPTIONS = {'ddim': ('eta',), 'heun': ('rho',) + tuple(HEUN_CHURN)}

SAMPLERS = {
    # The U-ViT release's sampler: DPM-Solver-3 singlestep, noise prediction, uniform in log-SNR.
    'dpm_solver': _dpm_solver_preset(order=3, method='singlestep', algorithm_type='dpmsolver', skip_type='logSNR'),
    # DPM-Solver++(2M): multistep, second order, data prediction, uniform in log-SNR.
    'dpm_solver++': _dpm_solver_preset(order=2, method='multistep', algorithm_type='dpmsolver++',
                                       skip_type='logSNR'),
    'euler_maruyama_sde': _euler_preset(ode=False),
    'euler_maruyama_ode': _euler_preset(ode=True),
    # UniPC-3 (accuracy order 4 with its corrector), data prediction, uniform in log-SNR; B(h) = e^h - 1 or h.
    'unipc': _unipc_preset(order=3, variant='bh2', algorithm_type='dpmsolver++', skip_type='logSNR'),
    'unipc_bh1': _unipc_preset(order=3, variant='bh1', algorithm_type='dpmsolver++', skip_type='logSNR'),
    # Ho et al. 2020's ancestral sampling, sigma_n^2 = beta_n (their CIFAR-10 choice) or the posterior variance.
    'ddpm_ancestral': _ancestral_preset('beta'),
    'ddpm_ancestral_beta_tilde': _ancestral_preset('beta_tilde'),
    # The same over the learned variance of Nichol & Dhariwal 2021 (DiT's sampler, on a respaced chain).
    'ddpm_ancestral_learned': _learned_ancestral_preset,
    # DDIM on evenly spaced steps of the chain; eta = 0: deterministic.
    'ddim': _ddim_preset,
    # EDM's second-order sampler (Karras et al. 2022, Algorithm 2) on its rho-grid.
    'heun': _heun_preset,
}


def build_sampler(sample_cfg, schedule):
    """sampler(eps_fn, x_T, noise=None) -> x_0 for config.sample (a ConfigDict, read with .get) and a schedule,
    with ``consumes`` (NOISE or NOISE_AND_VARIANCE) and ``guided_channels`` (0: all) set."""
    algorithm = sample_cfg.get('algorithm', None)
    if algorithm not in SAMPLERS:
        raise UserError(f'unknown sample.algorithm {algorithm!r}; known: {", ".join(SAMPLERS)}')
    channels = sample_cfg.get('guided_channels', 0) or 0
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 0:
        raise UserError(f'sample.guided_channels must be an integer >= 0 (0: guide all channels), got {channels!r}')
    sampler = SAMPLERS[algorithm](sample_cfg, schedule)
    sampler.consumes = getattr(sampler, 'consumes', NOISE)
    sampler.guided_channels = channels
    return sampler


__all__ = ['NOISE', 'NOISE_AND_VARIANCE', 'SAMPLERS', 'SAMPLER_OPTIONS', 'TIME_GRIDS', 'build_sampler', 'ddim',
           'ddpm_ancestral', 'ddpm_ancestral_learned', 'ddpm_steps',
           'dpm_solver', 'euler_grid', 'euler_maruyama', 'heun', 'karras_grid', 'singlestep_grid',
           'singlestep_orders', 'time_grid', 'unipc']
