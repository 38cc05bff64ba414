"""``eval.py --eval=<mode>``: one harness (harness.py), one scorer per metric (scorers.py), and the modes.

- ``sample`` (default): the sample score, FID or the digit score (generation.py);
- ``gen``: samples with ``config.sample`` and with the full N-step ancestral sampler, FID + Inception Score;
- ``test_clf``, ``cali``, ``attack``: accuracy, calibration, PGD robustness of a classifying network
  (classification.py);
- ``nll``, ``ood``: the DDPM bound in bits/dim, out-of-distribution AUROC (likelihood.py);
- ``sweep``: the sample score over samplers x NFE, to choose a sampler (sweep.py);
- ``linear_probe`` (``--grid``), ``contrastive``, ``noisy_clf``: DDAE's evaluations of the network's features
  (features.py).

Adding a mode: a function ``mode(config, nnet_path, ema) -> dict`` built on ``EvalRun``, and one line in MODES.
"""
from libs.errors import UserError
from libs.evaluation.classification import eval_attack, eval_cali, eval_test_clf
from libs.evaluation.features import eval_contrastive, eval_linear_probe, eval_noisy_clf
from libs.evaluation.generation import eval_gen, eval_sample
from libs.evaluation.likelihood import eval_nll, eval_ood
from libs.evaluation.sweep import eval_sweep

MODES = {
    'sample': eval_sample,
    'test_clf': eval_test_clf,
    'gen': eval_gen,
    'nll': eval_nll,
    'cali': eval_cali,
    'ood': eval_ood,
    'attack': eval_attack,
    'sweep': eval_sweep,
    'linear_probe': eval_linear_probe,
    'contrastive': eval_contrastive,
    'noisy_clf': eval_noisy_clf,
}


def run_eval_mode(config, mode: str, nnet_path: str, ema: bool = True) -> dict:
    """What ``eval.py --eval=<mode>`` does; returns the mode's numbers on every process."""
    if mode not in MODES:
        raise UserError(f"unknown --eval mode {mode!r}; known: {', '.join(MODES)}")
    return MODES[mode](config, nnet_path, ema)
