"""FID: in-process values against pytorch-fid's own file-based computation, closed forms, stats files, errors."""
import os
import socket
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import torch
from pytorch_fid import fid_score
from pytorch_fid import inception as fid_inception

from forking import run_script
from libs.errors import UserError
from libs.images import save_pngs, to_uint8
from libs.metrics import fid

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Nothing in this suite may download: any connection attempt fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError('network access attempted')
    monkeypatch.setattr(socket.socket, 'connect', refuse)


def _image_sets():
    """Two small, different sets of float images in [-1, 1] (not on the pixel grid): RGB and grayscale."""
    g = torch.Generator().manual_seed(1)
    a = torch.nn.functional.interpolate(torch.randn(80, 3, 8, 8, generator=g), size=32, mode='bilinear')
    b = torch.nn.functional.interpolate(torch.randn(80, 1, 4, 4, generator=g), size=32, mode='nearest')
    b = b + 0.3 * torch.randn(80, 1, 32, 32, generator=g)
    return (0.6 * a).clamp(-1, 1), (0.5 * b + 0.2).clamp(-1, 1)


@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_in_process_fid_equals_pytorch_fid_on_pngs(random_weights, tmp_path):
    a, b = _image_sets()
    features = fid.InceptionFeatures(fid.load_inception(random_weights, dims=64), batch_size=32)
    acts_a = features(a)
    mu_a, sigma_a = fid.activation_statistics(acts_a)
    mu_b, sigma_b = fid.activation_statistics(features(b))
    ours = fid.frechet_distance(mu_a, sigma_a, mu_b, sigma_b)

    save_pngs(a, str(tmp_path / 'a'), 0)
    save_pngs(b, str(tmp_path / 'b'), 0)
    weights = torch.load(random_weights, map_location='cpu', weights_only=True)
    with mock.patch.object(fid_inception, 'load_state_dict_from_url', lambda *a, **k: weights):
        reference = fid_score.calculate_fid_given_paths([str(tmp_path / 'a'), str(tmp_path / 'b')], batch_size=50,
                                                        device='cpu', dims=64, num_workers=0)
    print(f'in-process FID {ours:.6f}, pytorch-fid {reference:.6f}, rel. error {abs(ours / reference - 1):.2e}')
    assert reference > 1.0
    assert ours == pytest.approx(reference, rel=1e-3)

    fid.save_stats(str(tmp_path / 'b.npz'), mu_b, sigma_b)
    assert fid.fid_from_activations(acts_a, str(tmp_path / 'b.npz')) == pytest.approx(ours, rel=1e-9)


