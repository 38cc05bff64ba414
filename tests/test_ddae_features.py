"""DDAE's feature evaluations (libs/evaluation/features.py) on the digits, with one small EDM U-ViT trained once for
the module, and the representation metrics in closed form."""
import json
import math
import os

import pytest
import torch
from scipy.special import i0

from forking import fork_ranks, wait
from libs.config import d, load_config_file
from libs.data import build_dataset
from libs.diffusion.edm import EDMFramework, EDMPrecond
from libs.errors import UserError
from libs.evaluation.features import (Features, eval_contrastive, eval_linear_probe, eval_noisy_clf, levels_of,
                                      split)
from libs.evaluation.harness import EvalRun
from libs.metrics.representation import alignment, uniformity
from libs.nets import build_nnet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(name='uvit', img_size=8, patch_size=2, in_chans=1, embed_dim=48, depth=2, num_heads=2, mlp_ratio=2,
            num_classes=-1)
TRAIN_STEPS = 300


def tiny_config(**probe):
    config = load_config_file(os.path.join(ROOT, 'configs', 'digits_edm_uvit.py'))
    config.nnet.update({k: v for k, v in TINY.items() if k != 'name'})
    config.train.mode = 'uncond'
    config.probe.update(dict(layers='block_1', level=2, epochs=60, lr=0.01, n_train=0, n_test=0), **probe)
    return config


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    """ckpts/0.ckpt: the randomly initialised network; ckpts/300.ckpt: the same network after 300 steps of EDM's
    loss on the digits (unconditional), as a run's checkpoints lay out their weights."""
    root = tmp_path_factory.mktemp('edm_run')
    torch.manual_seed(0)
    net = build_nnet(TINY)
    (root / 'ckpts' / '0.ckpt').mkdir(parents=True)
    torch.save(net.state_dict(), root / 'ckpts' / '0.ckpt' / 'nnet_ema.pth')
    framework = EDMFramework(EDMPrecond('edm'))
    images = build_dataset(d(name='digits'), 'train').images
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for _ in range(TRAIN_STEPS):
        loss = framework.loss(net, images[torch.randint(0, len(images), (64,))]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    (root / 'ckpts' / f'{TRAIN_STEPS}.ckpt').mkdir()
    torch.save(net.state_dict(), root / 'ckpts' / f'{TRAIN_STEPS}.ckpt' / 'nnet_ema.pth')
    return root


def trained(run_dir):
    return str(run_dir / 'ckpts' / f'{TRAIN_STEPS}.ckpt')


def untrained(run_dir):
    return str(run_dir / 'ckpts' / '0.ckpt')


def test_probe_of_trained_features_beats_the_same_probe_on_random_features(run_dir, fresh_accelerate_state):
    config = tiny_config()
    learned = eval_linear_probe(config, trained(run_dir))
    random = eval_linear_probe(config, untrained(run_dir))
    # measured: 0.49 against 0.22 (chance 0.1)
    assert learned['accuracy'] > random['accuracy'] + 0.15, (learned['accuracy'], random['accuracy'])
    record = json.loads(open(os.path.join(trained(run_dir),
                                          'eval_linear_probe_digits_n359_block_1_level2_ema.json')).read())
    assert record['accuracy'] == learned['accuracy'] and record['n'] == 359 and record['n_train'] == 1438
    level = levels_of(EDMFramework(EDMPrecond()), [2])[0]
    assert record['settings']['levels'][0]['sigma'] == pytest.approx(level.sigma)
    assert record['settings']['epochs'] == 60 and record['settings']['layers'] == ['block_1']


def test_grid_has_one_entry_per_layer_and_level_and_a_heat_map(run_dir, fresh_accelerate_state):
    config = tiny_config(grid=True, grid_layers='', grid_levels='2,6', epochs=10, n_train=400)
    result = eval_linear_probe(config, trained(run_dir))
    layers = ['block_0', 'block_1', 'block_2']          # depth 2: in, mid, out
    assert [(row['layer'], row['index']) for row in result['grid']] == [(n, k) for n in layers for k in (2, 6)]
    sigmas = {row['index']: row['sigma'] for row in result['grid']}
    assert sigmas[2] < sigmas[6]
    assert result['best'] == max(result['grid'], key=lambda row: row['accuracy'])
    assert os.path.getsize(result['heatmap']) > 1000
    record = json.loads(open(os.path.join(trained(run_dir), 'eval_linear_probe_digits_n359_grid_ema.json')).read())
    assert len(record['grid']) == 6 and record['heatmap'] == result['heatmap']


def test_unknown_layer_is_one_line_naming_the_valid_ones(run_dir, fresh_accelerate_state):
    with pytest.raises(UserError, match="no feature layer 'out_7'; valid names: block_0, block_1, block_2"):
        eval_linear_probe(tiny_config(layers='out_7'), trained(run_dir))
    with pytest.raises(UserError, match=r"noise level is an integer in 1\.\.18 \(DDAE's index into EDM's 18-level"):
        eval_linear_probe(tiny_config(level=19), trained(run_dir))


def test_alignment_and_uniformity_closed_forms():
    a = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    assert alignment(a, a * 5) == pytest.approx(0.0, abs=1e-12)
    assert alignment(a, a.flip(1)) == pytest.approx(2.0)                      # orthogonal unit vectors: |u - v|^2 = 2
    assert uniformity(torch.tensor([[0.0, 2.0], [0.0, -1.0]])) == pytest.approx(-8.0)   # antipodal: |u - v|^2 = 4
    n = 500                                                                    # evenly spaced on the circle
    angles = torch.arange(n, dtype=torch.float64) * 2 * math.pi / n
    ring = torch.stack([angles.cos(), angles.sin()], 1)
    pairs = [math.exp(-2 * (2 - 2 * math.cos(2 * math.pi * (j - i) / n))) for i in range(n) for j in range(i + 1, n)]
    assert uniformity(ring, block=64) == pytest.approx(math.log(sum(pairs) / len(pairs)), rel=1e-9)
    # uniform on the circle: E exp(-4 (1 - cos theta)) = exp(-4) I0(4)
    assert uniformity(ring) == pytest.approx(-4 + math.log(i0(4.0)), abs=0.01)


def test_contrastive_over_the_checkpoints_of_a_run(run_dir, fresh_accelerate_state):
    config = tiny_config(grid_layers='block_0,block_2', level=4)
    config.contrastive.n_images = 200
    result = eval_contrastive(config, str(run_dir))
    assert [(row['step'], row['layer']) for row in result['table']] == \
        [(0, 'block_0'), (0, 'block_2'), (300, 'block_0'), (300, 'block_2')]
    for row in result['table']:
        assert 0 < row['alignment'] < 4 and -8 <= row['uniformity'] < 0
    record_path = os.path.join(str(run_dir), 'ckpts', 'eval_contrastive_digits_n200_level4_ema.json')
    record = json.loads(open(record_path).read())
    assert record['table'] == result['table'] and os.path.getsize(result['plot']) > 1000
    # the numbers are those of the features themselves
    run = EvalRun.load(config, trained(run_dir))
    features = Features(run)
    level = levels_of(run.framework, [4])
    views = [features.table(split(config, 'train', 200), ['block_2'], level, 100000 + v, 'view') for v in range(2)]
    assert result['table'][3]['alignment'] == pytest.approx(alignment(views[0]['block_2@4'], views[1]['block_2@4']))
    with pytest.raises(UserError, match='no <step>.ckpt directory'):
        eval_contrastive(config, str(run_dir / 'ckpts' / '0.ckpt'))


def test_noisy_classifiers_accuracy_against_the_noise_level(run_dir, fresh_accelerate_state):
    config = tiny_config(n_train=0, n_test=200)
    config.noisy_clf.update(test_levels='1,18', mlp_epochs=30, wrn_depth=10, wrn_widen=1, wrn_epochs=3,
                            wrn_warmup_epochs=1)
    result = eval_noisy_clf(config, trained(run_dir))
    low, high = result['curves']
    assert (low['index'], high['index']) == (1, 18) and low['sigma'] == pytest.approx(0.002)
    # measured: MLP 0.38 at sigma 0.002, 0.11 at sigma 80 (nothing left to classify); WideResNet 0.53 and 0.17
    assert low['mlp_on_features'] > high['mlp_on_features'] + 0.15 and high['mlp_on_features'] < 0.25
    assert low['wideresnet'] > high['wideresnet'] + 0.15 and high['wideresnet'] < 0.3
    assert os.path.getsize(result['plot']) > 1000
    record = json.loads(open(os.path.join(trained(run_dir), 'eval_noisy_clf_digits_n200_block_1_ema.json')).read())
    assert record['settings']['wideresnet']['wrn_depth'] == 10 and record['curves'] == result['curves']


def test_two_processes_extract_the_features_of_one(run_dir, tmp_path, fresh_accelerate_state):
    """The harness splits images across processes and gathers them in order; each image's noise is its own, so two
    processes give one process's features and the same probe."""
    config = tiny_config(n_train=300, n_test=100, epochs=5)
    single = eval_linear_probe(config, trained(run_dir))
    run = EvalRun.load(config, trained(run_dir))
    one = Features(run).table(split(config, 'test', 100), ['block_1'], levels_of(run.framework, [2]), 0, 'one')

    def action():
        run = EvalRun.load(config, trained(run_dir))
        table = Features(run).table(split(config, 'test', 100), ['block_1'], levels_of(run.framework, [2]), 0, 'two')
        result = eval_linear_probe(config, trained(run_dir))
        if run.accelerator.is_main_process:
            torch.save({'table': table, 'result': result}, tmp_path / 'two.pt')

    codes = [wait(pid) for pid in fork_ranks(action, 2, str(tmp_path))]
    assert codes == [0, 0], (tmp_path / 'rank0.log').read_text()[-3000:]
    two = torch.load(tmp_path / 'two.pt', weights_only=True)
    torch.testing.assert_close(two['table']['block_1@2'], one['block_1@2'], rtol=1e-5, atol=1e-5)
    assert torch.equal(two['table']['labels'], one['labels'])
    assert two['result']['accuracy'] == pytest.approx(single['accuracy'], abs=2 / 100)
