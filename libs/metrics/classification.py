"""Metrics for a ViT that is also a classifier (GenViT / HybViT): accuracy, calibration, out-of-distribution
detection and adversarial robustness.

- ``accuracy``: top-1 accuracy of logits.
- ``expected_calibration_error`` (Guo et al. 2017): the max probability is the confidence; samples fall into
  ``n_bins`` equal-width confidence bins ``(k / n_bins, (k + 1) / n_bins]`` (a confidence of exactly 0 goes to the
  first bin); ECE = sum over bins of (bin size / n) * |accuracy in bin - mean confidence in bin|.
  ``reliability_diagram`` draws the per-bin accuracies against the diagonal.
- ``auroc``: area under the ROC curve for telling in-distribution samples (expected to score higher) from
  out-of-distribution ones: P(s_in > s_out) + P(s_in = s_out) / 2 over all pairs, exact (Mann-Whitney U).
- ``pgd_attack`` (Madry et al. 2018): projected gradient ascent on a loss inside an L-inf or L2 ball, intersected
  with the valid pixel range. ``robust_correct`` / ``robust_accuracy`` run it at several radii (per sample / as a
  fraction); ``plot_robustness`` draws the curves.
- ``plot_score_histograms``: the distributions of a detection score on several sets (OOD ``logp_hist``).

Inputs are torch tensors or numpy arrays: logits / probabilities ``(N, K)``, labels int ``(N,)``, scores ``(N,)``.
Images for the attacks are ``(B, ...)`` float tensors, in ``[-1, 1]`` by default.
"""
import math

import numpy as np
import torch

from libs.errors import UserError
from libs.metrics.plots import new_figure, save_png

NORMS = ('linf', 'l2')


