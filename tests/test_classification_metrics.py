"""Classification metrics: ECE on synthetic predictors with known calibration, exact AUROC, PGD on linear
classifiers whose worst case is known in closed form, plots, errors."""
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from libs.errors import UserError
from libs.metrics import classification as cm

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _predictor(confidence, correct, num_classes, rng):
    """Probabilities whose max is `confidence` on a random predicted class; the label is that class where `correct`,
    otherwise another class. The remaining mass is spread evenly over the other classes."""
    n = confidence.shape[0]
    pred = rng.integers(num_classes, size=n)
    probs = np.repeat(((1 - confidence) / (num_classes - 1))[:, None], num_classes, axis=1)
    probs[np.arange(n), pred] = confidence
    other = (pred + rng.integers(1, num_classes, size=n)) % num_classes
    return probs, np.where(correct, pred, other)


def test_accuracy():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    assert cm.accuracy(logits, torch.tensor([0, 1, 0, 2])) == 0.5
    assert cm.accuracy(logits.numpy(), np.array([0, 1, 2, 0])) == 1.0


def test_ece_of_a_calibrated_predictor_is_small():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.2, 1.0, size=20000)
    probs, labels = _predictor(confidence, rng.uniform(size=20000) < confidence, 10, rng)
    ece = cm.expected_calibration_error(probs, labels)
    print(f'calibrated predictor: ECE {ece:.4f}')  # measured 0.0072
    assert ece < 0.02


def test_ece_of_an_over_confident_predictor(tmp_path):
    rng = np.random.default_rng(1)
    n = 10000
    correct = rng.permutation(n) < 0.6 * n  # accuracy exactly 0.6
    probs, labels = _predictor(np.full(n, 0.95), correct, 10, rng)
    ece = cm.expected_calibration_error(torch.from_numpy(probs), torch.from_numpy(labels))
    assert ece == pytest.approx(0.35, abs=1e-9)

    table = cm.reliability_diagram(probs, labels, str(tmp_path / 'plots' / 'reliability.png'), n_bins=10,
                                   title='over-confident')
    with open(tmp_path / 'plots' / 'reliability.png', 'rb') as f:
        assert f.read(8) == PNG_MAGIC
    assert table['ece'] == pytest.approx(0.35, abs=1e-9)
    assert table['count'][9] == n and sum(table['count']) == n  # 0.95 lies in (0.9, 1.0]
    assert table['accuracy'][9] == pytest.approx(0.6) and np.isnan(table['accuracy'][0])
    assert len(table['lower']) == len(table['upper']) == 10


def test_ece_bins_are_right_closed():
    # Confidences 0.4 (bin (0.2, 0.4]) and 0.41 (bin (0.4, 0.6]) with 5 bins, one right and one wrong each.
    probs = np.array([[0.4, 0.3, 0.3], [0.4, 0.3, 0.3], [0.41, 0.3, 0.29], [0.41, 0.3, 0.29]])
    labels = np.array([0, 1, 0, 1])
    table = cm._calibration_bins(probs, labels, 5)
    assert table['count'] == [0, 2, 2, 0, 0]
    assert table['ece'] == pytest.approx(0.5 * abs(0.5 - 0.4) + 0.5 * abs(0.5 - 0.41))


def test_auroc_known_values():
    assert cm.auroc([3.0, 4.0, 5.0], [0.0, 1.0, 2.0]) == 1.0
    assert cm.auroc([0.0, 1.0, 2.0], [3.0, 4.0, 5.0]) == 0.0
    assert cm.auroc([1.0, 2.0, 2.0], [1.0, 2.0, 2.0]) == 0.5
    assert cm.auroc(torch.ones(7), torch.ones(3)) == 0.5
    assert cm.auroc([1.0, 3.0], [2.0]) == 0.5
    assert cm.auroc([2.0], [2.0, 1.0]) == 0.75


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(2)
    for n_in, n_out in [(500, 300), (40, 1000)]:
        s_in = rng.integers(0, 6, size=n_in) + 0.5 * (rng.uniform(size=n_in) < 0.5)
        s_out = rng.integers(-1, 5, size=n_out) + 0.5 * (rng.uniform(size=n_out) < 0.5)
        reference = roc_auc_score(np.r_[np.ones(n_in), np.zeros(n_out)], np.r_[s_in, s_out])
        assert cm.auroc(s_in, s_out) == pytest.approx(reference, abs=1e-12)
    s_in, s_out = rng.normal(0.5, 1.0, size=2000), rng.normal(0.0, 1.0, size=1500)
    reference = roc_auc_score(np.r_[np.ones(2000), np.zeros(1500)], np.r_[s_in, s_out])
    assert cm.auroc(s_in, s_out) == pytest.approx(reference, abs=1e-12)


