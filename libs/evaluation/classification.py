"""Classifier modes, for a network with a classification head (GenViT / HybViT, or a U-ViT with one):
``test_clf`` (top-1 accuracy on the test split), ``cali`` (expected calibration error and a reliability diagram)
and ``attack`` (white-box PGD under L-inf and L2, radii ``clf_eval.*_eps`` in [0, 1] pixel units, through
``classify``; robust accuracy per radius as a table and a plot)."""
import torch
from torch.utils.data import Subset

from libs.errors import UserError
from libs.evaluation.harness import EvalRun


def limited(dataset, n: int):
    """The first ``n`` items (all if n is 0 or larger than the dataset)."""
    if n and n < len(dataset):
        return Subset(dataset, range(n))
    return dataset


def test_split(config):
    """The test split of ``config.dataset``, cut to ``clf_eval.n_test`` images; pixel-space data only."""
    from libs.data import build_dataset
    dataset = build_dataset(config.dataset, split='test')
    if getattr(dataset, 'stores_features', False):
        raise UserError(f'dataset {config.dataset.name!r} holds autoencoder features, not images: the classifier '
                        f'and likelihood modes evaluate pixel-space models')
    return limited(dataset, config.clf_eval.n_test)


def eval_test_clf(config, nnet_path: str, ema: bool = True) -> dict:
    from libs.metrics.classification import accuracy
    test = test_split(config)
    run = EvalRun.load(config, nnet_path, ema, classifier=True, mode='test_clf')
    out = run.per_image(test, lambda x, y: {'logits': run.logits(x), 'labels': y}, 'test_clf')
    result = {'accuracy': accuracy(out['logits'], out['labels'])}
    n = len(out['labels'])
    run.write('test_clf', n, [], {}, result)
    run.print(f"accuracy={result['accuracy']:.4f} (n={n})")
    return result


def eval_cali(config, nnet_path: str, ema: bool = True) -> dict:
    from libs.metrics.classification import accuracy, reliability_diagram
    test = test_split(config)
    run = EvalRun.load(config, nnet_path, ema, classifier=True, mode='cali')
    out = run.per_image(test, lambda x, y: {'logits': run.logits(x), 'labels': y}, 'cali')
    n, bins = len(out['labels']), run.cfg.ece_bins
    stem = run.stem('cali', n, f'bins{bins}')
    probs = torch.softmax(out['logits'].double(), dim=1)
    result = {}
    if run.accelerator.is_main_process:
        table = reliability_diagram(probs, out['labels'], run.path(stem + '_reliability.png'), n_bins=bins,
                                    title=f'{config.dataset.name} test, {n} images')
        result = {'ece': table.pop('ece'), 'accuracy': accuracy(out['logits'], out['labels']), 'bins': table,
                  'reliability_diagram': run.path(stem + '_reliability.png')}
        run.write('cali', n, [f'bins{bins}'], {'ece_bins': bins}, result)
        run.print(f"ece={result['ece']:.4f} accuracy={result['accuracy']:.4f} (n={n}, {bins} bins)")
    return run.broadcast(result)


def eval_attack(config, nnet_path: str, ema: bool = True) -> dict:
    from libs.metrics.classification import NORMS, plot_robustness, robust_correct
    cfg = config.clf_eval
    norms = tuple(cfg.attack_norms)
    if not norms or any(norm not in NORMS for norm in norms):
        raise UserError(f'clf_eval.attack_norms must name some of {", ".join(NORMS)}, got {norms!r}')
    eps_lists = {norm: [float(e) for e in cfg[f'{norm}_eps']] for norm in norms}
    test = test_split(config)
    run = EvalRun.load(config, nnet_path, ema, classifier=True, mode='attack')
    generator = run.generator()

    def classify(x):
        with run.accelerator.autocast():
            return run.nnet.classify(x).float()

    def attacked(x, y):
        out = {}
        for norm in norms:
            # Radii are in [0, 1] pixel units; model space [-1, 1] is twice as wide.
            correct = robust_correct(classify, x, y, [2 * e for e in eps_lists[norm]], norm=norm,
                                     steps=cfg.attack_steps, generator=generator)
            for i, flags in enumerate(correct.values()):
                out[f'{norm}_{i}'] = flags
        return out
    out = run.per_image(test, attacked, 'attack')
    n = len(next(iter(out.values())))
    table = [{'norm': norm, 'eps': eps, 'robust_accuracy': float(out[f'{norm}_{i}'].double().mean())}
             for norm in norms for i, eps in enumerate(eps_lists[norm])]
    stem = run.stem('attack', n, f'pgd{cfg.attack_steps}')
    result = {'robust_accuracy': table, 'plot': run.path(stem + '_robustness.png')}
    if run.accelerator.is_main_process:
        curves = {norm: {row['eps']: row['robust_accuracy'] for row in table if row['norm'] == norm} for norm in norms}
        plot_robustness(curves, result['plot'], title=f'PGD-{cfg.attack_steps}, {config.dataset.name} test ({n})')
        settings = {'steps': cfg.attack_steps, 'step_size': '2.5 eps / steps', 'random_start': True,
                    'eps_units': 'pixels in [0, 1] (model space [-1, 1] uses 2 eps)'}
        run.write('attack', n, [f'pgd{cfg.attack_steps}'], settings, result)
        run.print('norm  eps        robust_accuracy')
        for row in table:
            run.print(f"{row['norm']:<5} {row['eps']:<10.5g} {row['robust_accuracy']:.4f}")
    return result