def _numpy(a) -> np.ndarray:
    if torch.is_tensor(a):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _check_labels(labels, n: int, what: str) -> np.ndarray:
    labels = _numpy(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise UserError(f'labels have shape {labels.shape}; expected ({n},) to match the {what}')
    return labels


def accuracy(logits, labels) -> float:
    """Fraction of samples whose largest logit is at their label; logits ``(N, K)``, labels ``(N,)``."""
    logits = _numpy(logits)
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise UserError(f'logits have shape {logits.shape}; expected (N, K) with N >= 1')
    labels = _check_labels(labels, logits.shape[0], 'logits')
    return float(np.mean(logits.argmax(axis=1) == labels))


def _calibration_bins(probs, labels, n_bins: int) -> dict:
    """The per-bin table behind ECE: edges, counts, accuracy and mean confidence (NaN for empty bins), and ECE."""
    if not isinstance(n_bins, (int, np.integer)) or isinstance(n_bins, bool) or n_bins < 1:
        raise UserError(f'n_bins must be an integer >= 1, got {n_bins!r}')
    probs = _numpy(probs).astype(np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise UserError(f'probabilities have shape {probs.shape}; expected (N, K) with N >= 1')
    labels = _check_labels(labels, probs.shape[0], 'probabilities')
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    # Bin k holds confidences in (k / n_bins, (k + 1) / n_bins]; 0 joins bin 0.
    index = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    sum_conf = np.bincount(index, weights=confidence, minlength=n_bins)
    sum_correct = np.bincount(index, weights=correct.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid='ignore', divide='ignore'):
        bin_accuracy = np.where(count > 0, sum_correct / count, np.nan)
        bin_confidence = np.where(count > 0, sum_conf / count, np.nan)
    ece = float(np.abs(sum_correct - sum_conf).sum() / probs.shape[0])
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {'lower': edges[:-1].tolist(), 'upper': edges[1:].tolist(), 'count': count.tolist(),
            'accuracy': bin_accuracy.tolist(), 'confidence': bin_confidence.tolist(), 'ece': ece}


def expected_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """ECE of probabilities ``(N, K)`` (rows sum to 1) against labels ``(N,)``; see the module docstring."""
    return _calibration_bins(probs, labels, n_bins)['ece']


def reliability_diagram(probs, labels, path: str, n_bins: int = 15, title: str = '') -> dict:
    """Write a PNG of per-bin accuracy (bars) against the diagonal, with the ECE in the title.

    Returns the per-bin table: ``lower``, ``upper`` (bin edges), ``count``, ``accuracy`` and ``confidence``
    (NaN for empty bins), as lists of length ``n_bins``, and ``ece``.
    """
    table = _calibration_bins(probs, labels, n_bins)
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    lower = np.asarray(table['lower'])
    width = 1.0 / n_bins
    acc = np.nan_to_num(np.asarray(table['accuracy']), nan=0.0)
    conf = np.asarray(table['confidence'])
    ax.bar(lower, acc, width=width, align='edge', color='tab:blue', edgecolor='black', label='accuracy')
    gap_bottom = np.where(np.isnan(conf), 0.0, np.minimum(acc, np.nan_to_num(conf)))
    gap_height = np.where(np.isnan(conf), 0.0, np.abs(np.nan_to_num(conf) - acc))
    ax.bar(lower, gap_height, bottom=gap_bottom, width=width, align='edge', color='tab:red', alpha=0.3,
           label='|accuracy - confidence|')
    ax.plot([0, 1], [0, 1], '--', color='gray', label='perfect calibration')
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel('confidence')
    ax.set_ylabel('accuracy')
    ax.legend(loc='upper left', fontsize=8)
    heading = f'ECE = {table["ece"]:.4f} ({n_bins} bins)'
    ax.set_title(f'{title}\n{heading}' if title else heading)
    save_png(fig, path)
    return table


def auroc(scores_in, scores_out) -> float:
    """Area under the ROC curve where in-distribution samples should score higher, ties counted 1/2.

    Computed exactly from mid-ranks of the pooled scores: AUROC = (R_in - n_in (n_in + 1) / 2) / (n_in n_out),
    with R_in the rank sum of the in-distribution scores (Mann-Whitney U / (n_in n_out)).
    """
    s_in = _numpy(scores_in).astype(np.float64).ravel()
    s_out = _numpy(scores_out).astype(np.float64).ravel()
    if s_in.size == 0 or s_out.size == 0:
        raise UserError(f'AUROC needs scores on both sides, got {s_in.size} in- and {s_out.size} out-of-distribution')
    pooled = np.concatenate([s_in, s_out])
    if not np.isfinite(pooled).all():
        raise UserError('AUROC scores contain NaN or infinite values')
    order = np.argsort(pooled, kind='mergesort')
    sorted_scores = pooled[order]
    # Mid-ranks: each run of equal scores at 1-based positions a..b gets rank (a + b) / 2.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], pooled.size]
    run_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(pooled.size)
    ranks[order] = np.repeat(run_rank, ends - starts)
    n_in, n_out = s_in.size, s_out.size
    u = ranks[:n_in].sum() - n_in * (n_in + 1) / 2.0
    return float(u / (n_in * n_out))


def _per_sample_norm(v: torch.Tensor, norm: str) -> torch.Tensor:
    """(B,) norms of the flattened samples of v, shaped (B, 1, ..., 1)."""
    flat = v.flatten(1)
    n = flat.abs().amax(dim=1) if norm == 'linf' else flat.norm(dim=1)
    return n.view((-1,) + (1,) * (v.ndim - 1))


def _project(x_adv, x, eps: float, norm: str, clamp):
    delta = x_adv - x
    if norm == 'linf':
        delta = delta.clamp(-eps, eps)
    else:
        norms = _per_sample_norm(delta, 'l2')
        delta = delta * torch.clamp(eps / norms.clamp_min(1e-30), max=1.0)
    out = x + delta
    if clamp is not None:
        out = out.clamp(clamp[0], clamp[1])
    return out


def _check_attack_args(x, y, eps, norm, steps, clamp):
    if norm not in NORMS:
        raise UserError(f'unknown norm {norm!r}; known: {", ".join(NORMS)}')
    if not torch.is_tensor(x) or not x.is_floating_point() or x.ndim < 2:
        raise UserError('attack inputs must be a floating tensor (B, ...)')
    if not torch.is_tensor(y) or y.ndim < 1 or y.shape[0] != x.shape[0]:
        shape = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
        raise UserError(f'labels have shape {shape}; expected a tensor with {x.shape[0]} rows to match the inputs')
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise UserError(f'eps must be a finite number >= 0, got {eps!r}') from None
    if not (math.isfinite(eps) and eps >= 0):
        raise UserError(f'eps must be a finite number >= 0, got {eps!r}')
    if not isinstance(steps, int) or steps < 1:
        raise UserError(f'steps must be an integer >= 1, got {steps!r}')
    if clamp is not None and not (len(clamp) == 2 and clamp[0] < clamp[1]):
        raise UserError(f'clamp must be None or (low, high) with low < high, got {clamp!r}')
    return eps


def pgd_attack(loss_fn, x, y, eps: float, norm: str = 'linf', steps: int = 10, step_size: float = None,
               clamp=(-1.0, 1.0), random_start: bool = True, generator: torch.Generator = None) -> torch.Tensor:
    """White-box PGD: ``steps`` steps of projected gradient ascent on ``loss_fn(x_adv, y)``, returning the last iterate.

    loss_fn: a callable returning a per-sample ``(B,)`` or a scalar loss (summed before differentiation; sample i's
        loss must depend only on x_adv[i], as for a model in eval mode).
    x: ``(B, ...)`` clean inputs; y: labels ``(B,)``; eps: radius of the ball in the given norm ('linf' or 'l2',
        over each flattened sample).
    Each step moves by ``step_size`` (default 2.5 eps / steps) along sign(grad) (L-inf) or grad / ||grad||_2 (L2),
    then projects onto the eps-ball around x and onto ``clamp`` (None: no pixel range). ``random_start`` begins at a
    uniform point of the L-inf ball, or of the L2 ball, drawn from ``generator``.
    Gradients are taken with respect to the input only; parameters of the model are not touched.
    """
    eps = _check_attack_args(x, y, eps, norm, steps, clamp)
    x = x.detach()
    if eps == 0:
        return x.clone()
    if step_size is None:
        step_size = 2.5 * eps / steps
    x_adv = x.clone()
    if random_start:
        if norm == 'linf':
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
            x_adv = x + eps * noise
        else:
            direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            direction = direction / _per_sample_norm(direction, 'l2').clamp_min(1e-30)
            dims = x[0].numel()
            u = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), generator=generator, device=x.device, dtype=x.dtype)
            x_adv = x + eps * u ** (1.0 / dims) * direction
        x_adv = _project(x_adv, x, eps, norm, clamp)
    elif clamp is not None:
        x_adv = x_adv.clamp(clamp[0], clamp[1])
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(x_adv, y)
            if not torch.is_tensor(loss) or loss.ndim > 1 or (loss.ndim == 1 and loss.shape[0] != x.shape[0]):
                shape = tuple(loss.shape) if torch.is_tensor(loss) else type(loss).__name__
                raise UserError(f'loss_fn returned shape {shape}; expected a scalar or ({x.shape[0]},)')
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        with torch.no_grad():
            if norm == 'linf':
                step = grad.sign()
            else:
                step = grad / _per_sample_norm(grad, 'l2').clamp_min(1e-30)
            x_adv = _project(x_adv + step_size * step, x, eps, norm, clamp)
    return x_adv.detach()


