"""Convergence of the samplers on Gaussian data, where the probability-flow ODE has a closed-form solution.

x_0 ~ N(m, s^2) per dimension under the VP SDE: eps*(x, t) = sigma (x - alpha m) / (alpha^2 s^2 + sigma^2), and
(x_t - alpha_t m) / sqrt(alpha_t^2 s^2 + sigma_t^2) is constant along ODE trajectories. Writes a log-log plot of
the RMS error at the end time against the number of network evaluations (NFE) and prints the fitted slopes
(the measured orders) as a markdown table.

    python scripts/plot_solver_convergence.py [--out docs/solver_convergence.png]
"""
import argparse
import os
import sys

import matplotlib
import matplotlib.ticker
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402

from libs.diffusion.samplers import build_sampler  # noqa: E402
from libs.diffusion.schedules import VPSDE  # noqa: E402

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

F64 = torch.float64
NFES = [12, 24, 48, 96, 192, 384, 768]
FIT_FROM = 96  # slopes are fitted over NFE >= FIT_FROM, where every solver is in its asymptotic range
# (label, order, method, algorithm_type); order 1 is the same solver (DDIM) for all four variants.
# Multistep solvers are drawn solid, singlestep ones dashed, Euler dotted.
DPM_CONFIGS = [
    ('DDIM = DPM-Solver-1', 1, 'multistep', 'dpmsolver'),
    ('DPM-Solver-2S', 2, 'singlestep', 'dpmsolver'),
    ('DPM-Solver-3S (release preset)', 3, 'singlestep', 'dpmsolver'),
    ('DPM-Solver-2M', 2, 'multistep', 'dpmsolver'),
    ('DPM-Solver-3M', 3, 'multistep', 'dpmsolver'),
    ('DPM-Solver++(2S)', 2, 'singlestep', 'dpmsolver++'),
    ('DPM-Solver++(3S)', 3, 'singlestep', 'dpmsolver++'),
    ('DPM-Solver++(2M) (dpm_solver++ preset)', 2, 'multistep', 'dpmsolver++'),
    ('DPM-Solver++(3M)', 3, 'multistep', 'dpmsolver++'),
]


class Gaussian:
    def __init__(self, schedule, m, s):
        self.schedule, self.m, self.s = schedule, torch.tensor(m, dtype=F64), torch.tensor(s, dtype=F64)

    def scales(self, t):
        t = torch.as_tensor(t, dtype=F64)
        return self.schedule.alpha(t).reshape(-1, 1), self.schedule.sigma(t).reshape(-1, 1)

    def eps(self, x, t):
        alpha, sigma = self.scales(t)
        return sigma * (x - alpha * self.m) / (alpha ** 2 * self.s ** 2 + sigma ** 2)

    def ode_solution(self, x, t_start, t_end):
        a0, s0 = self.scales(t_start)
        a1, s1 = self.scales(t_end)
        return a1 * self.m + torch.sqrt(a1 ** 2 * self.s ** 2 + s1 ** 2) * (x - a0 * self.m) / torch.sqrt(
            a0 ** 2 * self.s ** 2 + s0 ** 2)

    def euler_target(self, x, t_end):
        """The exact x(t_end) followed by the Euler sampler's last, noiseless drift step from t_end to 0."""
        exact = self.ode_solution(x, 1.0, t_end)
        t = torch.tensor(t_end, dtype=F64)
        f, g2 = (v.item() for v in self.schedule.sde_coefficients(t))
        eps = self.eps(exact, torch.full((x.shape[0],), t_end, dtype=F64))
        return exact - t_end * (f * exact + 0.5 * g2 * eps / self.schedule.sigma(t).item())


STYLES = {label: '--' for label, _, method, _ in DPM_CONFIGS if method == 'singlestep'}
STYLES['Euler (probability-flow ODE)'] = ':'


def rms(a, b):
    return (a - b).pow(2).mean().sqrt().item()


def slope(nfes, errors):
    keep = [i for i, n in enumerate(nfes) if n >= FIT_FROM]
    return -np.polyfit(np.log([nfes[i] for i in keep]), np.log([errors[i] for i in keep]), 1)[0]


# The sampler preset of each DPM-Solver type; order and method are the preset's overrides.
PRESETS = {'dpmsolver': 'dpm_solver', 'dpmsolver++': 'dpm_solver++'}


def solve(schedule, eps_fn, x, **sample_cfg):
    """x at the end of the sampler that config.sample = ``sample_cfg`` builds (the grid as the presets build it)."""
    return build_sampler(ml_collections.ConfigDict(sample_cfg), schedule)(eps_fn, x)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default=os.path.join('docs', 'solver_convergence.png'))
    args = parser.parse_args()
    torch.set_num_threads(1)

    schedule = VPSDE()
    problem = Gaussian(schedule, m=[0.5, -0.3, 0.2, 0.0], s=[0.05, 0.2, 0.8, 1.5])
    x = torch.randn(16, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    t_ends = [1e-3, 0.3]

    results = {}  # label -> {t_end: errors}
    for label, order, method, algorithm_type in DPM_CONFIGS:
        for t_end in t_ends:
            exact = problem.ode_solution(x, 1.0, t_end)
            results.setdefault(label, {})[t_end] = [
                rms(solve(schedule, problem.eps, x, algorithm=PRESETS[algorithm_type], sample_steps=n, order=order,
                          method=method, t_end=t_end), exact) for n in NFES]
    target = problem.euler_target(x, 1e-3)
    results['Euler (probability-flow ODE)'] = {1e-3: [
        rms(solve(schedule, problem.eps, x, algorithm='euler_maruyama_ode', sample_steps=n, t_end=1e-3), target)
        for n in NFES]}

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    for ax, t_end in zip(axes, t_ends):
        for i, (label, errors) in enumerate(results.items()):
            if t_end in errors:
                style = STYLES.get(label, '-')
                ax.loglog(NFES, errors[t_end], style, marker='o', ms=3, color=f'C{i}', label=label)
        ax.set_xticks(NFES, [str(n) for n in NFES])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel('NFE (network evaluations)')
        ax.set_title(f'VP SDE, t = 1 -> {t_end:g}')
        ax.grid(True, which='both', alpha=0.3)
    axes[0].set_ylabel('RMS error of x(t_end) vs the exact ODE solution')
    axes[0].legend(fontsize=8)
    fig.suptitle('Gaussian data, m = (0.5, -0.3, 0.2, 0), s = (0.05, 0.2, 0.8, 1.5), float64')
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
    fig.savefig(args.out, dpi=110)

    print('| solver | order | slope, t = 1 -> 1e-3 | slope, t = 1 -> 0.3 | error at NFE 48, t_end = 1e-3 |')
    print('|---|---|---|---|---|')
    orders = {label: order for label, order, _, _ in DPM_CONFIGS}
    orders['Euler (probability-flow ODE)'] = 1
    for label, errors in results.items():
        generic = f'{slope(NFES, errors[0.3]):.2f}' if 0.3 in errors else '-'
        print(f'| {label} | {orders[label]} | {slope(NFES, errors[1e-3]):.2f} | {generic} | '
              f'{errors[1e-3][NFES.index(48)]:.1e} |')
    print(f'\nslopes: least-squares fit of log(error) on log(NFE) over NFE {FIT_FROM}..{NFES[-1]}; wrote {args.out}')


if __name__ == '__main__':
    main()
