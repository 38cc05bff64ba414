"""Sample modes: ``sample`` (the suite's sample score, what eval.py does by default) and ``gen`` (GenViT / HybViT's
generation evaluation: ``config.sample`` and the full N-step ancestral sampler, each scored with
``config.eval.metrics`` and the Inception Score over ``config.clf_eval.is_splits`` parts, or with the digit score)."""
import os

from libs.errors import UserError
from libs.evaluation.harness import EvalRun, sample_settings, sample_tags


def score_samples(run: EvalRun, mode: str, sample_cfg, scorer, png_dir: str) -> dict:
    """Sample with ``sample_cfg``, score, write the JSON of ``mode`` beside the weights and print one line.

    The scored samples are kept in ``<json stem>_shards/`` beside the JSON until it is written, so a run that is
    stopped continues where it stopped when run again with the same settings (libs/evaluation/shards.py)."""
    n, metric, scores = run.config.sample.n_samples, run.config.eval.metric, scorer.record()
    tags = sample_tags(sample_cfg, metric, scores)
    shards = run.shard_store(run.stem(mode, n, *tags), sample_cfg)
    result = run.generate(sample_cfg, scorer, png_dir=png_dir, desc=f'{mode}: {sample_cfg.algorithm}', shards=shards)
    run.write(mode, n, tags, sample_settings(sample_cfg, n, metric, scores), result)
    if run.accelerator.is_main_process:
        shards.remove()  # the JSON holds the score now
    run.print(f'{sample_cfg.algorithm} nfe={sample_cfg.sample_steps}: '
              + ' '.join(f'{k}={v:.4f}' for k, v in result.items()))
    return result


def eval_sample(config, nnet_path: str, ema: bool = True) -> dict:
    """Sample ``config.sample.n_samples``, score them (FID or the digit score), keep PNGs in ``sample.path``."""
    run = EvalRun.load(config, nnet_path, ema, mode='sample', sampling=True)
    scorer = run.scorer()  # before any sampling: missing FID files fail now
    return score_samples(run, 'sample', config.sample, scorer, config.sample.path)


def eval_gen(config, nnet_path: str, ema: bool = True) -> dict:
    """``config.sample`` and, with ``clf_eval.ancestral``, that sampler over every step of the discrete chain."""
    run = EvalRun.load(config, nnet_path, ema, mode='gen', sampling=True)
    runs = [config.sample]
    if config.clf_eval.ancestral:
        steps = run.framework.chain_steps()
        if steps is None:
            raise UserError(f'clf_eval.ancestral={config.clf_eval.ancestral!r} needs a discrete schedule '
                            f"(config.schedule.name 'ddpm_linear', 'stable_diffusion' or 'cosine'); "
                            "set clf_eval.ancestral='' to skip it")
        full = config.sample.copy_and_resolve_references()
        full.algorithm, full.sample_steps = config.clf_eval.ancestral, steps
        runs.append(full)
    scorers = [run.scorer(inception_score=True) for _ in runs]  # before any sampling: missing files fail now
    results = {}
    for sample_cfg, scorer in zip(runs, scorers):
        png_dir = os.path.join(config.sample.path, sample_cfg.algorithm) if config.sample.path else ''
        results[sample_cfg.algorithm] = score_samples(run, 'gen', sample_cfg, scorer, png_dir)
    return results
