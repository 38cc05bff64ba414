"""Convergence and few-step accuracy of the samplers on Gaussian data, where the probability-flow ODE has a
closed-form solution.

x_0 ~ N(m, s^2) per dimension under the VP SDE: eps*(x, t) = sigma (x - alpha m) / (alpha^2 s^2 + sigma^2), and
(x_t - alpha_t m) / sqrt(alpha_t^2 s^2 + sigma_t^2) is constant along ODE trajectories (the closed form is
tests/test_samplers.py's Gaussian; the accuracy problem and its configurations are tests/test_solver_accuracy.py's).

- convergence: log-log plot of the RMS error at the end time against the number of network evaluations (NFE), 12
  to 768, and the fitted slopes (the measured orders) as a markdown table;
- accuracy: issue 10's problem (N(0.5, 0.3^2), 4096 x (1, 2, 2) starting points, t = 1 -> the preset's end): the
  error of every deterministic preset and order-3 override at NFE 5, 10, 20, 50 as a markdown table, and a plot
  over NFE 5..50.

    python scripts/plot_solver_convergence.py [--figure both|convergence|accuracy] [--out docs/solver_convergence.png]
        [--accuracy-out docs/solver_accuracy.png]
"""
import argparse
import os
import sys

import matplotlib
import matplotlib.ticker
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, 'tests')]

import ml_collections  # noqa: E402

from libs.diffusion.samplers import build_sampler  # noqa: E402
from libs.diffusion.schedules import VPSDE  # noqa: E402
from test_samplers import MEANS, STDS, Gaussian  # noqa: E402
from test_solver_accuracy import NFES, accuracy_problem, configurations, endpoint_error  # noqa: E402

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

F64 = torch.float64
CONVERGENCE_NFES = [12, 24, 48, 96, 192, 384, 768]
FIT_FROM = 96  # slopes are fitted over NFE >= FIT_FROM, where every solver is in its asymptotic range
# (label, order of accuracy, config.sample overrides); order 1 is the same solver (DDIM) for both DPM-Solver types.
CONVERGENCE_CONFIGS = [
    ('DDIM = DPM-Solver-1', 1, dict(algorithm='dpm_solver', order=1, method='multistep')),
    ('DPM-Solver-2S', 2, dict(algorithm='dpm_solver', order=2, method='singlestep')),
    ('DPM-Solver-3S (dpm_solver preset)', 3, dict(algorithm='dpm_solver', order=3, method='singlestep')),
    ('DPM-Solver-2M', 2, dict(algorithm='dpm_solver', order=2, method='multistep')),
    ('DPM-Solver-3M', 3, dict(algorithm='dpm_solver', order=3, method='multistep')),
    ('DPM-Solver++(2S)', 2, dict(algorithm='dpm_solver++', order=2, method='singlestep')),
    ('DPM-Solver++(3S)', 3, dict(algorithm='dpm_solver++', order=3, method='singlestep')),
    ('DPM-Solver++(2M) (dpm_solver++ preset)', 2, dict(algorithm='dpm_solver++', order=2, method='multistep')),
    ('DPM-Solver++(3M)', 3, dict(algorithm='dpm_solver++', order=3, method='multistep')),
    ('UniPC-1 (bh2, data prediction)', 2, dict(algorithm='unipc', order=1)),
    ('UniPC-2 (bh2, data prediction)', 3, dict(algorithm='unipc', order=2)),
    ('UniPC-3 (unipc preset)', 4, dict(algorithm='unipc', order=3)),
]
EULER = 'Euler (probability-flow ODE)'
# Beyond the deterministic presets and order-3 overrides of tests/test_solver_accuracy.py, the accuracy table shows
# these second-order overrides.
ACCURACY_EXTRA = {'dpm_solver method=multistep order=2': dict(algorithm='dpm_solver', method='multistep', order=2),
                  'unipc order=2': dict(algorithm='unipc', order=2),
                  'unipc_bh1 order=2': dict(algorithm='unipc_bh1', order=2)}
ACCURACY_PLOT_NFES = [5, 6, 7, 8, 9, 10, 12, 15, 20, 25, 30, 40, 50]


def rms(a, b):
    return (a - b).pow(2).mean().sqrt().item()


def slope(nfes, errors):
    keep = [i for i, n in enumerate(nfes) if n >= FIT_FROM]
    return -np.polyfit(np.log([nfes[i] for i in keep]), np.log([errors[i] for i in keep]), 1)[0]


def solve(schedule, eps_fn, x, **sample_cfg):
    """x at the end of the sampler that config.sample = ``sample_cfg`` builds (the grid as the presets build it)."""
    return build_sampler(ml_collections.ConfigDict(sample_cfg), schedule)(eps_fn, x)


def euler_target(problem, x, t_end):
    """The exact x(t_end) followed by the Euler sampler's last, noiseless drift step from t_end to 0."""
    exact = problem.ode_solution(x, 1.0, t_end)
    t = torch.tensor(t_end, dtype=F64)
    f, g2 = (v.item() for v in problem.schedule.sde_coefficients(t))
    eps = problem.eps(exact, torch.full((x.shape[0],), t_end, dtype=F64))
    return exact - t_end * (f * exact + 0.5 * g2 * eps / problem.schedule.sigma(t).item())


