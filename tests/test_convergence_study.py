"""scripts/convergence_study.py's aggregation on a made-up study: the mean and spread over seeds per recipe and step,
the goal checks and the tables (the runs themselves are a benchmark, BENCHMARKS.md)."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location('convergence_study', os.path.join(ROOT, 'scripts', 'convergence_study.py'))
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)

SEEDS = (1234, 2, 3)


def record(recipe, seed, n_steps, scores, probe=None, cpu=100.0, alignment=None, kind='study'):
    """A run's record as Study writes it: scores {step: (accuracy, Frechet distance)}."""
    log = {'diffusion_loss': [[50, 0.2], [250, 0.1]]}
    if alignment:
        log['alignment'] = alignment
    return dict(run=dict(recipe=recipe, seed=seed, n_steps=n_steps, scored=sorted(scores), kind=kind),
                jobs={'train': [dict(returncode=0, cpu_s=cpu, wall_s=2 * cpu)],
                      'score_250': [dict(returncode=0, cpu_s=5.0, wall_s=9.0)]},
                scores={str(s): dict(digits_accuracy=a, digits_frechet_distance=f) for s, (a, f) in scores.items()},
                probe=dict(level=dict(index=57, sigma=0.06), **(probe or {'block_0': 0.5, 'block_1': 0.6})),
                probes={str(s): probe or {'block_0': 0.5, 'block_1': 0.6} for s in scores},
                training_log=log)


@pytest.fixture(scope='module')
def summary():
    runs = []
    for i, seed in enumerate(SEEDS):
        # the default: accuracy 0.90 / 0.95 / 1.00 (mean 0.95, sd 0.05), Frechet 20 / 22 / 24 (mean 22, sd 2)
        runs.append(record('digits_uvit_tiny', seed, 2000, {250: (0.1 * i, 900.0), 2000: (0.9 + 0.05 * i, 20 + 2 * i)},
                           cpu=100.0 + 10 * i))
        runs.append(record('digits_uvit_repa', seed, 2000, {250: (0.2, 800.0), 2000: (0.97, 18.0)},
                           probe={'block_0': 0.5 + 0.1 * i, 'block_1': 0.7}, cpu=120.0,
                           alignment=[[200, 0.3 + 0.1 * i], [250, 0.5 + 0.1 * i], [300, 0.0], [2000, 0.9]]))
        runs.append(record('digits_sit', seed, 2000, {250: (0.3, 500.0), 2000: (0.96, 13.0)}))
        # the goal run at half the steps: accuracy within the default's spread, Frechet distance not
        runs.append(record('digits_uvit_repa', seed, 1000, {1000: (0.93 + 0.01 * i, 25.0 + i)}, cpu=60.0, kind='goal'))
    results = dict(settings=dict(recipes=list(study.RECIPES)[:3], seeds=list(SEEDS), steps=[250, 2000],
                                 goal_recipe='digits_uvit_repa', probe_sigma=0.06, log_window=250),
                   machine=dict(cpu='AMD EPYC'), runs=runs)
    return study.summarize(results)


def test_mean_and_spread_over_seeds_per_recipe_and_step(summary):
    default = summary['recipes']['digits_uvit_tiny']
    accuracy, frechet = (default['scores']['2000'][m] for m in ('digits_accuracy', 'digits_frechet_distance'))
    assert (accuracy['mean'], accuracy['std'], accuracy['n']) == (pytest.approx(0.95), pytest.approx(0.05), 3)
    assert (frechet['mean'], frechet['std']) == (pytest.approx(22.0), pytest.approx(2.0))
    assert default['train_cpu_s']['mean'] == pytest.approx(110.0) and default['train_cpu_s']['std'] == pytest.approx(10)
    assert default['train_wall_s']['mean'] == pytest.approx(220.0) and default['seeds'] == list(SEEDS)
    repa = summary['recipes']['digits_uvit_repa']   # the goal runs are not in the recipe's own rows
    assert repa['scores']['2000']['digits_accuracy']['values'] == [0.97] * 3 and '1000' not in repa['scores']
    assert repa['probe']['block_0']['mean'] == pytest.approx(0.6) and repa['probe']['block_1']['std'] == 0.0
    # the alignment at step 250: the mean of the logged values in (0, 250] of each seed, then over the seeds
    assert repa['alignment']['250']['values'] == pytest.approx([0.4, 0.5, 0.6])
    assert repa['alignment']['2000']['values'] == pytest.approx([0.9] * 3) and 'alignment' not in default
    assert default['diffusion_loss']['250']['mean'] == pytest.approx(0.15)
    # with REPA over without, seed by seed (digits_sit has no REPA run here: no pair)
    assert repa['paired_ratio']['2000']['values'] == pytest.approx([18 / 20, 18 / 22, 18 / 24])
    assert 'paired_ratio' not in summary['recipes']['digits_sit']