def robust_correct(classify, x, y, eps_list, norm: str = 'linf', steps: int = 10, step_size: float = None,
                   clamp=(-1.0, 1.0), random_start: bool = True, generator: torch.Generator = None,
                   loss_fn=None, batch_size: int = None) -> dict:
    """Per sample, whether ``classify(x) -> logits (B, K)`` is still right under a PGD attack of each radius in
    ``eps_list``: {eps: bool tensor (B,)}.

    The attack maximises ``loss_fn(x, y)`` (default: per-sample cross-entropy of ``classify``); each radius is
    attacked independently, with ``step_size`` None meaning 2.5 eps / steps for that eps. eps = 0 gives the clean
    predictions. ``batch_size`` splits the inputs into chunks (all at once if None).
    """
    if norm not in NORMS:
        raise UserError(f'unknown norm {norm!r}; known: {", ".join(NORMS)}')
    if not torch.is_tensor(y) or y.ndim != 1 or not torch.is_tensor(x) or y.shape[0] != x.shape[0]:
        raise UserError('a robustness evaluation needs inputs (B, ...) and labels (B,) as tensors with the same B')
    if loss_fn is None:
        def loss_fn(inputs, labels):
            return torch.nn.functional.cross_entropy(classify(inputs), labels, reduction='none')
    eps_list = [float(e) for e in eps_list]
    batch_size = batch_size or x.shape[0]
    results = {}
    for eps in eps_list:
        correct = []
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            x_adv = pgd_attack(loss_fn, xb, yb, eps, norm=norm, steps=steps, step_size=step_size, clamp=clamp,
                               random_start=random_start, generator=generator)
            with torch.no_grad():
                correct.append(classify(x_adv).argmax(dim=1) == yb)
        results[eps] = torch.cat(correct)
    return results