def style(cfg):
    """Line style of a configuration: Euler dotted, UniPC dash-dotted, singlestep dashed, multistep solid."""
    if cfg['algorithm'].startswith('euler'):
        return ':'
    if cfg['algorithm'].startswith('unipc'):
        return '-.'
    singlestep = cfg.get('method', 'singlestep' if cfg['algorithm'] == 'dpm_solver' else 'multistep')
    return '--' if singlestep == 'singlestep' else '-'


def convergence(out_path):
    schedule = VPSDE()
    problem = Gaussian(schedule, m=MEANS, s=STDS)
    x = torch.randn(16, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    t_ends = [1e-3, 0.3]

    results = {}  # label -> {t_end: errors}
    cfgs = {label: cfg for label, _, cfg in CONVERGENCE_CONFIGS}
    cfgs[EULER] = dict(algorithm='euler_maruyama_ode')
    for label, _, cfg in CONVERGENCE_CONFIGS:
        for t_end in t_ends:
            exact = problem.ode_solution(x, 1.0, t_end)
            results.setdefault(label, {})[t_end] = [
                rms(solve(schedule, problem.eps, x, sample_steps=n, t_end=t_end, **cfg), exact)
                for n in CONVERGENCE_NFES]
    target = euler_target(problem, x, 1e-3)
    results[EULER] = {1e-3: [
        rms(solve(schedule, problem.eps, x, algorithm='euler_maruyama_ode', sample_steps=n, t_end=1e-3), target)
        for n in CONVERGENCE_NFES]}

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    for ax, t_end in zip(axes, t_ends):
        for i, (label, errors) in enumerate(results.items()):
            if t_end in errors:
                ax.loglog(CONVERGENCE_NFES, errors[t_end], style(cfgs[label]), marker='o', ms=3,
                          color=f'C{i % 10}', label=label)
        ax.set_xticks(CONVERGENCE_NFES, [str(n) for n in CONVERGENCE_NFES])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel('NFE (network evaluations)')
        ax.set_title(f'VP SDE, t = 1 -> {t_end:g}')
        ax.grid(True, which='both', alpha=0.3)
    axes[0].set_ylabel('RMS error of x(t_end) vs the exact ODE solution')
    axes[0].legend(fontsize=7)
    fig.suptitle('Gaussian data, m = (0.5, -0.3, 0.2, 0), s = (0.05, 0.2, 0.8, 1.5), float64')
    fig.tight_layout()
    os.makedirs(os.path.dirname(out_path) or '.', exist_ok=True)
    fig.savefig(out_path, dpi=110)

    print('| solver | order | slope, t = 1 -> 1e-3 | slope, t = 1 -> 0.3 | error at NFE 48, t_end = 1e-3 |')
    print('|---|---|---|---|---|')
    orders = {label: order for label, order, _ in CONVERGENCE_CONFIGS}
    orders[EULER] = 1
    for label, errors in results.items():
        generic = f'{slope(CONVERGENCE_NFES, errors[0.3]):.2f}' if 0.3 in errors else '-'
        print(f'| {label} | {orders[label]} | {slope(CONVERGENCE_NFES, errors[1e-3]):.2f} | {generic} | '
              f'{errors[1e-3][CONVERGENCE_NFES.index(48)]:.1e} |')
    print(f'\nslopes: least-squares fit of log(error) on log(NFE) over NFE {FIT_FROM}..{CONVERGENCE_NFES[-1]}; '
          f'wrote {out_path}\n')


def accuracy(out_path):
    problem, x = accuracy_problem()
    configs = dict(configurations(problem, x), **ACCURACY_EXTRA)
    errors = {label: [endpoint_error(problem, x, cfg, n) for n in ACCURACY_PLOT_NFES]
              for label, cfg in configs.items()}

    fig, ax = plt.subplots(figsize=(9, 6))
    for i, (label, errs) in enumerate(errors.items()):
        ax.loglog(ACCURACY_PLOT_NFES, errs, style(configs[label]), marker='o', ms=3, color=f'C{i % 10}',
                  label=label)
    ax.set_xticks(ACCURACY_PLOT_NFES, [str(n) for n in ACCURACY_PLOT_NFES])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel('NFE (network evaluations)')
    ax.set_ylabel('RMS error of the endpoint vs the exact ODE solution')
    ax.set_title('Presets and order-3 overrides: N(0.5, 0.3^2) data, VP SDE, t = 1 -> 1e-4 (Euler: -> 0), float64')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(out_path) or '.', exist_ok=True)
    fig.savefig(out_path, dpi=110)

    print('| configuration | ' + ' | '.join(f'NFE {n}' for n in NFES) + ' |')
    print('|---|' + '---|' * len(NFES))
    for label, errs in errors.items():
        print(f'| `{label}` | ' + ' | '.join(f'{errs[ACCURACY_PLOT_NFES.index(n)]:.2e}' for n in NFES) + ' |')
    print(f'\nwrote {out_path}')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--figure', choices=('both', 'convergence', 'accuracy'), default='both')
    parser.add_argument('--out', default=os.path.join('docs', 'solver_convergence.png'))
    parser.add_argument('--accuracy-out', default=os.path.join('docs', 'solver_accuracy.png'))
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.figure in ('both', 'convergence'):
        convergence(args.out)
    if args.figure in ('both', 'accuracy'):
        accuracy(args.accuracy_out)


if __name__ == '__main__':
    main()