def _linear(weight):
    """A fixed linear classifier on flattened inputs and its per-sample cross-entropy."""
    def classify(x):
        return x.flatten(1) @ weight.T

    def loss_fn(x, y):
        return torch.nn.functional.cross_entropy(classify(x), y, reduction='none')
    return classify, loss_fn


def _linear_problem(num_classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_classes, 12, generator=g, dtype=torch.float64)
    x = (torch.rand(256, 3, 2, 2, generator=g, dtype=torch.float64) * 1.6 - 0.8)
    return weight, x, _linear(weight)[0](x).argmax(1), g


@pytest.mark.parametrize('norm, eps', [('linf', 0.1), ('l2', 0.5)])
def test_pgd_raises_the_loss_and_stays_in_the_ball(norm, eps):
    weight, x, _, g = _linear_problem()
    y = torch.randint(0, 4, (x.shape[0],), generator=g)
    _, loss_fn = _linear(weight)
    x_adv = cm.pgd_attack(loss_fn, x, y, eps, norm=norm, steps=20, generator=g)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == 'linf' else delta.norm(dim=1)
    assert bool((size <= eps * (1 + 1e-9)).all())
    assert bool((x_adv >= -1).all()) and bool((x_adv <= 1).all())
    clean, attacked = loss_fn(x, y), loss_fn(x_adv, y)
    assert bool((attacked > clean).all())
    assert float(attacked.mean()) > float(clean.mean()) + 0.1


def test_pgd_respects_the_pixel_range_at_the_border():
    weight, x, y, g = _linear_problem()
    x = x.sign()  # every pixel at -1 or 1
    x_adv = cm.pgd_attack(_linear(weight)[1], x, y, 0.3, steps=5, generator=g)
    assert bool((x_adv.abs() <= 1).all()) and bool(((x_adv - x).abs() <= 0.3 + 1e-12).all())


def test_pgd_reaches_the_closed_form_optimum_of_a_linear_binary_classifier():
    # Binary logits W x: the cross-entropy falls with the margin (w_y - w_other) . x, so inside the L-inf ball it is
    # largest at x - eps sign(w_y - w_other), and inside the L2 ball at x - eps (w_y - w_other) / ||.||_2
    # (both inside [-1, 1] here).
    weight, x, y, g = _linear_problem(num_classes=2, seed=3)
    _, loss_fn = _linear(weight)
    direction = (weight[y] - weight[1 - y]).view_as(x)
    eps = 0.1
    best = x - eps * direction.sign()
    x_adv = cm.pgd_attack(loss_fn, x, y, eps, norm='linf', steps=10, generator=g)
    print(f'L-inf PGD vs closed form: max |difference| {float((x_adv - best).abs().max()):.1e}')
    assert torch.allclose(x_adv, best, atol=1e-12)
    assert torch.allclose(loss_fn(x_adv, y), loss_fn(best, y), rtol=1e-12)

    eps = 0.3
    unit = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    best = x - eps * unit
    x_adv = cm.pgd_attack(loss_fn, x, y, eps, norm='l2', steps=10, random_start=False)
    assert torch.allclose(x_adv, best, atol=1e-12)
    # From a random start the orthogonal part of the start only shrinks by the projections, so the optimum is
    # approached, not reached; the loss can never exceed the optimum's.
    x_adv = cm.pgd_attack(loss_fn, x, y, eps, norm='l2', steps=10, generator=g)
    shortfall = loss_fn(best, y) - loss_fn(x_adv, y)
    print(f'L2 PGD from a random start: loss below the optimum by at most {float(shortfall.max()):.1e}')
    assert float(shortfall.min()) > -1e-12
    assert float((shortfall / (loss_fn(best, y) - loss_fn(x, y))).max()) < 0.1


def test_pgd_with_a_mean_loss_and_a_model_in_float32():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    x = torch.rand(32, 3, 2, 2) * 2 - 1
    y = torch.randint(0, 3, (32,))
    x_adv = cm.pgd_attack(lambda a, b: torch.nn.functional.cross_entropy(model(a), b), x, y, 8 / 255)
    assert x_adv.dtype == torch.float32 and not x_adv.requires_grad
    assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(cm.pgd_attack(lambda a, b: model(a).sum(), x, y, 0.0), x)


