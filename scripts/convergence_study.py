"""The convergence study of issue 21 on the bundled 8x8 digits: the default run, the default run with REPA, flow
matching (SiT's recipe) and flow matching with REPA, each trained once per seed and scored as it trains.

    python scripts/convergence_study.py [--out=workdir/convergence_digits] [--jobs=2] [--seeds=1234,2,3] \
        [--recipes=digits_uvit_tiny,digits_uvit_repa,digits_sit,digits_sit_repa] [--steps=250,500,1000,2000]
    python scripts/convergence_study.py --report_only     # the JSON, table and plot from the runs already done
    python scripts/convergence_study.py --n_steps=20 --steps=10,20 --seeds=1,2 --out=/tmp/smoke --json=... # a try

Per recipe (a config file) and seed, the commands a user runs, each in a process of its own with one CPU thread:

- ``train.py`` for the config's own ``train.n_steps`` (2000), a checkpoint every gcd(--steps) steps (the ones not
  scored are deleted afterwards), no score during training (the checkpoints and the sample grids change no random
  stream, so the weights are the default command's);
- ``eval.py`` on the EMA weights of each checkpoint of --steps: the config's own sampler and number of samples
  (1000), guidance and digit score (accuracy on the conditioning labels and the Frechet distance in the digit
  classifier's features), the samples drawn with the run's seed;
- ``eval.py --eval=linear_probe --grid`` on the same checkpoints: a linear probe on every block's mean-pooled tokens
  at the noise level nearest sigma / alpha = --probe_sigma (0.06, DDAE's level on the digits, docs/ddae.md), with the
  digits' probe recipe of configs/digits_edm_uvit.py (100 epochs at lr 1e-2), read from there;
- the goal run: --goal_recipe trained again with ``--config.train.n_steps`` half its own (its cosine schedule then runs
  over those steps), scored at its end, for the issue's question whether REPA at half the steps reaches the default's
  full run.

The alignment of REPA runs (minus ``repa_loss``: the mean cosine between the projected tokens and the encoder's) and
the diffusion loss come from each run's metrics.jsonl. A run's work that is already on disk (its record, a score's
JSON) is not done again, so a stopped study continues where it stopped. The CPU time of each process (user + sys,
from wait4) is recorded beside its wall time: on a shared machine the wall time measures the sharing.

Outputs: every number per run and per seed as JSON (--json), the mean and spread over seeds as markdown (--table)
and a plot of both scores against the training step (--plot). The tables add, for each recipe and step, the number of
steps the default run needs to reach the same mean Frechet distance (its speed-up over the default), and the goal
checks: the goal run against the default's full run, and flow matching against the default at the same steps, each
"matching" when its mean is no worse than the default's by more than the default's spread over seeds.
"""
import argparse
import concurrent.futures
import dataclasses
import glob
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from functools import reduce

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TRAIN = os.path.join(ROOT, 'train.py')
EVAL = os.path.join(ROOT, 'eval.py')
RECIPES = {                      # config file (configs/<name>.py) -> its label in the tables (the issue's)
    'digits_uvit_tiny': 'the default',
    'digits_uvit_repa': 'default + REPA',
    'digits_sit': 'flow matching',
    'digits_sit_repa': 'flow matching + REPA',
}
REFERENCE = 'digits_uvit_tiny'   # what the goal checks compare against: the default run
PAIRED = {'digits_uvit_repa': 'digits_uvit_tiny', 'digits_sit_repa': 'digits_sit'}  # with REPA -> without, same seed
SAME_BUDGET = ('digits_sit',)    # recipes the goal checks hold against the default at the same number of steps
METRICS = {'digits_accuracy': 'digit accuracy', 'digits_frechet_distance': 'Frechet distance'}
HIGHER_IS_BETTER = {'digits_accuracy': True, 'digits_frechet_distance': False}
# blocks whose probe the tables follow over training (0-based names; REPA's depth counts from 1)
PROBED_OVER_TRAINING = {'block_1': "the block REPA aligns (its depth 2)", 'block_2': 'the middle block'}
SPEED_METRIC = 'digits_frechet_distance'  # the speed-up: the default's steps to the same value (the accuracy saturates)
PROBE_RECIPE = 'digits_edm_uvit'  # the config whose probe epochs and learning rate the digits' probes use
ONE_THREAD = {'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
RECORD = 'study_record.json'


class StudyError(Exception):
    """A process of the study failed; the message names its log."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: ``recipe`` (a config name) with ``seed`` for ``n_steps``, scored at ``scored``; ``kind``
    'study' (the table) or 'goal' (the half-length run)."""
    recipe: str
    seed: int
    n_steps: int
    scored: tuple
    kind: str = 'study'

    @property
    def name(self) -> str:
        return f'{self.recipe}_seed{self.seed}_steps{self.n_steps}'


# ----------------------------------------------------------------------------------------------------- planning

def config_file(recipe: str) -> str:
    return os.path.join(ROOT, 'configs', f'{recipe}.py')


def plan(recipes, seeds, steps, goal_recipe: str, n_steps: int = 0) -> list:
    """The runs, seed by seed (so that a partial study has every recipe), the goal runs last. Each trains for
    ``n_steps``, or its config's own ``train.n_steps`` (0), which must be the last of ``steps``."""
    from libs.config import load_config_file

    def length(recipe):
        return n_steps or load_config_file(config_file(recipe)).train.n_steps

    runs = []
    for seed in seeds:
        for recipe in recipes:
            if max(steps) != length(recipe):
                raise ValueError(f'the scored steps must end at the runs\' length: {recipe} trains {length(recipe)} '
                                 f'steps, the steps end at {max(steps)}')
            runs.append(Run(recipe, seed, length(recipe), tuple(steps)))
    if goal_recipe:
        runs += [Run(goal_recipe, seed, length(goal_recipe) // 2, (length(goal_recipe) // 2,), 'goal')
                 for seed in seeds]
    return runs


def probe_level(config, sigma: float) -> dict:
    """The framework's noise-level index (eval.py's ``probe.level`` scale) whose sigma / alpha is nearest ``sigma``
    in log scale, with its sigma."""
    from libs.diffusion import build_framework
    from libs.evaluation.features import levels_of
    framework = build_framework(config)
    low, high = framework.level_range()
    best = min(levels_of(framework, range(low, high + 1)), key=lambda level: abs(math.log(level.sigma / sigma)))
    return dict(index=best.index, sigma=best.sigma)


def sample_result_file(config) -> str:
    """The name of the JSON that eval.py writes beside the weights for the config's sample score (EMA weights)."""
    from libs.evaluation.harness import result_name, sample_tags
    return result_name('sample', config.dataset.name, config.sample.n_samples,
                       sample_tags(config.sample, config.eval.metric), True) + '.json'


# ------------------------------------------------------------------------------------------------------ running

def run_job(cmd: list, log_path: str) -> dict:
    """Run ``cmd`` from the repository root with one CPU thread, its output appended to ``log_path``: exit status,
    wall and CPU seconds (user + sys of the process and the children it waited for) and the load average before
    and after."""
    env = dict(os.environ, **ONE_THREAD)
    load_before, start = os.getloadavg()[0], time.time()
    with open(log_path, 'a') as log:
        log.write('$ ' + ' '.join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd) + '\n')
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return dict(returncode=proc.returncode, wall_s=time.time() - start, cpu_s=usage.ru_utime + usage.ru_stime,
                load_before=load_before, load_after=os.getloadavg()[0])


def read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path: str, data) -> None:
    from libs.fileio import atomic_open
    with atomic_open(path, 'w') as f:
        json.dump(data, f, indent=1)


