"""eval.py end to end: samples split into rounds, in-process scores equal scores of the written PNGs, and every
score is stored as JSON with its settings beside the weights."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from forking import run_script
from libs.config import d, load_config_file
from libs.evaluation.harness import EvalRun
from libs.data import build_dataset
from libs.metrics import fid
from libs.nets import build_nnet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS_CONFIG = os.path.join(ROOT, 'configs', 'digits_uvit_tiny.py')
TINY = dict(name='uvit', img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2,
            num_classes=11)


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('weights') / 'tiny_ema.pth'
    torch.save(build_nnet(TINY).state_dict(), path)
    return str(path)


def run_eval(args, fork=True):
    """eval.py on the digits config with the TINY network: a forked child of this process (tests/forking.py: the
    command line without the seconds of imports), or with ``fork=False`` a fresh interpreter."""
    overrides = [f'--config.nnet.{k}={v}' for k, v in TINY.items() if k != 'name']
    args = [f'--config={DIGITS_CONFIG}'] + overrides + args
    if fork:
        return run_script(os.path.join(ROOT, 'eval.py'), args, cwd=ROOT)
    return subprocess.run([sys.executable, os.path.join(ROOT, 'eval.py'), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_fid_of_eval_equals_fid_of_its_pngs_and_is_stored_with_its_settings(tmp_path, weights, random_weights):
    real = torch.stack([build_dataset(d(name='digits'))[i][0] for i in range(12)])
    features = fid.InceptionFeatures(fid.load_inception(random_weights))
    ref = tmp_path / 'ref.npz'
    fid.save_stats(str(ref), *fid.activation_statistics(features(real)))
    pngs = tmp_path / 'pngs'
    result = run_eval([f'--nnet_path={weights}', '--config.eval.metric=fid', f'--config.eval.ref_stats={ref}',
                       f'--config.eval.inception_path={random_weights}', '--config.sample.n_samples=12',
                       '--config.sample.mini_batch_size=5', '--config.sample.sample_steps=4',
                       f'--config.sample.path={pngs}', '--config.eval.metrics=fid,is',
                       '--config.eval.is_split_size=5'], fork=False)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = float(result.stdout.strip().splitlines()[-1].split('fid=')[1].split()[0])
    record_path = os.path.join(os.path.dirname(weights),
                               'eval_sample_digits_n12_fid-is_unipc_nfe4_scale0.5_ema.json')
    record = json.loads(open(record_path).read())
    assert record['fid'] == pytest.approx(printed, abs=1e-4)
    settings = record['settings']
    assert record['n'] == 12 and settings['nfe'] == 4 and settings['algorithm'] == 'unipc'
    assert record['ema'] is True and settings['guidance_scale'] == 0.5 and settings['reference_statistics'] == str(ref)
    assert settings['metrics'] == ['fid', 'is'] and settings['inception_score_split'] == {'split_size': 5}
    assert settings['inception'] == random_weights and settings['reference_kind'] == 'statistics'
    assert record['weights'] == weights and record['mode'] == 'sample'
    assert record['provenance']['device'] == 'cpu' and record['provenance']['torch'] == torch.__version__
    files = sorted(os.listdir(pngs))
    assert files == [f'{i:06d}.png' for i in range(12)]      # 3 rounds of 5, the last one cut to 12
    from libs.images import load_png
    images = torch.from_numpy(np.stack([load_png(str(pngs / f)) for f in files])).permute(0, 3, 1, 2)
    acts = features(images)
    from_pngs = fid.fid_from_activations(acts, str(ref))
    assert from_pngs == pytest.approx(record['fid'], rel=1e-3)
    from libs.metrics.inception_score import inception_score_of_features   # ADM's parts: 5, 5 and 2 samples
    expected_is = inception_score_of_features(acts, fid.load_logit_weights(random_weights), split_size=5)
    assert record['inception_score'] == pytest.approx(expected_is[0], rel=1e-3)


def test_digits_score_of_a_checkpoint_directory(tmp_path, weights):
    ckpt = tmp_path / '7.ckpt'
    ckpt.mkdir()
    os.link(weights, ckpt / 'nnet_ema.pth')
    result = run_eval([f'--nnet_path={ckpt}', '--config.sample.n_samples=20', '--config.sample.mini_batch_size=20',
                       '--config.sample.sample_steps=3'])
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((ckpt / 'eval_sample_digits_n20_digits_unipc_nfe3_scale0.5_ema.json').read_text())
    assert record['weights'] == str(ckpt / 'nnet_ema.pth')
    assert f"digits_accuracy={record['digits_accuracy']:.4f}" in result.stdout
    # the same numbers in-process, with another batch size: sample i depends on (seed, i) alone
    config = load_config_file(DIGITS_CONFIG)
    config.nnet.update({k: v for k, v in TINY.items() if k != 'name'})
    config.sample.update(n_samples=20, mini_batch_size=7, sample_steps=3)
    run = EvalRun.load(config, str(ckpt))
    again = run.generate(config.sample, run.scorer())
    assert again['digits_accuracy'] == record['digits_accuracy']
    assert again['digits_frechet_distance'] == pytest.approx(record['digits_frechet_distance'], rel=1e-9)


def test_gathered_samples_are_put_back_in_file_name_order():
    from libs.evaluation.harness import gathered_order
    world, rounds, mb, n = 3, 2, 4, 21
    # what accelerate.gather returns: each process's rounds, one process after the other
    rows = [(r * world + rank) * mb + i for rank in range(world) for r in range(rounds) for i in range(mb)]
    assert torch.tensor(rows)[gathered_order(world, rounds, mb, n)].tolist() == list(range(n))
    assert gathered_order(1, 3, 5, 12).tolist() == list(range(12))


def test_scores_whose_settings_differ_never_share_a_file_name():
    """For every sampler and every key of ``config.sample``: where changing the key from its default changes the
    score's settings, it changes the file name too (a score then never overwrites another one's JSON); so does
    the metric list."""
    from libs.config import defaults
    from libs.diffusion.samplers import SAMPLERS
    from libs.diffusion.samplers.tau_leaping import CTMC_SAMPLER_OPTIONS
    from libs.evaluation.harness import json_safe, metric_tag, sample_settings, sample_tags

    def changed(value):
        if isinstance(value, bool):
            return not value
        if isinstance(value, (int, float)):
            return value * 2 + 1
        return value + 'x'

    checked = set()
    for algorithm in (*SAMPLERS, *CTMC_SAMPLER_OPTIONS):
        base = defaults().sample
        base.algorithm = algorithm
        name = sample_tags(base, 'fid')
        settings = json_safe(sample_settings(base, 100, 'fid', {}))
        for key in base:
            other = defaults().sample
            other.algorithm = algorithm
            other[key] = '0.3,3' if key == 'guidance_interval' else changed(base[key])
            if json_safe(sample_settings(other, 100, 'fid', {})) != settings:
                assert sample_tags(other, 'fid') != name, (algorithm, key)
                checked.add(key)
    assert {'sample_steps', 'scale', 'order', 'method', 'skip_type', 't_start', 't_end', 'guidance_interval', 'eta',
            's_churn', 'diffusion_form', 'last_step_size', 'min_t', 'num_corrector_steps'} <= checked
    assert metric_tag('fid', {'metrics': ['fid']}) == 'fid' and metric_tag('digits', {}) == 'digits'
    assert metric_tag('fid', {'metrics': ['fid', 'is', 'prec']}) == 'fid-is-prec'


@pytest.mark.parametrize('args,message', [
    (['--config.eval.metric=fid', '--config.eval.ref_stats=/nowhere/ref.npz'],
     'error: FID reference statistics not found: /nowhere/ref.npz'),
    (['--config.eval.metric=fid', '--config.eval.ref_stats=/nowhere/ref.npz',
      '--config.eval.inception_path=/nowhere/inception.pth'], 'error: FID reference statistics not found'),
    (['--config.eval.metric=fid'], 'error: no FID reference statistics are set for this dataset: set '
                                   'config.eval.ref_stats to an .npz file'),
    (['--config.sample.algorithm=plms'], "error: unknown sample.algorithm 'plms'; known: dpm_solver, dpm_solver++"),
    (['--config.nnet.embed_dim=48'], "does not fit the model: 'pos_embed' has shape (1, 18, 32), the model "
                                     "expects (1, 18, 48)"),
])
def test_eval_errors_are_one_line(weights, args, message):
    result = run_eval([f'--nnet_path={weights}', '--config.sample.n_samples=4', '--config.sample.sample_steps=2']
                      + args)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert message in lines[-1] and 'Traceback' not in result.stderr, result.stderr


def test_a_released_style_checkpoint_is_scored_without_its_dataset(tmp_path, random_weights):
    """CIFAR-10 is nowhere on disk: sampling and scoring need only the weights, the config and the statistics."""
    cifar = os.path.join(ROOT, 'configs', 'cifar10_uvit_small.py')
    net = dict(embed_dim=32, depth=2, num_heads=2)
    torch.manual_seed(0)
    config = load_config_file(cifar)
    config.nnet.update(net)
    weights = tmp_path / 'cifar10_tiny.pth'
    torch.save(build_nnet(config.nnet).state_dict(), weights)
    features = fid.InceptionFeatures(fid.load_inception(random_weights))
    ref = tmp_path / 'fid_stats_cifar10.npz'
    fid.save_stats(str(ref), *fid.activation_statistics(features(torch.rand(12, 3, 32, 32) * 2 - 1)))
    args = [f'--config={cifar}', f'--nnet_path={weights}', '--config.dataset.path=/nowhere/cifar10',
            f'--config.eval.ref_stats={ref}', f'--config.eval.inception_path={random_weights}',
            '--config.sample.n_samples=6', '--config.sample.mini_batch_size=6',
            '--config.sample.algorithm=dpm_solver++', '--config.sample.sample_steps=2']
    args += [f'--config.nnet.{k}={v}' for k, v in net.items()]
    result = run_script(os.path.join(ROOT, 'eval.py'), args, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / 'eval_sample_cifar10_n6_fid_dpm_solver++_nfe2_scale0_ema.json').read_text())
    assert record['fid'] == pytest.approx(float(result.stdout.split('fid=')[1].split()[0]), abs=1e-4)


def _samples_as_files(tmp_path):
    """12 uint8 RGB 16x16 images as an .npz (arr_0, N H W C) and as PNGs, and their Inception-ready tensor."""
    images = torch.randint(0, 256, (12, 3, 16, 16), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    np.savez(tmp_path / 'samples.npz', arr_0=images.permute(0, 2, 3, 1).numpy())
    from libs.images import from_uint8, save_pngs
    save_pngs(from_uint8(images), str(tmp_path / 'pngs'), 0)
    return images


def test_score_samples_against_a_reference_batch_and_statistics_without_a_model(tmp_path, random_weights):
    """The npz of samples against an ADM-style reference batch (arr_0 with mu and sigma), every Inception metric
    and the reference check; the PNGs through the old name compute_fid.py against statistics alone."""
    from libs.images import to_uint8
    from libs.metrics.inception_score import inception_score_of_features
    images = _samples_as_files(tmp_path)
    features = fid.InceptionFeatures(fid.load_inception(random_weights))
    reference_images = to_uint8(torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1)
    mu, sigma = fid.activation_statistics(features(reference_images))
    ref = tmp_path / 'ref.npz'
    fid.save_stats(str(ref), mu, sigma)
    batch = tmp_path / 'VIRTUAL_batch.npz'
    np.savez(batch, arr_0=reference_images.permute(0, 2, 3, 1).numpy(), mu=mu, sigma=sigma)
    acts = features(images)
    expected_fid = fid.frechet_distance_of_activations(acts, mu, sigma)
    weight = fid.load_logit_weights(random_weights)
    runs = [(['score_samples.py', f'--samples={tmp_path / "samples.npz"}', f'--reference={batch}',
              '--metrics=fid,sfid,is,prec,recall,kid', '--kid_subset_size=5', '--kid_subsets=4', '--check_reference',
              '--is_split_size=5'], 'eval_files_samples_n12_fid-sfid-is-prec-recall-kid.json',
             {'split_size': 5}),
            (['compute_fid.py', f'--samples={tmp_path / "pngs"}', f'--ref_stats={ref}', '--is_splits=2'],
             'eval_files_pngs_n12_fid-is.json', {'splits': 2})]
    for (script, *args), name, split in runs:
        result = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', script), *args,
                                 f'--inception={random_weights}', '--batch_size=5'], cwd=ROOT, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        record = json.loads((tmp_path / name).read_text())
        settings = record['settings']
        assert record['n'] == 12 and settings['inception_score_split'] == split
        assert record['fid'] == pytest.approx(expected_fid, rel=1e-6)
        assert record['inception_score'] == pytest.approx(
            inception_score_of_features(acts, weight, split.get('splits'), split.get('split_size'))[0], rel=1e-6)
        assert f"fid={record['fid']:.6g}" in result.stdout
    assert settings['reference_statistics'] == str(ref) and settings['reference_kind'] == 'statistics'
    record = json.loads((tmp_path / 'eval_files_samples_n12_fid-sfid-is-prec-recall-kid.json').read_text())
    settings = record['settings']
    assert settings['reference_kind'] == 'batch' and settings['reference_images'] == 6
    assert settings['reference_statistics_source'] == {'pool': 'stored', 'spatial': 'computed from 6 images'}
    assert (settings['pr_k'], settings['kid_subsets'], settings['kid_subset_size']) == (3, 4, 5)
    assert len(settings['reference_sha256']) == len(settings['inception_sha256']) == 64
    assert 0 <= record['precision'] <= 1 and 0 <= record['recall'] <= 1 and record['sfid'] > 0
    assert 'kid' in record and 'kid_std' in record
    # the stored mu, sigma are those of these very images under these weights: the check finds them again
    check = record['reference_check']
    assert set(check) == {'pool'} and check['pool']['frechet_distance'] == pytest.approx(0, abs=1e-6 * np.trace(sigma))


def test_samples_of_another_resolution_than_the_reference_fail_first(tmp_path):
    from libs.errors import UserError
    from libs.evaluation.sample_files import score_sample_files
    _samples_as_files(tmp_path)
    np.savez(tmp_path / 'ref.npz', arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(UserError) as info:   # before any network is loaded: no Inception weights are needed
        score_sample_files(str(tmp_path / 'samples.npz'), str(tmp_path / 'ref.npz'))
    assert str(info.value) == (f'the reference {tmp_path / "ref.npz"} holds 8x8 images and the samples are 16x16: '
                               'compare samples with a reference of their own resolution')


def test_compute_fid_errors_are_one_line(tmp_path):
    np.savez(tmp_path / 'wrong.npz', images=np.zeros((2, 8, 8, 3), np.uint8))
    for samples, message in ((tmp_path / 'wrong.npz', "has arrays ['images']; expected 'arr_0'"),
                             (tmp_path / 'missing.npz', 'sample file not found')):
        result = run_script(os.path.join(ROOT, 'scripts', 'compute_fid.py'),
                            [f'--samples={samples}', f'--ref_stats={tmp_path / "ref.npz"}'], cwd=ROOT)
        assert result.returncode == 2 and message in result.stderr.strip().splitlines()[-1], result.stderr


def test_samples_do_not_depend_on_the_number_of_processes(tmp_path, weights):
    """Two processes (torchrun) draw the same samples as one (a plain eval.py): each sample is a function of
    (seed, index)."""
    scores = []
    for processes in (1, 2):
        out = tmp_path / f'p{processes}'
        out.mkdir()
        os.link(weights, out / 'nnet_ema.pth')
        args = [f'--nnet_path={out}', '--config.sample.n_samples=12', '--config.sample.mini_batch_size=4',
                '--config.sample.sample_steps=3', f'--config.sample.path={out / "pngs"}']
        if processes == 1:
            result = run_eval(args)
        else:
            overrides = [f'--config.nnet.{k}={v}' for k, v in TINY.items() if k != 'name']
            cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={processes}',
                   os.path.join(ROOT, 'eval.py'), f'--config={DIGITS_CONFIG}', *args] + overrides
            env = dict(os.environ, ACCELERATE_USE_CPU='true', OMP_NUM_THREADS='1')
            result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        scores.append(json.loads((out / 'eval_sample_digits_n12_digits_unipc_nfe3_scale0.5_ema.json')
                                 .read_text()))
        assert scores[-1]['provenance']['num_processes'] == processes
    one, two = (sorted(os.listdir(tmp_path / f'p{p}' / 'pngs')) for p in (1, 2))
    assert one == two == [f'{i:06d}.png' for i in range(12)]
    from libs.images import load_png
    for name in one:  # the same batches of 4, computed by other processes: identical
        assert np.array_equal(*(load_png(str(tmp_path / f'p{p}' / 'pngs' / name)) for p in (1, 2))), name
    for key in ('digits_accuracy', 'digits_frechet_distance'):
        assert scores[0][key] == scores[1][key], key


def test_sweep_scores_each_sampler_and_nfe_as_the_sample_mode_would(tmp_path, weights):
    from libs.errors import UserError
    from libs.evaluation import run_eval_mode
    os.link(weights, tmp_path / 'nnet_ema.pth')
    config = load_config_file(DIGITS_CONFIG)
    config.nnet.update({k: v for k, v in TINY.items() if k != 'name'})
    config.sample.update(n_samples=20, mini_batch_size=10)
    config.eval.update(sweep_algorithms='dpm_solver++, euler_maruyama_ode', sweep_nfes='2,3')
    grid = run_eval_mode(config, 'sweep', str(tmp_path))
    assert {a: sorted(row) for a, row in grid.items()} == {'dpm_solver++': ['2', '3'], 'euler_maruyama_ode': ['2', '3']}
    record = json.loads((tmp_path / 'eval_sweep_digits_n20_digits_ema.json').read_text())
    assert record['grid'] == grid and record['settings']['nfes'] == [2, 3]
    table = (tmp_path / 'eval_sweep_digits_n20_digits_ema.md').read_text()
    assert '| euler_maruyama_ode |' in table and '3 NFE' in table
    point_name = 'eval_sample_digits_n20_digits_euler_maruyama_ode_nfe3_scale0.5_ema.json'
    point = json.loads((tmp_path / point_name).read_text())
    assert point['digits_frechet_distance'] == grid['euler_maruyama_ode']['3']['digits_frechet_distance']
    # the same number as sampling that point alone
    config.sample.update(algorithm='euler_maruyama_ode', sample_steps=3)
    run = EvalRun.load(config, str(tmp_path))
    alone = run.generate(config.sample, run.scorer())
    assert alone['digits_frechet_distance'] == pytest.approx(point['digits_frechet_distance'], rel=1e-9)
    assert grid['dpm_solver++']['2'] != grid['dpm_solver++']['3']
    # run again: finished points are read back, a point whose settings differ is sampled again
    point['digits_frechet_distance'] = 123.0
    (tmp_path / point_name).write_text(json.dumps(point))
    stale_name = 'eval_sample_digits_n20_digits_dpm_solver++_nfe2_scale0.5_ema.json'
    stale = json.loads((tmp_path / stale_name).read_text())
    stale['settings']['reference_statistics'] = 'another file'
    (tmp_path / stale_name).write_text(json.dumps(stale))
    again = run_eval_mode(config, 'sweep', str(tmp_path))
    assert again['euler_maruyama_ode']['3']['digits_frechet_distance'] == 123.0
    assert again['dpm_solver++']['2'] == grid['dpm_solver++']['2']  # re-sampled: the same draw, the same score
    assert json.loads((tmp_path / stale_name).read_text())['settings']['reference_statistics'] != 'another file'
    # a bad sampler fails before any sampling
    config.eval.update(sweep_algorithms='dpm_solver++,no_such_sampler', sweep_nfes='4')
    with pytest.raises(UserError, match='no_such_sampler'):
        run_eval_mode(config, 'sweep', str(tmp_path))
    assert not (tmp_path / 'eval_sample_digits_n20_digits_dpm_solver++_nfe4_scale0.5_ema.json').exists()