def test_robust_accuracy_falls_with_eps_and_plot(tmp_path):
    weight, x, _, g = _linear_problem(num_classes=4, seed=5)
    classify, _ = _linear(weight)
    y = classify(x).argmax(1)
    y[:64] = (y[:64] + 1) % 4  # a quarter misclassified: clean accuracy 0.75
    results = {}
    for norm, eps_list in [('linf', [0.0, 0.02, 0.05, 0.1, 0.2, 0.5]), ('l2', [0.0, 0.1, 0.25, 0.5, 1.0, 2.0])]:
        results[norm] = cm.robust_accuracy(classify, x, y, eps_list, norm=norm, steps=10, generator=g, batch_size=100)
        accs = [results[norm][e] for e in eps_list]
        print(norm, ' '.join(f'{e}: {a:.3f}' for e, a in zip(eps_list, accs)))
        assert accs[0] == 0.75
        assert all(b <= a for a, b in zip(accs, accs[1:]))
        assert accs[-1] < 0.2
    cm.plot_robustness(results, str(tmp_path / 'robustness.png'), title='linear classifier')
    cm.plot_robustness(results['linf'], str(tmp_path / 'linf.png'))
    for name in ('robustness.png', 'linf.png'):
        with open(tmp_path / name, 'rb') as f:
            assert f.read(8) == PNG_MAGIC


def test_robust_correct_is_per_sample_and_seeded():
    weight, x, y, _ = _linear_problem(num_classes=4, seed=6)
    classify, _ = _linear(weight)
    per_sample = cm.robust_correct(classify, x, y, [0.0, 0.1], norm='l2', steps=5,
                                   generator=torch.Generator().manual_seed(0), batch_size=60)
    assert per_sample[0.0].dtype == torch.bool and per_sample[0.0].shape == (256,)
    assert bool(per_sample[0.0].all())      # y is the clean prediction
    again = cm.robust_accuracy(classify, x, y, [0.0, 0.1], norm='l2', steps=5,
                               generator=torch.Generator().manual_seed(0), batch_size=60)
    assert again == {0.0: 1.0, 0.1: float(per_sample[0.1].double().mean())}
    assert 0.0 < again[0.1] < 1.0


def test_score_histograms_png(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / 'hist' / 'logp_hist.png'
    cm.plot_score_histograms({'in': rng.normal(size=300), 'out': torch.from_numpy(rng.normal(1, 1, size=50)),
                              'constant': np.full(5, 0.5)}, str(path), 'score', title='t')
    with open(path, 'rb') as f:
        assert f.read(8) == PNG_MAGIC
    cm.plot_score_histograms({'one value': [2.0, 2.0]}, str(tmp_path / 'flat.png'), 'score')
    assert (tmp_path / 'flat.png').stat().st_size > 1000


def test_bad_input_raises_user_error():
    weight, x, y, _ = _linear_problem()
    _, loss_fn = _linear(weight)
    probs = np.full((4, 2), 0.5)
    cases = [
        lambda: cm.pgd_attack(loss_fn, x, y, 0.1, norm='l1'),
        lambda: cm.pgd_attack(loss_fn, x, y[:3], 0.1),
        lambda: cm.pgd_attack(loss_fn, x, y, -0.1),
        lambda: cm.pgd_attack(loss_fn, x, y, 0.1, steps=0),
        lambda: cm.pgd_attack(lambda a, b: torch.zeros(2, 2, requires_grad=True), x, y, 0.1),
        lambda: cm.robust_accuracy(lambda a: a.flatten(1), x, y, [0.1], norm='L3'),
        lambda: cm.expected_calibration_error(probs, np.zeros(3, dtype=int)),
        lambda: cm.expected_calibration_error(probs, np.zeros(4, dtype=int), n_bins=0),
        lambda: cm.reliability_diagram(probs, np.zeros(4, dtype=int), '/nonexistent/x.png', n_bins=0),
        lambda: cm.accuracy(np.zeros(4), np.zeros(4)),
        lambda: cm.auroc([], [1.0]),
        lambda: cm.auroc([np.nan], [1.0]),
        lambda: cm.plot_robustness({}, '/nonexistent/x.png'),
        lambda: cm.robust_correct(lambda a: a.flatten(1), x, y[:5], [0.1]),
        lambda: cm.plot_score_histograms({}, '/nonexistent/x.png', 'score'),
        lambda: cm.plot_score_histograms({'a': [np.nan]}, '/nonexistent/x.png', 'score'),
    ]
    for case in cases:
        with pytest.raises(UserError) as info:
            case()
        assert '\n' not in str(info.value)
