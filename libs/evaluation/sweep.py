"""``--eval=sweep``: the sample score of one network at several samplers and numbers of network evaluations (NFE),
from one loaded network, to choose a sampler and NFE by measurement.

Every point is written as the ``sample`` mode writes it (its own JSON with its full settings), and the whole grid as
``eval_sweep_<dataset>_n<N>_<metric>_<ema|raw>.json`` plus a markdown table beside the weights
(``scripts/plot_sweep.py`` draws it). Sample ``i`` is drawn from the same generator at every point, so the
differences between points are the sampler's, not the draw's. A point whose JSON is already there with the same
settings and weights is read, not sampled again, so a stopped sweep continues where it stopped.
"""
import os

from libs.config import parse_list
from libs.evaluation.generation import score_samples
from libs.evaluation.harness import EvalRun, read_result, sample_settings, sample_tags
from libs.fileio import atomic_open


def markdown_table(metric_names, grid: dict, nfes) -> str:
    """One table per metric: a row per sampler, a column per NFE."""
    lines = []
    for metric in metric_names:
        lines += [f'**{metric}**', '', '| sampler | ' + ' | '.join(f'{n} NFE' for n in nfes) + ' |',
                  '|---|' + '---:|' * len(nfes)]
        for algorithm, row in grid.items():
            cells = [f'{row[str(n)][metric]:.4g}' if str(n) in row else '' for n in nfes]
            lines.append(f'| {algorithm} | ' + ' | '.join(cells) + ' |')
        lines.append('')
    return '\n'.join(lines)


def finished_point(run: EvalRun, sample_cfg, scores: dict):
    """The score of a point already written with these exact settings and weights, or None (``scores``: the
    scorer's record)."""
    n, metric = run.config.sample.n_samples, run.config.eval.metric
    result = None
    if run.accelerator.is_main_process:
        path = run.path(run.stem('sample', n, *sample_tags(sample_cfg, metric, scores)) + '.json')
        result = read_result(path, run.weights, run.ema, sample_settings(sample_cfg, n, metric, scores))
    return run.broadcast({'result': result})['result']


def eval_sweep(config, nnet_path: str, ema: bool = True) -> dict:
    """``config.eval.sweep_algorithms`` x ``config.eval.sweep_nfes``, ``config.sample.n_samples`` samples each."""
    algorithms = parse_list(config.eval.sweep_algorithms, 'config.eval.sweep_algorithms')
    nfes = parse_list(config.eval.sweep_nfes, 'config.eval.sweep_nfes', int)
    run = EvalRun.load(config, nnet_path, ema, mode='sweep', sampling=True)
    scores = run.scorer().record()  # missing FID files fail now, before any sampling
    points = []
    for algorithm in algorithms:
        for nfe in nfes:
            sample_cfg = config.sample.copy_and_resolve_references()
            sample_cfg.algorithm, sample_cfg.sample_steps = algorithm, nfe
            run.framework.build_sampler(sample_cfg)  # every bad sampler or NFE fails before any sampling
            points.append(sample_cfg)
    grid = {}
    for sample_cfg in points:
        png_dir = os.path.join(config.sample.path, f'{sample_cfg.algorithm}_nfe{sample_cfg.sample_steps}') \
            if config.sample.path else ''
        result = finished_point(run, sample_cfg, scores)
        if result is None:
            result = score_samples(run, 'sample', sample_cfg, run.scorer(), png_dir)
        else:
            run.print(f'{sample_cfg.algorithm} nfe={sample_cfg.sample_steps}: read from its JSON')
        grid.setdefault(sample_cfg.algorithm, {})[str(sample_cfg.sample_steps)] = result
    metric, n = config.eval.metric, config.sample.n_samples
    settings = {'metric': metric, 'n_samples': n, 'algorithms': algorithms, 'nfes': nfes,
                'guidance_scale': config.sample.scale, 'reference_statistics': scores['reference_statistics']}
    run.write('sweep', n, [metric], settings, {'grid': grid})
    table = markdown_table(sorted({k for row in grid.values() for r in row.values() for k in r}), grid, nfes)
    if run.accelerator.is_main_process:
        with atomic_open(run.path(run.stem('sweep', n, metric) + '.md'), 'w') as f:
            f.write(table)
    run.print(table)
    return grid