def read_training_log(path: str) -> dict:
    """{quantity: [[step, value], ...]} of metrics.jsonl: the diffusion loss ('diffusion_loss', which is 'loss' without
    REPA) and, with REPA, the alignment (the cosine, minus 'repa_loss')."""
    series = {'diffusion_loss': [], 'alignment': []}
    if not os.path.isfile(path):  # nothing logged (a run shorter than train.log_interval)
        return {}
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            entry = json.loads(line)
            series['diffusion_loss'].append([entry['step'], entry.get('diffusion_loss', entry['loss'])])
            if 'repa_loss' in entry:
                series['alignment'].append([entry['step'], -entry['repa_loss']])
    return {k: v for k, v in series.items() if v}


class Study:
    """Runs the plan's runs, ``jobs`` at a time; each run's record is kept in its folder."""

    def __init__(self, out: str, probe_sigma: float):
        from libs.config import load_config_file
        self.out, self.probe_sigma = out, probe_sigma
        probe = load_config_file(config_file(PROBE_RECIPE)).probe
        self.probe_recipe = dict(epochs=probe.epochs, lr=probe.lr)
        self.lock = threading.Lock()

    def folder(self, run: Run) -> str:
        return os.path.join(self.out, 'runs', run.name)

    def say(self, text: str) -> None:
        with self.lock:
            print(f'[{time.strftime("%H:%M:%S")}] {text}', flush=True)

    def job(self, run: Run, record: dict, key: str, cmd: list) -> dict:
        self.say(f'{run.name}: {key} ...')
        result = run_job([sys.executable, *cmd], os.path.join(self.folder(run), 'study.log'))
        record['jobs'].setdefault(key, []).append(result)
        write_json(os.path.join(self.folder(run), RECORD), record)
        self.say(f"{run.name}: {key} {'done' if result['returncode'] == 0 else 'FAILED'} "
                 f"({result['cpu_s']:.0f} s CPU, {result['wall_s']:.0f} s wall)")
        if result['returncode']:
            raise StudyError(f'{run.name}: {key} failed with exit status {result["returncode"]}; see '
                             f'{os.path.join(self.folder(run), "study.log")}')
        return result

    def __call__(self, run: Run) -> dict:
        from libs.config import load_config_file
        folder = self.folder(run)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, RECORD)
        record = read_json(path) or dict(run=dataclasses.asdict(run), jobs={})
        config = load_config_file(config_file(run.recipe))
        common = [f'--config={config_file(run.recipe)}', f'--config.seed={run.seed}']
        ckpt = lambda step: os.path.join(folder, 'ckpts', f'{step}.ckpt')  # noqa: E731
        trained = any(j['returncode'] == 0 for j in record['jobs'].get('train', []))
        if not (trained and os.path.isdir(ckpt(run.n_steps))):
            self.job(run, record, 'train', [TRAIN, *common, f'--workdir={folder}',
                                            f'--config.train.n_steps={run.n_steps}',
                                            f'--config.train.save_interval={reduce(math.gcd, run.scored)}',
                                            '--config.train.keep_ckpts=0', '--config.eval.train_n_samples=0',
                                            '--config.train.final_eval=False', '--config.log_with=none'])
        for name in os.listdir(os.path.join(folder, 'ckpts')):
            step = name.split('.')[0]
            if name.endswith('.ckpt') and step.isdigit() and int(step) not in run.scored:
                shutil.rmtree(os.path.join(folder, 'ckpts', name))
        record['scores'] = {}
        for step in run.scored:
            result = os.path.join(ckpt(step), sample_result_file(config))
            if not os.path.isfile(result):
                self.job(run, record, f'score_{step}', [EVAL, *common, f'--nnet_path={ckpt(step)}'])
            scored = read_json(result)
            record['scores'][str(step)] = {k: scored[k] for k in METRICS}
        level = probe_level(config, self.probe_sigma)
        record['probes'] = {}
        for step in run.scored:
            pattern = os.path.join(ckpt(step), 'eval_linear_probe_*_grid_ema.json')
            if not glob.glob(pattern):
                self.job(run, record, f'probe_{step}', [
                    EVAL, *common, f'--nnet_path={ckpt(step)}', '--eval=linear_probe', '--grid',
                    f'--config.probe.grid_levels={level["index"]}',
                    f'--config.probe.epochs={self.probe_recipe["epochs"]}',
                    f'--config.probe.lr={self.probe_recipe["lr"]}'])
            probe = read_json(glob.glob(pattern)[0])
            record['probes'][str(step)] = {row['layer']: row['accuracy'] for row in probe['grid']}
        record['probe'] = dict(level=level, **record['probes'][str(run.n_steps)])
        record['training_log'] = read_training_log(os.path.join(folder, 'metrics.jsonl'))
        write_json(path, record)
        self.say(f'{run.name}: recorded')
        return record