def test_goal_checks_compare_with_the_defaults_spread(summary):
    half, same_budget = summary['goals']
    assert (half['candidate'], half['candidate_steps'], half['reference_steps']) == ('digits_uvit_repa', 1000, 2000)
    assert half['scores']['digits_accuracy']['mean'] == pytest.approx(0.94)      # >= 0.95 - 0.05: matches
    assert half['scores']['digits_frechet_distance']['mean'] == pytest.approx(26)  # > 22 + 2: does not
    assert half['matches'] == {'digits_accuracy': True, 'digits_frechet_distance': False}
    assert half['cpu_s']['mean'] == 60.0 and half['reference_cpu_s']['mean'] == pytest.approx(110.0)
    assert same_budget['candidate'] == 'digits_sit' and all(same_budget['matches'].values())


def test_tables_show_mean_and_spread(summary):
    table = study.markdown(summary)
    assert '| the default | `digits_uvit_tiny` | 0.100 ± 0.100 | 0.950 ± 0.050 |' in table
    assert '| the default | `digits_uvit_tiny` | 900.0 ± 0.0 | 22.0 ± 2.0 |' in table
    assert '| default + REPA | 0.600 ± 0.100 | 0.700 ± 0.000 | 120 ± 0 | 240 ± 0 |' in table
    assert '| `digits_uvit_repa`, 1000 steps | `digits_uvit_tiny`, 2000 steps | 0.940 ± 0.010 vs 0.950 ± 0.050 ' \
           '| 26.0 ± 1.0 vs 22.0 ± 2.0 | 60 ± 0 vs 110 ± 10 | yes, no |' in table
    assert '| default + REPA | 0.500 ± 0.100 | 0.900 ± 0.000 |' in table     # the alignment table
    assert '| default + REPA | block_1 | 0.700 ± 0.000 | 0.700 ± 0.000 |' in table  # the probe over training
    # the default's steps to the same distance: 800 lies 0.0317 of the way from 900 to 22 in log distance
    assert '| default + REPA | 267 (x1.07) | more than 2,000 |' in table
    assert '| yes, no | 1,821 (x1.82) |' in table                          # the goal run's 26
    assert '| default + REPA | the default | 0.89 ± 0.00 | 0.82 ± 0.08 |' in table
    assert study.cell(dict(mean=1.5, std=0.0, n=1), 2) == '1.50' and study.cell(None, 2) == '-'


def test_steps_of_the_default_to_a_score_interpolate_in_log_log():
    curve = {'250': 1000.0, '500': 100.0, '1000': 10.0}
    assert study.steps_to_reach(curve, 100.0) == dict(steps=pytest.approx(500), bound='')
    # halfway in log distance between steps 250 and 500 is halfway in log steps
    assert study.steps_to_reach(curve, (1000 * 100) ** 0.5) == dict(steps=pytest.approx(250 * 2 ** 0.5), bound='')
    assert study.steps_to_reach(curve, 2000.0) == dict(steps=250, bound='at most')
    assert study.steps_to_reach(curve, 5.0) == dict(steps=1000, bound='more than')
    assert study.speedup_cell(dict(steps=1430.0, bound=''), 1000) == '1,430 (x1.43)'