def robust_accuracy(classify, x, y, eps_list, **attack) -> dict:
    """Accuracy under a PGD attack of each radius in ``eps_list``: {eps: accuracy}; arguments of ``robust_correct``."""
    return {eps: float(correct.double().mean()) for eps, correct in
            robust_correct(classify, x, y, eps_list, **attack).items()}


def plot_score_histograms(scores: dict, path: str, xlabel: str, title: str = '', bins: int = 40) -> None:
    """Write a PNG with one histogram per named set of scores ({name: (N,) scores}), on shared bins: the first set
    filled, the others outlined. Each is normalised to unit area, so sets of different sizes compare by shape.
    """
    if not isinstance(scores, dict) or not scores:
        raise UserError('plot_score_histograms needs a non-empty dict {name: scores}')
    arrays = {name: _numpy(v).astype(np.float64).ravel() for name, v in scores.items()}
    pooled = np.concatenate(list(arrays.values()))
    pooled = pooled[np.isfinite(pooled)]
    if pooled.size == 0:
        raise UserError('plot_score_histograms got no finite scores')
    low, high = float(pooled.min()), float(pooled.max())
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    fig = new_figure(5.5, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    for i, (name, values) in enumerate(arrays.items()):
        # The first set (the in-distribution one) filled, so a set identical to it still shows both.
        ax.hist(values[np.isfinite(values)], bins=edges, density=True, histtype='stepfilled' if i == 0 else 'step',
                alpha=0.35 if i == 0 else 1.0, linewidth=1.5, label=f'{name} (n={values.size})')
    ax.set_xlabel(xlabel)
    ax.set_ylabel('density')
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    save_png(fig, path)


def plot_robustness(results: dict, path: str, title: str = '') -> None:
    """Write a PNG of accuracy against eps, one panel per norm (their radii live on different scales).

    results: ``{norm: {eps: accuracy}}`` (e.g. ``{'linf': robust_accuracy(...), 'l2': ...}``), or one
    ``{eps: accuracy}`` mapping drawn as a single panel.
    """
    if not isinstance(results, dict) or not results:
        raise UserError('plot_robustness needs a non-empty dict {norm: {eps: accuracy}}')
    if not isinstance(next(iter(results.values())), dict):
        results = {'': results}
    fig = new_figure(4.0 * len(results), 3.6)
    for i, (norm, curve) in enumerate(results.items()):
        ax = fig.add_subplot(1, len(results), i + 1)
        eps = sorted(curve)
        ax.plot(eps, [curve[e] for e in eps], 'o-')
        ax.set_xlabel(f'eps ({norm})' if norm else 'eps')
        ax.set_ylabel('robust accuracy')
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    save_png(fig, path)