def machine() -> dict:
    """The CPU as lscpu names it (model name, family, model) and the number of cores."""
    info = {}
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, value = line.partition(':')
            if key.strip() in ('Model name', 'CPU family', 'Model', 'CPU(s)'):
                info[key.strip()] = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return dict(cpu=info.get('Model name', 'unknown'), family=info.get('CPU family'), model=info.get('Model'),
                cpus=info.get('CPU(s)') or str(os.cpu_count()))


# ---------------------------------------------------------------------------------------------------- aggregating

def spread(values: list) -> dict:
    """Mean, standard deviation over seeds (n - 1 in the denominator; 0 for one value), the values themselves."""
    values = [v for v in values if v is not None]
    if not values:
        return dict(mean=None, std=None, n=0, values=[])
    return dict(mean=statistics.fmean(values), std=statistics.stdev(values) if len(values) > 1 else 0.0,
                n=len(values), values=values)


def job_seconds(record: dict, prefix: str, clock: str = 'cpu_s') -> float:
    """Seconds (``clock``: 'cpu_s' or 'wall_s') of a run's processes whose job name starts with ``prefix`` (every
    attempt, as a resumed training run's two processes)."""
    return sum(j[clock] for key, jobs in record['jobs'].items() if key.startswith(prefix) for j in jobs)


