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

SiT's samplers (flow.py) consume the flow velocity (``sampler.consumes == 'velocity'``): ``flow_euler`` and
``flow_heun`` (the probability-flow ODE, uniform in t, ``sample_steps`` evaluations; an odd count gives Heun one
Euler step first) and ``flow_sde`` (Euler-Maruyama with ``diffusion_form``, ``diffusion_norm``, ``last_step``,
``last_step_size``; ``sample_steps`` evaluations with the last step, as SiT counts its 250). They run on every
schedule.

Where samplers start: ``t_start`` (0 or unset: the default). The log-SNR solvers (DPM-Solver, UniPC), EDM's Heun
and Euler-Maruyama need a finite lambda and start at the schedule's ``t_max``: 1, and 1 - 1e-3 on the flow paths,
whose alpha(1) = 0 (SiT's sample_eps; the prior N(0, I) is taken as the state there, as the VP SDE takes it at
t = 1 where alpha = 0.0066). SiT's samplers start at the start of the framework's ``sampling_range()`` (``model_range`` here): 1,
or ``t_max`` for a noise or score model on a flow path (and SBDM's SDE, whose w is infinite at alpha = 0);
``flow_heun`` and ``flow_dopri5``, whose last evaluation is at their end, end at the end of that range (0 on the flow paths, the schedule's t_min where the
velocity is infinite at t = 0), the others at 0. ``guidance_interval`` (empty: guide everywhere) is carried as
``sampler.guidance_interval``, (lo, hi) in sigma / alpha (libs/diffusion/guidance.py).

Adding a sampler: write its function here (one file), then one line in SAMPLERS with a preset that builds its
grid from the config.
"""
from libs.diffusion.samplers.ancestral import (check_options as check_ancestral_options, ddpm_ancestral,
                                               ddpm_ancestral_learned, require_discrete)
from libs.diffusion.samplers.dpm_solver import check_options, dpm_solver, singlestep_grid, singlestep_orders
from libs.diffusion.samplers.ddim import ddim
from libs.diffusion.guidance import guidance_interval
from libs.diffusion.samplers.euler_maruyama import euler_grid, euler_maruyama
from libs.diffusion.samplers.flow import check_sde_options, flow_dopri5, flow_ode, flow_sde
from libs.diffusion.samplers.grids import TIME_GRIDS, ddpm_steps, karras_grid, time_grid, time_uniform_grid
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


def _t_start(sample_cfg, default: float, t_end: float, name: str) -> float:
    """The config's ``t_start``, or ``default`` when unset; UserError outside (t_end, 1]."""
    t_start = _override(sample_cfg, 't_start')
    t_start = default if not t_start else float(t_start)
    if not t_end < t_start <= 1.0:
        raise UserError(f'{name} needs t_end < sample.t_start <= 1, got t_start={t_start}, t_end={t_end}')
    return t_start


def _options(preset, sample_cfg, schedule, name):
    """(steps, options, skip_type, t_start, t_end): the preset's options with the config's `order`, `method`,
    `skip_type`, `t_start` and `t_end` overrides applied, the grid options checked; the default start is the
    schedule's t_max."""
    steps = _sample_steps(sample_cfg)
    options = dict(preset)
    for key in ('order', 'method', 'skip_type'):
        value = _override(sample_cfg, key)
        if value is not None:
            options[key] = value
    skip_type = options.pop('skip_type')
    if skip_type not in TIME_GRIDS:
        raise UserError(f'unknown {name} skip_type {skip_type!r}; known: {", ".join(TIME_GRIDS)}')
    t_end = _t_end(sample_cfg, schedule, DPM_SOLVER_T_END, name)
    return steps, options, skip_type, _t_start(sample_cfg, schedule.t_max, t_end, name), t_end


def _dpm_solver_preset(**preset):
    """Constructor for a DPM-Solver configuration; `order`, `method`, `skip_type`, `t_end` from the config win."""

    def build(sample_cfg, schedule, model_range):
        steps, options, skip_type, t_start, t_end = _options(preset, sample_cfg, schedule, 'DPM-Solver')
        check_options(steps, options['order'], options['method'], options['algorithm_type'])
        if options['method'] == 'singlestep':
            timesteps, options['orders'] = singlestep_grid(schedule, steps, options['order'], t_start, t_end,
                                                           skip_type)
        else:
            timesteps = time_grid(schedule, steps, t_start, t_end, skip_type)
        progress = bool(sample_cfg.get('progress', False))

        def sampler(eps_fn, x_T, noise=None):
            return dpm_solver(eps_fn, schedule, x_T, timesteps, progress=progress, **options)

        return sampler

    return build


def _unipc_preset(**preset):
    """Constructor for a UniPC configuration (multistep only); `order`, `skip_type`, `t_end` from the config win."""

    def build(sample_cfg, schedule, model_range):
        steps, options, skip_type, t_start, t_end = _options(dict(preset, method='multistep'), sample_cfg, schedule,
                                                             'UniPC')
        if options.pop('method') != 'multistep':
            raise UserError(f"UniPC is multistep only: sample.method must be 'multistep' or unset, got "
                            f"{sample_cfg.get('method')!r}")
        check_unipc_options(steps, options['order'], options['variant'], options['algorithm_type'])
        timesteps = time_grid(schedule, steps, t_start, t_end, skip_type)
        progress = bool(sample_cfg.get('progress', False))

        def sampler(eps_fn, x_T, noise=None):
            return unipc(eps_fn, schedule, x_T, timesteps, progress=progress, **options)

        return sampler

    return build


def _euler_preset(ode):
    def build(sample_cfg, schedule, model_range):
        t_end = _t_end(sample_cfg, schedule, EULER_T_END, 'Euler-Maruyama')
        t_start = _t_start(sample_cfg, schedule.t_max, t_end, 'Euler-Maruyama')
        timesteps = euler_grid(_sample_steps(sample_cfg), t_end, t_start)
        progress = bool(sample_cfg.get('progress', False))

        def sampler(eps_fn, x_T, noise=None):
            return euler_maruyama(eps_fn, schedule, x_T, timesteps, ode=ode, noise=noise, progress=progress)

        return sampler

    return build


def _ancestral_preset(variance):
    def build(sample_cfg, schedule, model_range):
        steps_grid = check_ancestral_options(schedule, _sample_steps(sample_cfg), variance)
        progress = bool(sample_cfg.get('progress', False))

        def sampler(eps_fn, x_T, noise=None):
            return ddpm_ancestral(eps_fn, schedule, x_T, steps_grid, variance=variance, noise=noise,
                                  progress=progress)

        return sampler

    return build


def _learned_ancestral_preset(sample_cfg, schedule, model_range):
    require_discrete(schedule, 'ddpm_ancestral_learned')
    steps_grid = ddpm_steps(schedule.num_steps, _sample_steps(sample_cfg))
    progress = bool(sample_cfg.get('progress', False))

    def sampler(model_fn, x_T, noise=None):
        return ddpm_ancestral_learned(model_fn, schedule, x_T, steps_grid, noise=noise, progress=progress)

    sampler.consumes = NOISE_AND_VARIANCE
    return sampler


def _ddim_preset(sample_cfg, schedule, model_range):
    require_discrete(schedule, 'ddim')
    steps_grid = ddpm_steps(schedule.num_steps, _sample_steps(sample_cfg))
    eta = float(sample_cfg.get('eta', 0.0))
    progress = bool(sample_cfg.get('progress', False))

    def sampler(eps_fn, x_T, noise=None):
        return ddim(eps_fn, schedule, x_T, steps_grid, eta=eta, noise=noise, progress=progress)

    return sampler


def _heun_preset(sample_cfg, schedule, model_range):
    """EDM's grid: (sample_steps + 1) // 2 noise levels (+1 for an even count) from t_start (the schedule's t_max)
    down to t_end on the rho-grid, then 0; exactly sample_steps evaluations."""
    nfe = _sample_steps(sample_cfg)
    euler_steps = 1 if nfe % 2 else 2
    steps = (nfe + euler_steps) // 2
    t_end = _t_end(sample_cfg, schedule, DPM_SOLVER_T_END, 'Heun')
    t_start = _t_start(sample_cfg, schedule.t_max, t_end, 'Heun')
    rho = float(sample_cfg.get('rho', 7.0) or 7.0)
    timesteps = (karras_grid(schedule, steps - 1, t_start, t_end, rho) if steps > 1 else [t_start]) + [0.0]
    options = {key: float(sample_cfg.get(key, default)) for key, default in HEUN_CHURN.items()}
    progress = bool(sample_cfg.get('progress', False))

    def sampler(eps_fn, x_T, noise=None):
        return heun(eps_fn, schedule, x_T, timesteps, euler_steps=euler_steps, noise=noise, progress=progress,
                    **options)

    return sampler


def _flow_end(sample_cfg, default: float = 0.0) -> float:
    t_end = float(_override(sample_cfg, 't_end') or default)
    if not 0.0 <= t_end < 1.0:
        raise UserError(f"SiT's samplers need 0 <= sample.t_end < 1 (0: the data), got {t_end}")
    return t_end


def _flow_ode_preset(method):
    """SiT's ODE: ``sample_steps`` evaluations on a grid uniform in t from t_start to t_end (Euler: 0; Heun, which
    evaluates there: the end of the model's range)."""

    def build(sample_cfg, schedule, model_range):
        nfe = _sample_steps(sample_cfg)
        t_end = _flow_end(sample_cfg, model_range[1] if method == 'heun' else 0.0)
        t_start = _t_start(sample_cfg, model_range[0], t_end, f'flow_{method}')
        steps, euler_steps = ((nfe + 1) // 2, nfe % 2) if method == 'heun' else (nfe, 0)
        timesteps = time_uniform_grid(schedule, steps, t_start, t_end)
        progress = bool(sample_cfg.get('progress', False))

        def sampler(velocity_fn, x_T, noise=None):
            return flow_ode(velocity_fn, x_T, timesteps, method, euler_steps, progress=progress)

        sampler.consumes = VELOCITY
        return sampler

    return build


def _flow_dopri5_preset(sample_cfg, schedule, model_range):
    """SiT's default ODE solver: adaptive Dormand-Prince 5(4) from t_start to t_end (default: the model's range, as
    Heun) at ``sample.atol`` and ``sample.rtol``; ``sample_steps`` is the most evaluations a sample may take."""
    nfe = _sample_steps(sample_cfg)
    t_end = _flow_end(sample_cfg, model_range[1])
    t_start = _t_start(sample_cfg, model_range[0], t_end, 'flow_dopri5')
    atol, rtol = float(sample_cfg.get('atol', 1e-6)), float(sample_cfg.get('rtol', 1e-3))
    if nfe < 8:
        raise UserError(f'flow_dopri5 takes at least 8 evaluations (its first step and one Dormand-Prince step): '
                        f'sample.sample_steps={nfe}')
    progress = bool(sample_cfg.get('progress', False))

    def sampler(velocity_fn, x_T, noise=None):
        return flow_dopri5(velocity_fn, x_T, t_start, t_end, atol, rtol, nfe, progress=progress)[0]

    sampler.consumes, sampler.adaptive = VELOCITY, True
    return sampler


def _flow_sde_preset(sample_cfg, schedule, model_range):
    """SiT's SDE: with a last step, sample_steps - 1 Euler-Maruyama steps uniform in t from t_start to
    last_step_size and the last step to 0 (SiT's 250 = 249 + 1); without one, sample_steps steps to t_end."""
    nfe = _sample_steps(sample_cfg)
    form = sample_cfg.get('diffusion_form', 'sigma')
    norm = float(sample_cfg.get('diffusion_norm', 1.0))
    last_step = sample_cfg.get('last_step', 'Mean') or ''
    check_sde_options(form, norm, last_step)
    if last_step:
        t_end, steps = float(sample_cfg.get('last_step_size', 0.04)), nfe - 1
        if not 0.0 < t_end < 1.0 or steps < 1:
            raise UserError(f"SiT's SDE with a last step needs 0 < sample.last_step_size < 1 and sample_steps >= 2, "
                            f'got last_step_size={t_end}, sample_steps={nfe}')
    else:
        t_end, steps = _flow_end(sample_cfg), nfe
    default_start = model_range[0]
    if form == 'SBDM':   # w = g^2 / 2 is infinite where alpha = 0
        default_start = min(default_start, schedule.t_max)
    timesteps = time_uniform_grid(schedule, steps, _t_start(sample_cfg, default_start, t_end, 'flow_sde'), t_end)
    progress = bool(sample_cfg.get('progress', False))

    def sampler(velocity_fn, x_T, noise=None):
        return flow_sde(velocity_fn, schedule, x_T, timesteps, form, norm, last_step, noise=noise, progress=progress)

    sampler.consumes = VELOCITY
    return sampler


# What a sampler's model function returns: eps, eps and the learned variance output (2C channels), or the flow
# velocity.
NOISE, NOISE_AND_VARIANCE, VELOCITY = 'noise', 'noise+variance', 'velocity'

# Heun's churn options and their defaults (deterministic; DDAE's configs set s_min 0.01, s_max 1, s_noise 1.007).
HEUN_CHURN = {'s_churn': 0.0, 's_min': 0.0, 's_max': 1e9, 's_noise': 1.0}

# Options beyond the common ones that change a sampler's samples (recorded with every score).
SAMPLER_OPTIONS = {'ddim': ('eta',), 'heun': ('rho',) + tuple(HEUN_CHURN),
                   'flow_sde': ('diffusion_form', 'diffusion_norm', 'last_step', 'last_step_size'),
                   'flow_dopri5': ('atol', 'rtol')}

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
    # SiT's samplers over the flow velocity (Ma et al. 2024): its ODE by Euler or Heun, uniform in t, and its SDE.
    'flow_euler': _flow_ode_preset('euler'),
    'flow_heun': _flow_ode_preset('heun'),
    'flow_sde': _flow_sde_preset,
    # SiT's default ODE solver: adaptive Dormand-Prince 5(4) at its tolerances.
    'flow_dopri5': _flow_dopri5_preset,
}


def build_sampler(sample_cfg, schedule, model_range=None):
    """sampler(model_fn, x_T, noise=None) -> x_0 for config.sample (a ConfigDict, read with .get) and a schedule,
    with ``consumes`` (NOISE, NOISE_AND_VARIANCE or VELOCITY), ``guided_channels`` (0: all),
    ``guidance_interval`` ((lo, hi) or None) and ``adaptive`` (True: ``sample_steps`` is the most evaluations, not
    their number) set. ``model_range``: (start, end), the times between which the model
    can be evaluated (the framework's ``sampling_range``), where SiT's samplers start and Heun's ends by default;
    None: (1, the schedule's t_min)."""
    algorithm = sample_cfg.get('algorithm', None)
    if algorithm not in SAMPLERS:
        raise UserError(f'unknown sample.algorithm {algorithm!r}; known: {", ".join(SAMPLERS)}')
    channels = sample_cfg.get('guided_channels', 0) or 0
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 0:
        raise UserError(f'sample.guided_channels must be an integer >= 0 (0: guide all channels), got {channels!r}')
    interval = guidance_interval(sample_cfg)
    sampler = SAMPLERS[algorithm](sample_cfg, schedule, model_range or (1.0, schedule.t_min))
    sampler.consumes = getattr(sampler, 'consumes', NOISE)
    sampler.adaptive = getattr(sampler, 'adaptive', False)
    sampler.guided_channels = channels
    sampler.guidance_interval = interval
    return sampler


__all__ = ['NOISE', 'NOISE_AND_VARIANCE', 'SAMPLERS', 'SAMPLER_OPTIONS', 'TIME_GRIDS', 'VELOCITY', 'build_sampler',
           'ddim', 'ddpm_ancestral', 'ddpm_ancestral_learned', 'ddpm_steps', 'dpm_solver', 'euler_grid',
           'euler_maruyama', 'flow_dopri5', 'flow_ode', 'flow_sde', 'heun', 'karras_grid', 'singlestep_grid',
           'singlestep_orders', 'time_grid', 'unipc']
