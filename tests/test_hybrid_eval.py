"""eval.py --eval=<mode> on a tiny HybViT trained for a few seconds on the digits: every mode's JSON against a
direct computation of the same number, the OOD shape conversion, and one-line errors for bad input."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from forking import run_script
from libs.config import d, load_config_file
from libs.data import build_dataset
from libs.diffusion.gaussian import Denoiser, GaussianFramework
from libs.errors import UserError
from libs.nets.genvit import GenViT
from libs.evaluation import run_eval_mode
from libs.evaluation.likelihood import InShape
from libs.metrics import classification as cm
from libs.metrics import fid
from libs.diffusion.vlb import bits_per_dim
from libs.nets import build_nnet
from libs.rng import eval_process_seed
from libs.training.objectives import build_objective
from libs.diffusion.schedules import DiscreteSchedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HYBVIT_CONFIG = os.path.join(ROOT, 'configs', 'digits_hybvit.py')
UVIT_CONFIG = os.path.join(ROOT, 'configs', 'digits_uvit_tiny.py')
NET = dict(embed_dim=32, depth=2, num_heads=2)
N_TEST, STEPS = 60, 100   # test images per set; a 100-step cosine schedule keeps the bound cheap
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def tiny_genvit():
    return GenViT(img_size=8, patch_size=2, in_chans=1, num_classes=10, **NET)


def hybrid_training(net, steps: int, seed: int = 0):
    """``steps`` Adam steps of HybViT's objective (cross-entropy + L_simple, x0 prediction) on the digits."""
    torch.manual_seed(seed)
    train = build_dataset(d(name='digits'), 'train')
    x, y = train.images, torch.from_numpy(train.labels)
    objective = build_objective(d(name='hybrid', alpha=1.0, augment='none'),
                                GaussianFramework(DiscreteSchedule.cosine(STEPS), 'x0'))
    module = objective.training_module(net)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for _ in range(steps):
        index = torch.randint(0, len(x), (128,))
        loss, _ = objective(module, x[index], {}, y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    """A checkpoint directory: nnet_ema.pth a HybViT trained 150 steps (measured: 0.82 accuracy on the first 60
    test images, 5 s), nnet.pth an untrained one, so that --ema picks visibly different weights."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp('hybvit') / '150.ckpt'
    folder.mkdir()
    torch.save(tiny_genvit().state_dict(), folder / 'nnet.pth')
    torch.save(hybrid_training(tiny_genvit(), 150).state_dict(), folder / 'nnet_ema.pth')
    torch.set_num_threads(threads)
    return folder


def loaded(path):
    net = tiny_genvit()
    net.load_state_dict(torch.load(path, weights_only=True))
    return net.eval()


def config(**clf_eval):
    cfg = load_config_file(HYBVIT_CONFIG)
    cfg.nnet.update(NET)
    cfg.schedule.N = STEPS
    cfg.clf_eval.update(dict(n_test=N_TEST, ood=('digits',)), **clf_eval)
    return cfg


def digits_test_images():
    test = build_dataset(d(name='digits'), 'test')
    return test.images[:N_TEST], torch.from_numpy(test.labels[:N_TEST])


def read(folder, name):
    return json.loads((folder / name).read_text())


def is_png(path):
    with open(path, 'rb') as f:
        return f.read(8) == PNG_MAGIC


def test_test_clf_and_cali_equal_direct_computations(ckpt, fresh_accelerate_state, one_thread):
    x, y = digits_test_images()
    with torch.no_grad():
        logits = loaded(ckpt / 'nnet_ema.pth').classify(x)
    direct_accuracy = cm.accuracy(logits, y)
    assert direct_accuracy > 0.3  # it did learn something, so the numbers below are not all chance

    assert run_eval_mode(config(), 'test_clf', str(ckpt)) == {'accuracy': direct_accuracy}
    record = read(ckpt, f'eval_test_clf_digits_n{N_TEST}_ema.json')
    assert record['accuracy'] == direct_accuracy and record['n'] == N_TEST and record['ema'] is True
    assert record['weights'] == str(ckpt / 'nnet_ema.pth') and record['dataset'] == 'digits'

    run_eval_mode(config(), 'cali', str(ckpt))
    record = read(ckpt, f'eval_cali_digits_n{N_TEST}_bins15_ema.json')
    probs = torch.softmax(logits.double(), 1)
    assert record['ece'] == pytest.approx(cm.expected_calibration_error(probs, y, 15), abs=1e-6)
    assert record['accuracy'] == direct_accuracy and sum(record['bins']['count']) == N_TEST
    assert len(record['bins']['accuracy']) == 15 and None in record['bins']['accuracy']  # empty bins -> null
    assert is_png(record['reliability_diagram'])


def test_nll_equals_bits_per_dim_with_the_same_noise(ckpt, fresh_accelerate_state, one_thread):
    cfg = config(nll_steps_per_call=10)
    result = run_eval_mode(cfg, 'nll', str(ckpt))
    x, _ = digits_test_images()
    # The mode's noise: one generator seeded per process (libs.rng.eval_process_seed), one batch here.
    generator = torch.Generator().manual_seed(eval_process_seed(cfg.seed, 0))
    denoiser = Denoiser(loaded(ckpt / 'nnet_ema.pth'), DiscreteSchedule.cosine(STEPS), 'x0')
    with torch.no_grad():
        direct = bits_per_dim(denoiser, x, generator=generator, variance='beta')
    print(f"nll: {result['bits_per_dim']:.3f} bits/dim")
    assert result['bits_per_dim'] == pytest.approx(float(direct.mean()), rel=1e-5)
    record = read(ckpt, f'eval_nll_digits_n{N_TEST}_beta_ema.json')
    assert record['bits_per_dim'] == result['bits_per_dim'] and record['settings']['schedule_steps'] == STEPS
    assert 0 < record['bits_per_dim_stderr'] < record['bits_per_dim']


def test_ood_auroc_of_the_test_set_against_itself_is_one_half(ckpt, tmp_path, fresh_accelerate_state,
                                                              one_thread):
    # A folder of 16x16 RGB noise: brought to 1 x 8 x 8 digits-shape, and far from digits in both scores.
    rng = np.random.default_rng(0)
    noise = tmp_path / 'noise'
    noise.mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(noise / f'{i}.png')
    cfg = config(ood=('digits', 'interpolated', f'image_folder={noise}'), nll_steps_per_call=10)
    result = run_eval_mode(cfg, 'ood', str(ckpt))
    record = read(ckpt, f'eval_ood_digits_n{N_TEST}_ema.json')
    assert record['auroc'] == result['auroc'] and record['n_ood'] == {
        'digits': N_TEST, 'interpolated': N_TEST, f'image_folder={noise}': 12}
    print('ood auroc', record['auroc'])
    for score in ('px', 'py'):
        # the same images with the same noise draws: every pair ties
        assert record['auroc'][score]['digits'] == 0.5
        assert record['mean_score'][score]['digits'] == record['mean_score'][score]['in']
        assert is_png(record['logp_hist'][score])
    assert record['auroc']['px'][f'image_folder={noise}'] > 0.9       # measured 1.0
    assert record['auroc']['py'][f'image_folder={noise}'] > 0.8       # measured 0.94
    x, _ = digits_test_images()
    interpolated = torch.stack([item[0] for item in build_dataset(
        d(name='interpolated', base=d(name='digits')), 'test')])[:N_TEST]
    net = loaded(ckpt / 'nnet_ema.pth')
    with torch.no_grad():
        max_softmax, max_softmax_interpolated = (torch.softmax(net.classify(images).double(), 1).amax(1)
                                                 for images in (x, interpolated))
    assert record['mean_score']['py']['in'] == pytest.approx(float(max_softmax.mean()), rel=1e-6)
    assert record['auroc']['py']['interpolated'] == pytest.approx(cm.auroc(max_softmax, max_softmax_interpolated),
                                                                  abs=1e-9)


def test_ood_images_are_brought_to_the_in_distribution_shape():
    rgb = [(torch.tensor([0.5, -0.2, 0.1]).view(3, 1, 1) * torch.ones(3, 16, 16), 3)]
    gray = InShape(rgb, (1, 8, 8))[0][0]
    assert gray.shape == (1, 8, 8)
    torch.testing.assert_close(gray, torch.full((1, 8, 8), 0.299 * 0.5 - 0.587 * 0.2 + 0.114 * 0.1))
    one = [(torch.linspace(-1, 1, 16).view(1, 4, 4), 0)]
    three, label = InShape(one, (3, 4, 4))[0]
    assert label == -1 and torch.equal(three, one[0][0].repeat(3, 1, 1))

    class FourChannels(list):
        channels = 4
    with pytest.raises(UserError, match='cannot bring 4-channel OOD images to 3 channels'):
        InShape(FourChannels(), (3, 8, 8))


def test_attack_lowers_accuracy_from_the_clean_one(ckpt, fresh_accelerate_state, one_thread):
    cfg = config(attack_steps=5, linf_eps=(0.0, 4 / 255, 32 / 255), l2_eps=(0.0, 2.0))
    result = run_eval_mode(cfg, 'attack', str(ckpt))
    x, y = digits_test_images()
    with torch.no_grad():
        clean = cm.accuracy(loaded(ckpt / 'nnet_ema.pth').classify(x), y)
    table = read(ckpt, f'eval_attack_digits_n{N_TEST}_pgd5_ema.json')['robust_accuracy']
    assert table == result['robust_accuracy']
    print('robust accuracy', [(row['norm'], round(row['eps'], 4), row['robust_accuracy']) for row in table])
    linf = [row['robust_accuracy'] for row in table if row['norm'] == 'linf']
    l2 = [row['robust_accuracy'] for row in table if row['norm'] == 'l2']
    assert linf[0] == l2[0] == clean
    assert linf[2] < clean - 0.2 and l2[1] < clean - 0.2
    assert is_png(result['plot'])


def test_gen_samples_with_the_configured_and_the_ancestral_sampler(ckpt, tmp_path, fresh_accelerate_state,
                                                                   one_thread):
    cfg = config()
    cfg.sample.update(n_samples=10, mini_batch_size=10, sample_steps=3, path=str(tmp_path / 'samples'))
    results = run_eval_mode(cfg, 'gen', str(ckpt))
    assert set(results) == {'dpm_solver++', 'ddpm_ancestral'}
    for algorithm, nfe in (('dpm_solver++', 3), ('ddpm_ancestral', STEPS)):
        record = read(ckpt, f'eval_gen_digits_n10_digits_{algorithm}_nfe{nfe}_scale0_ema.json')
        assert record['mode'] == 'gen' and record['settings']['algorithm'] == algorithm
        assert record['settings']['nfe'] == nfe
        assert record['digits_frechet_distance'] == results[algorithm]['digits_frechet_distance']
        assert len(list((tmp_path / 'samples' / algorithm).iterdir())) == 10


@pytest.mark.filterwarnings('ignore:Matrix is singular', 'ignore:invalid value encountered:RuntimeWarning')
def test_gen_fid_and_inception_score_of_identical_samples(tmp_path, random_weights, fresh_accelerate_state):
    # A network whose data prediction is 5 everywhere: every sample clamps to the all-white image, so p(y|x) is the
    # same for all (IS exactly 1) and the samples' covariance is 0, which makes FID |mu - mu_ref|^2 + tr(sigma_ref)
    # (and keeps the 2048 x 2048 matrix square root quick).
    net = tiny_genvit()
    torch.nn.init.zeros_(net.decoder_pred.weight)
    torch.nn.init.constant_(net.decoder_pred.bias, 5.0)
    weights = tmp_path / 'white.pth'
    torch.save(net.state_dict(), weights)
    real = torch.stack([build_dataset(d(name='digits'))[i][0] for i in range(6)])
    features = fid.InceptionFeatures(fid.load_inception(random_weights))
    ref = tmp_path / 'ref.npz'
    ref_mu, ref_sigma = fid.activation_statistics(features(real))
    fid.save_stats(str(ref), ref_mu, ref_sigma)
    cfg = config(is_splits=2, ancestral='')
    cfg.eval.update(metric='fid', ref_stats=str(ref), inception_path=random_weights)
    cfg.sample.update(n_samples=8, mini_batch_size=8, sample_steps=3, path=str(tmp_path / 'samples'))
    results = run_eval_mode(cfg, 'gen', str(weights))
    assert set(results) == {'dpm_solver++'}
    record = read(tmp_path, 'eval_gen_digits_n8_fid-is_dpm_solver++_nfe3_scale0_ema.json')
    assert record['settings']['reference_statistics'] == str(ref)
    assert record['fid'] == results['dpm_solver++']['fid']
    from libs.images import load_png
    assert all((load_png(str(p)) == 255).all() for p in (tmp_path / 'samples' / 'dpm_solver++').iterdir())
    white = features(torch.ones(1, 1, 8, 8))[0]
    assert record['fid'] == pytest.approx(float(((white - ref_mu) ** 2).sum() + np.trace(ref_sigma)), rel=1e-6)
    assert record['inception_score'] == pytest.approx(1.0, abs=1e-9) and record['inception_score_std'] < 1e-9


def run_eval(config_path, args):
    """eval.py in a forked child of this process (tests/forking.py: the command line without the seconds of
    imports; tests/test_evaluation.py runs it in a fresh interpreter)."""
    return run_script(os.path.join(ROOT, 'eval.py'), [f'--config={config_path}'] + args, cwd=ROOT)


HYBVIT_ARGS = [f'--config.nnet.{k}={v}' for k, v in NET.items()] + [f'--config.clf_eval.n_test={N_TEST}']


def test_command_line_with_raw_weights(ckpt):
    result = run_eval(HYBVIT_CONFIG, HYBVIT_ARGS + [f'--nnet_path={ckpt}', '--eval=test_clf', '--ema=false'])
    assert result.returncode == 0, result.stderr[-3000:]
    x, y = digits_test_images()
    with torch.no_grad():
        expected = cm.accuracy(loaded(ckpt / 'nnet.pth').classify(x), y)
    record = read(ckpt, f'eval_test_clf_digits_n{N_TEST}_raw.json')
    assert record['accuracy'] == expected and record['weights'] == str(ckpt / 'nnet.pth')
    assert f'accuracy={expected:.4f} (n={N_TEST})' in result.stdout


@pytest.fixture(scope='module')
def uvit_weights(tmp_path_factory):
    tiny = dict(name='uvit', img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=2,
                num_classes=10)
    path = tmp_path_factory.mktemp('uvit') / 'uvit.pth'
    torch.save(build_nnet(tiny).state_dict(), path)
    return [f'--config.nnet.{k}={v}' for k, v in tiny.items() if k != 'name'], str(path)


@pytest.mark.parametrize('case', ['unknown mode', 'missing OOD set', 'no classification head'])
def test_bad_input_is_one_line(ckpt, uvit_weights, case):
    if case == 'unknown mode':
        result = run_eval(HYBVIT_CONFIG, HYBVIT_ARGS + [f'--nnet_path={ckpt}', '--eval=fid'])
        message = "error: unknown --eval mode 'fid'; known: sample, test_clf, gen, nll, cali, ood, attack"
    elif case == 'missing OOD set':
        result = run_eval(HYBVIT_CONFIG, HYBVIT_ARGS + [f'--nnet_path={ckpt}', '--eval=ood',
                                                        "--config.clf_eval.ood=('digits', 'svhn=/nowhere/svhn')"])
        message = "error: OOD set 'svhn=/nowhere/svhn': SVHN not found at /nowhere/svhn: put train_32x32.mat"
    else:
        overrides, path = uvit_weights
        result = run_eval(UVIT_CONFIG, overrides + [f'--nnet_path={path}', '--eval=test_clf'])
        message = (f'error: --eval=test_clf needs a network with a classification head; {path} is a UViT '
                   f"(config.nnet.name='uvit') without one: evaluate it with --eval=sample, gen or nll")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == message or lines[-1].startswith(message), result.stderr
    assert 'Traceback' not in result.stderr


def test_bad_settings_raise_user_errors(ckpt, fresh_accelerate_state):
    cases = [
        (config(ood_scores=('px', 'pz')), 'ood', "unknown clf_eval.ood_scores"),
        (config(ood=('interpolated=/x',)), 'ood', "OOD set 'interpolated' takes no path"),
        (config(ood=('image_folder=/nowhere/pics',)), 'ood', r"^OOD set 'image_folder=/nowhere/pics': image folder "
         r"not found at /nowhere/pics: set the path of its clf_eval.ood entry \('image_folder=PATH'\) to a folder"),
        (config(attack_norms=('l1',)), 'attack', 'clf_eval.attack_norms must name some of linf, l2'),
    ]
    for cfg, mode, message in cases:
        with pytest.raises(UserError, match=message) as info:
            run_eval_mode(cfg, mode, str(ckpt))
        assert '\n' not in str(info.value)