def value_at(series: list, step: int, window: int):
    """The mean of a logged series over the steps in (step - window, step], or None."""
    values = [v for s, v in series if step - window < s <= step]
    return statistics.fmean(values) if values else None


def steps_to_reach(curve: dict, target: float) -> dict:
    """Where a falling curve {step: value} (the default's mean Frechet distance at its scored steps) first reaches
    ``target``: {'steps': s} interpolated linearly in log step and log value between scored steps, or {'steps': the
    first step, 'bound': 'at most'} when the curve starts below it, or {'steps': the last step, 'bound': 'more than'}
    when it never gets there."""
    points = sorted((int(step), value) for step, value in curve.items() if value is not None and value > 0)
    if target >= points[0][1]:
        return dict(steps=points[0][0], bound='at most')
    for (s0, v0), (s1, v1) in zip(points, points[1:]):
        if v0 > target >= v1:
            fraction = math.log(v0 / target) / math.log(v0 / v1)
            return dict(steps=s0 * (s1 / s0) ** fraction, bound='')
    return dict(steps=points[-1][0], bound='more than')


def matches(candidate: dict, reference: dict, metric: str):
    """Whether the candidate's mean is no worse than the reference's mean by more than the reference's spread over
    seeds (one standard deviation)."""
    if candidate['mean'] is None or reference['mean'] is None:
        return None
    if HIGHER_IS_BETTER[metric]:
        return candidate['mean'] >= reference['mean'] - reference['std']
    return candidate['mean'] <= reference['mean'] + reference['std']


def summarize(results: dict) -> dict:
    """The mean and spread over seeds of every number of ``results`` (the study's JSON: its 'runs' are the records
    of Study), per recipe and scored step, and the goal checks."""
    runs = results['runs']
    window = results['settings'].get('log_window', 250)
    recipes = {}
    for recipe in results['settings']['recipes']:
        mine = [r for r in runs if r['run']['recipe'] == recipe and r['run']['kind'] == 'study']
        if not mine:
            continue
        steps = sorted({int(s) for r in mine for s in r['scores']})
        layers = sorted({k for r in mine for k in r.get('probe', {}) if k != 'level'})
        entry = dict(label=RECIPES.get(recipe, recipe), seeds=[r['run']['seed'] for r in mine],
                     n_steps=mine[0]['run']['n_steps'],
                     scores={str(s): {m: spread([r['scores'].get(str(s), {}).get(m) for r in mine]) for m in METRICS}
                             for s in steps},
                     probe={layer: spread([r['probe'].get(layer) for r in mine]) for layer in layers},
                     probe_over_training={str(s): {layer: spread([r.get('probes', {}).get(str(s), {}).get(layer)
                                                                  for r in mine]) for layer in layers} for s in steps},
                     probe_level=mine[0].get('probe', {}).get('level'),
                     train_cpu_s=spread([job_seconds(r, 'train') for r in mine]),
                     train_wall_s=spread([job_seconds(r, 'train', 'wall_s') for r in mine]),
                     score_cpu_s=spread([job_seconds(r, 'score') for r in mine]))
        for quantity in ('alignment', 'diffusion_loss'):
            if any(r.get('training_log', {}).get(quantity) for r in mine):
                entry[quantity] = {str(s): spread([value_at(r['training_log'].get(quantity, []), s, window)
                                                   for r in mine]) for s in steps}
        recipes[recipe] = entry
    for recipe, base in PAIRED.items():
        if recipe in recipes and base in recipes:
            recipes[recipe]['paired_ratio'] = paired_ratios(runs, recipe, base, SPEED_METRIC)
    reference = recipes.get(REFERENCE)
    if reference:
        curve = {s: scores[SPEED_METRIC]['mean'] for s, scores in reference['scores'].items()}
        for entry in recipes.values():
            entry['default_steps'] = {s: steps_to_reach(curve, scores[SPEED_METRIC]['mean'])
                                      for s, scores in entry['scores'].items() if scores[SPEED_METRIC]['mean']}
    goals = goal_checks(results, recipes)
    for check in goals:
        if reference and check['scores'][SPEED_METRIC]['mean']:
            check['default_steps'] = steps_to_reach(curve, check['scores'][SPEED_METRIC]['mean'])
    return dict(recipes=recipes, goals=goals, machine=results.get('machine', {}), settings=results['settings'])