def test_features_of_uint8_equal_features_of_floats(random_weights):
    a, b = _image_sets()
    features = fid.InceptionFeatures(fid.load_inception(random_weights, dims=64), batch_size=3)
    for images in (a[:4], b[:4]):
        acts = features(images)
        assert acts.shape == (4, 64) and acts.dtype == np.float64
        np.testing.assert_array_equal(features(to_uint8(images).numpy()), acts)
        np.testing.assert_array_equal(features(to_uint8(images).repeat(1, 3 // images.shape[1], 1, 1)), acts)


def test_dataset_statistics_of_labelled_float_dataset(random_weights):
    from accelerate import Accelerator

    a, _ = _image_sets()
    images = a[:7]
    dataset = torch.utils.data.TensorDataset(images, torch.arange(7))
    features = fid.InceptionFeatures(fid.load_inception(random_weights, dims=64))
    mu_ref, sigma_ref = fid.activation_statistics(features(images))
    for accelerator in (None, Accelerator(cpu=True)):
        mu, sigma = fid.dataset_statistics(dataset, features, accelerator, batch_size=3, progress=False)
        np.testing.assert_allclose(mu, mu_ref, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-5, atol=1e-10)


def test_2048_features_run(random_weights):
    acts = fid.InceptionFeatures(fid.load_inception(random_weights, dims=2048))(_image_sets()[0][:2])
    assert acts.shape == (2, 2048) and acts.dtype == np.float64 and np.isfinite(acts).all()


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    m = rng.standard_normal((20, 5))
    sigma = m.T @ m / 20 + np.eye(5)
    mu = rng.standard_normal(5)
    assert fid.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0, abs=1e-8)
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    mu2 = mu + rng.standard_normal(5)
    expected = np.sum((mu - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fid.frechet_distance(mu, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-8)


@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_frechet_distance_equals_pytorch_fids_and_stays_real_with_few_samples():
    from pytorch_fid.fid_score import calculate_frechet_distance
    rng = np.random.default_rng(1)
    for n, dims in ((400, 64), (3000, 512)):  # more samples than features: both methods are exact
        a = rng.standard_normal((n, dims)) @ rng.standard_normal((dims, dims)) / np.sqrt(dims)
        b = 0.8 * rng.standard_normal((n, dims)) @ rng.standard_normal((dims, dims)) / np.sqrt(dims) + 0.1
        stats = fid.activation_statistics(a) + fid.activation_statistics(b)
        ours, theirs = fid.frechet_distance(*stats), calculate_frechet_distance(*stats)
        assert ours == pytest.approx(theirs, rel=1e-6), (n, dims, ours, theirs)
    # 12 samples of 256 features: rank-11 covariances. The exact distance of the two degenerate Gaussians is the
    # distance of the same Gaussians expressed in the (at most 22-dimensional) span of their samples.
    a, b = rng.standard_normal((12, 256)), rng.standard_normal((12, 256)) + 0.5
    basis = np.linalg.qr(np.concatenate([a - a.mean(0), b - b.mean(0), (a.mean(0) - b.mean(0))[None]]).T)[0]
    full = fid.frechet_distance(*fid.activation_statistics(a), *fid.activation_statistics(b))
    reduced = fid.frechet_distance(*fid.activation_statistics(a @ basis), *fid.activation_statistics(b @ basis))
    assert np.isfinite(full) and full == pytest.approx(reduced, rel=1e-8)


def test_frechet_distance_of_activations_equals_the_one_of_their_statistics():
    """Fewer samples than features go through the N x N matrix, more through the statistics: the same distance."""
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((300, 128)) @ rng.standard_normal((128, 128)) / np.sqrt(128)
    ref_stats = fid.activation_statistics(ref)
    for n in (5, 60, 127, 128, 129, 400):
        acts = 0.7 * rng.standard_normal((n, 128)) @ rng.standard_normal((128, 128)) / np.sqrt(128) + 0.2
        expected = fid.frechet_distance(*fid.activation_statistics(acts), *ref_stats)
        assert fid.frechet_distance_of_activations(acts, *ref_stats) == pytest.approx(expected, rel=1e-9), n
    with pytest.raises(UserError, match='different sizes'):
        fid.frechet_distance_of_activations(acts[:, :64], *ref_stats)


def test_activation_statistics_match_numpy():
    acts = np.random.default_rng(0).standard_normal((50, 4))
    mu, sigma = fid.activation_statistics(acts)
    np.testing.assert_allclose(mu, acts.mean(0))
    np.testing.assert_allclose(sigma, np.cov(acts.T))


def test_stats_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(7), rng.standard_normal((7, 7))
    path = str(tmp_path / 'sub' / 'stats.npz')
    fid.save_stats(path, mu, sigma)
    mu2, sigma2 = fid.load_stats(path)
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    assert os.listdir(tmp_path / 'sub') == ['stats.npz']
    with np.load(path) as f:
        assert sorted(f.files) == ['mu', 'sigma']


def _one_line(excinfo):
    message = str(excinfo.value)
    assert '\n' not in message
    return message


def test_error_missing_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(fid, 'REPO_ROOT', str(tmp_path))
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    with pytest.raises(UserError) as e:
        fid.find_inception_weights()
    message = _one_line(e)
    assert message.startswith('FID Inception weights not found: put pt_inception-2015-12-05-6726825d.pth in ')
    assert os.path.join('assets', 'fid_inception') in message and os.path.join('hub', 'checkpoints') in message
    with pytest.raises(UserError, match='FID Inception weights not found: .*nope.pth'):
        fid.load_inception(str(tmp_path / 'nope.pth'))


def test_weights_search_order(tmp_path, monkeypatch):
    monkeypatch.setattr(fid, 'REPO_ROOT', str(tmp_path))
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    hub = tmp_path / 'hub' / 'checkpoints' / fid.WEIGHTS_FILENAME
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b'x')
    assert fid.find_inception_weights() == str(hub)
    assets = tmp_path / 'assets' / 'fid_inception' / fid.WEIGHTS_FILENAME
    assets.parent.mkdir(parents=True)
    assets.write_bytes(b'x')
    assert fid.find_inception_weights() == str(assets)
    assert fid.find_inception_weights(str(hub)) == str(hub)


def test_error_bad_weights(random_weights, tmp_path):
    weights = torch.load(random_weights, map_location='cpu', weights_only=True)
    renamed = {('renamed.' + k if i == 3 else k): v for i, (k, v) in enumerate(weights.items())}
    bad_key = list(weights)[3]
    torch.save(renamed, tmp_path / 'renamed.pth')
    with pytest.raises(UserError) as e:
        fid.load_inception(str(tmp_path / 'renamed.pth'))
    assert f"is not the FID Inception weights file: missing key '{bad_key}'" in _one_line(e)

    extra = dict(weights, extra=torch.zeros(1))
    torch.save(extra, tmp_path / 'extra.pth')
    with pytest.raises(UserError, match="unexpected key 'extra'"):
        fid.load_inception(str(tmp_path / 'extra.pth'))

    (tmp_path / 'garbage.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(UserError) as e:
        fid.load_inception(str(tmp_path / 'garbage.pth'))
    assert _one_line(e).startswith('cannot read FID Inception weights')

    with pytest.raises(UserError, match='unknown Inception feature size 100'):
        fid.load_inception(random_weights, dims=100)


def test_error_stats_files(tmp_path):
    with pytest.raises(UserError) as e:
        fid.load_stats(str(tmp_path / 'missing.npz'))
    assert _one_line(e) == (f'FID reference statistics not found: {tmp_path / "missing.npz"} (create them with '
                            f'`python scripts/compute_fid_stats.py --config=... --out={tmp_path / "missing.npz"}`)')
    np.savez(tmp_path / 'bad.npz', mean=np.zeros(3), cov=np.eye(3))
    with pytest.raises(UserError) as e:
        fid.load_stats(str(tmp_path / 'bad.npz'))
    assert _one_line(e) == f"FID statistics {tmp_path / 'bad.npz'} have keys ['cov', 'mean']; expected mu and sigma"


def _run_script(args, cwd, processes):
    """scripts/compute_fid_stats.py under torchrun."""
    script = os.path.join(REPO_ROOT, 'scripts', 'compute_fid_stats.py')
    launcher = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={processes}']
    env = dict(os.environ, ACCELERATE_USE_CPU='1')  # accelerate picks the gloo backend on CPUs only when told to
    return subprocess.run(launcher + [script] + args, capture_output=True, text=True, cwd=str(cwd), env=env)


def test_compute_fid_stats_script_on_png_folder(random_weights, tmp_path):
    """Two processes split the folder and gather (one process is the same code without the split)."""
    processes = 2
    a, b = _image_sets()
    save_pngs(a[:13], str(tmp_path / 'pngs'), 0)
    save_pngs(b[:12], str(tmp_path / 'pngs'), 13)  # grayscale PNGs in the same folder
    images = torch.cat([a[:13], b[:12].repeat(1, 3, 1, 1)])
    out = tmp_path / 'stats' / 'folder.npz'
    result = _run_script([f'--folder={tmp_path / "pngs"}', f'--out={out}', f'--inception={random_weights}',
                          '--dims=64', '--batch_size=4'], tmp_path, processes)
    assert result.returncode == 0, result.stderr
    mu, sigma = fid.load_stats(str(out))
    features = fid.InceptionFeatures(fid.load_inception(random_weights, dims=64))
    mu_ref, sigma_ref = fid.activation_statistics(features(images))
    np.testing.assert_allclose(mu, mu_ref, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-4, atol=1e-8)


def test_compute_fid_stats_script_writes_sfid_statistics_that_a_reference_uses(random_weights, tmp_path):
    """--spatial: mu_s / sigma_s of sFID's spatial features from the same pass, which a statistics reference then
    serves as stored statistics; it needs the full network (one line otherwise). In a forked child."""
    from libs.images import load_png
    from libs.metrics.reference import Reference
    a, _ = _image_sets()
    save_pngs(a[:6], str(tmp_path / 'pngs'), 0)
    script, out = os.path.join(REPO_ROOT, 'scripts', 'compute_fid_stats.py'), tmp_path / 'spatial.npz'
    args = [f'--folder={tmp_path / "pngs"}', f'--out={out}', f'--inception={random_weights}', '--spatial']
    result = run_script(script, args + ['--dims=64'], cwd=str(tmp_path))
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        "error: --spatial takes sFID's features inside the full network: it needs --dims=2048, not 64")
    result = run_script(script, args, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    images = torch.from_numpy(np.stack([load_png(str(tmp_path / 'pngs' / f'{i:06d}.png')) for i in range(6)]))
    outputs = fid.InceptionFeatures(fid.load_inception(random_weights)).outputs(images.permute(0, 3, 1, 2), True)
    with np.load(out) as stored:
        assert sorted(stored.files) == ['mu', 'mu_s', 'sigma', 'sigma_s']
        for column, (mu, sigma) in (('pool', ('mu', 'sigma')), ('spatial', ('mu_s', 'sigma_s'))):
            expected = fid.activation_statistics(outputs[column].double().numpy())
            for key, value in zip((mu, sigma), expected):  # float32 sums in another process: to their scale
                np.testing.assert_allclose(stored[key], value, rtol=1e-4, atol=1e-5 * np.abs(value).max())
        assert stored['mu_s'].shape == (fid.SPATIAL_FEATURES,)
    reference = Reference(str(out))
    assert reference.kind == 'statistics' and set(reference.stored) == {'pool', 'spatial'}


def test_compute_fid_stats_script_errors(tmp_path):
    """In a forked child (tests/forking.py: the command line without the seconds of imports; the test above runs
    the script in fresh interpreters)."""
    result = run_script(os.path.join(REPO_ROOT, 'scripts', 'compute_fid_stats.py'),
                        [f'--folder={tmp_path / "none"}', f'--out={tmp_path / "x.npz"}'], cwd=str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f'error: image folder not found at {tmp_path / "none"}')