def paired_ratios(runs: list, recipe: str, base: str, metric: str) -> dict:
    """{step: spread over seeds of recipe's ``metric`` / base's, the same seed's runs}. The two runs of a seed share
    their backbone's initial weights, data order, training noise and sample draws, so the ratio removes much of what
    the seed decides."""
    def scores(name):
        return {r['run']['seed']: r['scores'] for r in runs
                if r['run']['recipe'] == name and r['run']['kind'] == 'study'}
    mine, theirs = scores(recipe), scores(base)
    steps = sorted({int(s) for by_step in mine.values() for s in by_step})
    return {str(step): spread([mine[seed][str(step)][metric] / theirs[seed][str(step)][metric]
                               for seed in mine if seed in theirs and str(step) in mine[seed]
                               and str(step) in theirs[seed]]) for step in steps}


def goal_checks(results: dict, recipes: dict) -> list:
    """The issue's goals: the goal recipe at half its steps against the default's full run, and flow matching against
    the default at the same steps; each metric's means, spreads and whether the candidate matches."""
    checks = []
    reference = recipes.get(REFERENCE)
    if reference is None:
        return checks
    full = reference['scores'][str(reference['n_steps'])]
    goal_runs = [r for r in results['runs'] if r['run']['kind'] == 'goal']
    if goal_runs:
        steps = goal_runs[0]['run']['n_steps']
        candidate = {m: spread([r['scores'].get(str(steps), {}).get(m) for r in goal_runs]) for m in METRICS}
        checks.append(dict(
            candidate=goal_runs[0]['run']['recipe'], candidate_steps=steps, reference=REFERENCE,
            reference_steps=reference['n_steps'], scores=candidate, reference_scores=full,
            cpu_s=spread([job_seconds(r, 'train') for r in goal_runs]), reference_cpu_s=reference['train_cpu_s'],
            matches={m: matches(candidate[m], full[m], m) for m in METRICS}))
    for recipe, entry in recipes.items():
        if recipe not in SAME_BUDGET or entry['n_steps'] != reference['n_steps']:
            continue
        candidate = entry['scores'][str(entry['n_steps'])]
        checks.append(dict(candidate=recipe, candidate_steps=entry['n_steps'], reference=REFERENCE,
                           reference_steps=reference['n_steps'], scores=candidate, reference_scores=full,
                           cpu_s=entry['train_cpu_s'], reference_cpu_s=reference['train_cpu_s'],
                           matches={m: matches(candidate[m], full[m], m) for m in METRICS}))
    return checks


# ------------------------------------------------------------------------------------------------------ reporting

def cell(stats: dict, digits: int) -> str:
    """'mean ± std' (the spread over seeds), or '-'."""
    if not stats or stats['mean'] is None:
        return '-'
    mean = f"{stats['mean']:.{digits}f}"
    return f"{mean} ± {stats['std']:.{digits}f}" if stats['n'] > 1 else mean


DIGITS = {'digits_accuracy': 3, 'digits_frechet_distance': 1}


def speedup_cell(reached: dict, step: int) -> str:
    """'1,430 (x1.43)': the default's steps to the same score and their ratio to ``step``; bounds as said."""
    if not reached:
        return '-'
    if reached['bound']:
        return f"{reached['bound']} {reached['steps']:,.0f}"
    return f"{reached['steps']:,.0f} (x{reached['steps'] / step:.2f})"


def markdown(summary: dict) -> str:
    """The tables: each metric over training, the final models' probes and CPU time, the goal checks and, for REPA,
    the alignment over training."""
    recipes = summary['recipes']
    steps = sorted({int(s) for entry in recipes.values() for s in entry['scores']})
    seeds = summary['settings']['seeds']
    lines = [f"Mean ± standard deviation over {len(seeds)} seeds ({', '.join(map(str, seeds))}); EMA weights, each "
             'config\'s own sampler, 1000 samples per score.', '']
    for metric, title in METRICS.items():
        lines += [f'**{title}**', '', '| recipe | config | ' + ' | '.join(f'step {s}' for s in steps) + ' |',
                  '|---|---|' + '---:|' * len(steps)]
        for recipe, entry in recipes.items():
            cells = [cell(entry['scores'].get(str(s), {}).get(metric), DIGITS[metric]) for s in steps]
            lines.append(f"| {entry['label']} | `{recipe}` | " + ' | '.join(cells) + ' |')
        lines.append('')
    if any('default_steps' in entry for entry in recipes.values()):
        lines += [f'**Steps of the default run to the same {METRICS[SPEED_METRIC]}** (the default\'s mean curve, '
                  'interpolated linearly in log step and log distance between its scored steps; in brackets, the '
                  'ratio to the recipe\'s own steps)', '',
                  '| recipe | ' + ' | '.join(f'step {s}' for s in steps) + ' |', '|---|' + '---:|' * len(steps)]
        for recipe, entry in recipes.items():
            if recipe != REFERENCE and 'default_steps' in entry:
                lines.append(f"| {entry['label']} | " + ' | '.join(
                    speedup_cell(entry['default_steps'].get(str(s)), s) for s in steps) + ' |')
        lines.append('')
    paired = {recipe: entry for recipe, entry in recipes.items() if 'paired_ratio' in entry}
    if paired:
        lines += [f'**{METRICS[SPEED_METRIC]} with REPA over without**, seed by seed (the ratio for each seed, then '
                  'its mean and spread; below 1: REPA is better)', '',
                  '| recipe | without | ' + ' | '.join(f'step {s}' for s in steps) + ' |',
                  '|---|---|' + '---:|' * len(steps)]
        for recipe, entry in paired.items():
            lines.append(f"| {entry['label']} | {recipes[PAIRED[recipe]]['label']} | "
                         + ' | '.join(cell(entry['paired_ratio'].get(str(s)), 2) for s in steps) + ' |')
        lines.append('')
    layers = sorted({layer for entry in recipes.values() for layer in entry['probe']})
    level = next((e['probe_level'] for e in recipes.values() if e.get('probe_level')), None)
    lines += ['**Linear probe of the final models** (test accuracy per block, mean-pooled tokens'
              + (f", noise level sigma/alpha ≈ {level['sigma']:.3g}" if level else '') + ') **and training cost** '
              '(one thread; CPU seconds of train.py, user + sys)', '',
              '| recipe | ' + ' | '.join(layers) + ' | train CPU s | train wall s |',
              '|---|' + '---:|' * (len(layers) + 2)]
    for recipe, entry in recipes.items():
        cells = [cell(entry['probe'].get(layer), 3) for layer in layers]
        lines.append(f"| {entry['label']} | " + ' | '.join(cells) + f" | {cell(entry['train_cpu_s'], 0)} | "
                     f"{cell(entry['train_wall_s'], 0)} |")
    lines.append('')
    watched = [layer for layer in PROBED_OVER_TRAINING if layer in layers]
    if watched:
        lines += ['**Linear probe over training** (' + ', '.join(f'{layer}: {why}' for layer, why in
                                                         PROBED_OVER_TRAINING.items() if layer in watched) + ')', '',
                  '| recipe | block | ' + ' | '.join(f'step {s}' for s in steps) + ' |',
                  '|---|---|' + '---:|' * len(steps)]
        for layer in watched:
            for recipe, entry in recipes.items():
                cells = [cell(entry.get('probe_over_training', {}).get(str(s), {}).get(layer), 3) for s in steps]
                lines.append(f"| {entry['label']} | {layer} | " + ' | '.join(cells) + ' |')
        lines.append('')
    if summary['goals']:
        lines += ['**Goal checks** (a candidate matches when its mean is no worse than the reference\'s by more than '
                  'the reference\'s standard deviation over seeds)', '',
                  '| candidate | reference | accuracy | Frechet distance | train CPU s | matches (accuracy, Frechet) '
                  '| default\'s steps to its Frechet distance |', '|---|---|---:|---:|---:|---|---:|']
        for check in summary['goals']:
            scores, ref = check['scores'], check['reference_scores']
            verdict = ', '.join({True: 'yes', False: 'no', None: '-'}[check['matches'][m]] for m in METRICS)
            lines.append(
                f"| `{check['candidate']}`, {check['candidate_steps']} steps | `{check['reference']}`, "
                f"{check['reference_steps']} steps | {cell(scores['digits_accuracy'], 3)} vs "
                f"{cell(ref['digits_accuracy'], 3)} | {cell(scores['digits_frechet_distance'], 1)} vs "
                f"{cell(ref['digits_frechet_distance'], 1)} | {cell(check['cpu_s'], 0)} vs "
                f"{cell(check['reference_cpu_s'], 0)} | {verdict} | "
                f"{speedup_cell(check.get('default_steps'), check['candidate_steps'])} |")
        lines.append('')
    aligned = {recipe: entry for recipe, entry in recipes.items() if 'alignment' in entry}
    if aligned:
        window = summary['settings'].get('log_window', 250)
        lines += [f'**Alignment over training** (REPA runs: the cosine between the projected tokens and the '
                  f'encoder\'s, mean of the logged batches over the {window} steps before each step)', '',
                  '| recipe | ' + ' | '.join(f'step {s}' for s in steps) + ' |', '|---|' + '---:|' * len(steps)]
        for recipe, entry in aligned.items():
            lines.append(f"| {entry['label']} | " + ' | '.join(cell(entry['alignment'].get(str(s)), 3)
                                                                for s in steps) + ' |')
        lines.append('')
    return '\n'.join(lines)


def plot(summary: dict, path: str) -> None:
    """Both scores against the training step, mean and standard deviation over seeds per recipe; the goal runs as
    single points."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(METRICS), figsize=(5.2 * len(METRICS), 3.9), squeeze=False)
    steps = sorted({int(s) for entry in summary['recipes'].values() for s in entry['scores']})
    for ax, (metric, title) in zip(axes[0], METRICS.items()):
        count = len(summary['recipes'])
        for i, (recipe, entry) in enumerate(summary['recipes'].items()):
            xs = [s for s in steps if entry['scores'].get(str(s), {}).get(metric, {}).get('mean') is not None]
            means = [entry['scores'][str(s)][metric]['mean'] for s in xs]
            stds = [entry['scores'][str(s)][metric]['std'] for s in xs]
            shift = 1 + 0.025 * (i - (count - 1) / 2)  # side by side, so that the error bars do not hide each other
            ax.errorbar([x * shift for x in xs], means, yerr=stds, marker='o', capsize=3, label=entry['label'])
        reference = summary['recipes'].get(REFERENCE)
        if reference:
            ax.axhline(reference['scores'][str(reference['n_steps'])][metric]['mean'], color='C0', linestyle=':',
                       linewidth=1, label=f"{reference['label']}, step {reference['n_steps']}")
        for check in summary['goals']:
            if check['candidate'] in summary['recipes'] and check['candidate_steps'] != \
                    summary['recipes'][check['candidate']]['n_steps']:
                stats = check['scores'][metric]
                ax.errorbar([check['candidate_steps']], [stats['mean']], yerr=[stats['std']], marker='*',
                            markersize=11, linestyle='none', color='black', capsize=3,
                            label=f"{summary['recipes'][check['candidate']]['label']}, a "
                                  f"{check['candidate_steps']}-step run")
        ax.set_xscale('log')
        if not HIGHER_IS_BETTER[metric]:
            ax.set_yscale('log')
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.minorticks_off()
        ax.set_xlabel('training step')
        ax.set_title(f"{title} ({'higher' if HIGHER_IS_BETTER[metric] else 'lower'} is better)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    seeds = summary['settings']['seeds']
    fig.suptitle(f'digits: mean and standard deviation over {len(seeds)} seeds, 1000 samples per score', fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def collect(study_out: str, runs: list, settings: dict) -> dict:
    """The study's JSON from the runs' records on disk (runs without a complete record are left out)."""
    records = []
    for run in runs:
        record = read_json(os.path.join(study_out, 'runs', run.name, RECORD))
        if record and 'probe' in record:
            records.append(record)
    return dict(settings=settings, machine=machine(), runs=records)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default=os.path.join(ROOT, 'workdir', 'convergence_digits'),
                        help='work folder of the runs')
    parser.add_argument('--recipes', default=','.join(RECIPES), help='config names, comma-separated')
    parser.add_argument('--seeds', default='1234,2,3', help='seeds, comma-separated')
    parser.add_argument('--steps', default='250,500,1000,2000', help='the training steps scored')
    parser.add_argument('--goal_recipe', default='digits_uvit_repa',
                        help="trained again for half its steps ('' : no goal run)")
    parser.add_argument('--n_steps', type=int, default=0, help="every run's length (0: each config's own)")
    parser.add_argument('--probe_sigma', type=float, default=0.06, help='noise level (sigma / alpha) of the probes')
    parser.add_argument('--log_window', type=int, default=250, help='steps of the logged losses averaged per point')
    parser.add_argument('--jobs', type=int, default=2, help='runs at a time (each one CPU thread)')
    parser.add_argument('--report_only', action='store_true', help='only collect the records, table and plot')
    parser.add_argument('--json', default=os.path.join(ROOT, 'docs', 'convergence_digits.json'))
    parser.add_argument('--table', default=os.path.join(ROOT, 'docs', 'convergence_digits.md'))
    parser.add_argument('--plot', default=os.path.join(ROOT, 'docs', 'convergence_digits.png'))
    args = parser.parse_args(argv)
    recipes = [r.strip() for r in args.recipes.split(',') if r.strip()]
    unknown = [r for r in recipes + [args.goal_recipe] if r and not os.path.isfile(config_file(r))]
    if unknown:
        parser.error(f'no config configs/{unknown[0]}.py')
    try:
        seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
        steps = sorted(int(s) for s in args.steps.split(',') if s.strip())
    except ValueError:
        parser.error('--seeds and --steps take comma-separated integers')
    if not seeds or not steps or min(steps) < 1 or args.jobs < 1:
        parser.error('--seeds and --steps need at least one value, steps and --jobs positive')

    try:
        runs = plan(recipes, seeds, steps, args.goal_recipe, args.n_steps)
    except ValueError as exc:
        parser.error(str(exc))
    settings = dict(recipes=recipes, seeds=seeds, steps=steps, goal_recipe=args.goal_recipe, n_steps=args.n_steps,
                    probe_sigma=args.probe_sigma, log_window=args.log_window, threads_per_run=1, jobs=args.jobs)
    failures = []
    if not args.report_only:
        study = Study(args.out, args.probe_sigma)
        study.say(f'{len(runs)} runs, {args.jobs} at a time, in {args.out}')
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = {pool.submit(study, run): run for run in runs}
            for future in concurrent.futures.as_completed(futures):
                try:
                    future.result()
                except StudyError as exc:
                    failures.append(str(exc))
                    study.say(str(exc))
    results = collect(args.out, runs, settings)
    if not results['runs']:
        print(f'error: no finished run in {args.out}', file=sys.stderr)
        return 1
    write_json(args.json, results)
    summary = summarize(results)
    table = markdown(summary)
    with open(args.table, 'w') as f:
        f.write(table)
    plot(summary, args.plot)
    print(table)
    print(f'wrote {args.json}, {args.table} and {args.plot}' + (f'; {len(failures)} run(s) failed' if failures else ''))
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
