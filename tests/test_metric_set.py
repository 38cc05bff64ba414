"""The metric set of papers from one Inception pass: sFID's layer, the numbers composed from their parts, references
(statistics, ADM's reference batches, folders), the reference check, the settings from a config, one-line errors."""
import hashlib

import numpy as np
import pytest
import torch

from libs.errors import UserError
from libs.metrics import fid
from libs.metrics.inception_score import inception_score_of_features
from libs.metrics.kid import kid
from libs.metrics.metric_set import MetricSet, MetricSettings
from libs.metrics.precision_recall import precision_recall
from libs.metrics.reference import Reference

pytestmark = pytest.mark.usefixtures('one_thread')

INCEPTION_METRICS = ('fid', 'sfid', 'is', 'prec', 'recall', 'kid')


def images(n: int, seed: int, size: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def save_batch(path, pictures: torch.Tensor, **statistics) -> str:
    """An ADM-style reference batch: arr_0 (N, H, W, C) uint8 and any statistics."""
    np.savez(path, arr_0=pictures.permute(0, 2, 3, 1).numpy(), **statistics)
    return str(path)


@pytest.fixture(scope='module')
def scored(random_weights, tmp_path_factory):
    """Five samples scored against a five-image reference batch with every Inception metric."""
    directory = tmp_path_factory.mktemp('metric_set')
    reference = save_batch(directory / 'ref.npz', images(5, 1))
    settings = MetricSettings(metrics=INCEPTION_METRICS, inception_path=random_weights, is_split_size=2,
                              kid_subsets=3, kid_subset_size=4, batch_size=4)
    metric_set = MetricSet(reference, settings)
    samples = images(5, 2)
    rows = metric_set.rows(samples)
    # the reference pass inside scores() also gives Mixed_6e.branch1x1, the next block's 1 x 1 branch, for
    # the reference check's wrong layer
    other_layer = []
    hook = metric_set.inception.model.blocks[2][7].branch1x1.register_forward_hook(
        lambda module, inputs, output: other_layer.append(fid.spatial_features(output)))
    scores = metric_set.scores(rows)
    hook.remove()
    return dict(metric_set=metric_set, rows=rows, samples=samples, scores=scores, reference=reference,
                directory=directory, mixed_6e=torch.cat(other_layer))


def test_spatial_features_are_mixed_6d_branch1x1_first_7_channels_in_nhwc_order(random_weights):
    # the layer, by the names of the weights file (torchvision's module names): TF's mixed_6/conv is the 1 x 1
    # branch of the third 17 x 17 block, Mixed_6d, not of Mixed_6e or Mixed_6c
    state = torch.load(random_weights, weights_only=True)
    model = fid.load_inception(random_weights)
    weight = fid.spatial_module(model).conv.weight
    assert weight.shape == (192, 768, 1, 1)
    assert torch.equal(weight, state['Mixed_6d.branch1x1.conv.weight'])
    assert not any(torch.equal(weight, state[f'{block}.branch1x1.conv.weight']) for block in ('Mixed_6c', 'Mixed_6e'))
    # ADM flattens TF's NHWC tensor after keeping channels [..., :7]: value (h, w, c) lands at (h * 17 + w) * 7 + c
    feature_map = torch.arange(2 * 192 * 17 * 17, dtype=torch.float32).view(2, 192, 17, 17)
    flat = fid.spatial_features(feature_map)
    assert flat.shape == (2, 2023)
    assert flat[1, (5 * 17 + 3) * 7 + 6] == feature_map[1, 6, 5, 3]
    # one pass gives both, and the spatial features are the block's output after batch norm and ReLU
    features = fid.InceptionFeatures(model)
    picture = images(1, 3, size=20)
    out = features.outputs(picture, spatial=True)
    assert out['spatial'].shape == (1, fid.SPATIAL_FEATURES) == (1, 2023) and (out['spatial'] >= 0).all()
    assert (out['spatial'] == 0).any() and (out['spatial'] > 0).any()
    np.testing.assert_array_equal(out['pool'].double().numpy(), features(picture))


def test_spatial_fid_of_a_known_shift():
    rng = np.random.default_rng(0)
    spatial = rng.standard_normal((50, 2023))
    shift = np.zeros(2023)
    shift[[0, 7, 2022]] = [1.0, -2.0, 0.5]
    mu, sigma = fid.activation_statistics(spatial)
    assert fid.spatial_fid(torch.from_numpy(spatial + shift), mu, sigma) == pytest.approx(5.25, rel=1e-8)


def test_the_numbers_are_the_metrics_of_the_features(scored):
    metric_set, rows, scores = scored['metric_set'], scored['rows'], scored['scores']
    assert rows.shape == (5, 2048 + 2023) and rows.dtype == torch.float32
    samples = metric_set.split(rows)
    ref = metric_set.reference_features(['pool', 'spatial'])
    assert ref['pool'].shape == (5, 2048) and ref['spatial'].shape == (5, 2023)
    pool = samples['pool'].double().numpy()
    expected = {
        'fid': fid.frechet_distance_of_activations(pool, *fid.activation_statistics(ref['pool'].double().numpy())),
        'sfid': fid.frechet_distance_of_activations(samples['spatial'].double().numpy(),
                                                    *fid.activation_statistics(ref['spatial'].double().numpy())),
    }
    expected['inception_score'], expected['inception_score_std'] = inception_score_of_features(
        pool, fid.load_logit_weights(metric_set.inception_file), split_size=2)
    expected['precision'], expected['recall'] = precision_recall(ref['pool'], samples['pool'], 3)
    expected['kid'], expected['kid_std'] = kid(ref['pool'], samples['pool'], subsets=3, subset_size=4, seed=0)
    assert list(scores) == list(expected)
    assert scores == pytest.approx(expected, rel=1e-12)
    assert scores['fid'] > 0 and scores['sfid'] > 0 and scores['inception_score_std'] > 0
    record = metric_set.record()
    with open(scored['reference'], 'rb') as f:
        assert record['reference_sha256'] == hashlib.sha256(f.read()).hexdigest()
    assert record['metrics'] == list(INCEPTION_METRICS) and record['reference_images'] == 5
    assert record['reference_statistics_source'] == {'pool': 'computed from 5 images',
                                                     'spatial': 'computed from 5 images'}
    assert record['inception_score_split'] == {'split_size': 2} and record['pr_k'] == 3
    assert (record['kid_subsets'], record['kid_subset_size']) == (3, 4)


def test_stored_statistics_are_used_and_the_reference_check_tells_the_layer(scored, random_weights):
    """ADM's reference batches carry mu/sigma and mu_s/sigma_s: FID and sFID use them as they are. The check
    recomputes them from arr_0: near 0 for statistics of the same layer, far for those of another layer."""
    metric_set, directory = scored['metric_set'], scored['directory']
    ref = metric_set.reference_features(['pool', 'spatial'])
    mu, sigma = fid.activation_statistics(ref['pool'].double().numpy())
    mu_s, sigma_s = fid.activation_statistics(ref['spatial'].double().numpy())
    mu_6e, sigma_6e = fid.activation_statistics(scored['mixed_6e'].double().numpy())
    pictures = images(5, 1)

    settings = dict(inception_path=random_weights, batch_size=5)
    shifted = save_batch(directory / 'stored.npz', pictures, mu=mu + 0.5, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    stored = MetricSet(shifted, MetricSettings(metrics=('fid', 'sfid'), **settings))
    assert stored.reference_features_needed() == set()     # nothing to compute from the images
    result = stored.scores(scored['rows'])
    pool = scored['rows'][:, :2048].double().numpy()
    assert result['fid'] == pytest.approx(fid.frechet_distance_of_activations(pool, mu + 0.5, sigma), rel=1e-12)
    assert abs(result['fid'] - scored['scores']['fid']) > 10      # the stored mean, not the images' own
    assert result['sfid'] == pytest.approx(scored['scores']['sfid'], rel=1e-9)
    assert stored.record()['reference_statistics_source'] == {'pool': 'stored', 'spatial': 'stored'}
    check = stored.check_reference()
    assert check['spatial']['frechet_distance'] == pytest.approx(0, abs=1e-6 * check['spatial']['stored_trace_sigma'])
    assert check['pool']['frechet_distance'] == pytest.approx(2048 * 0.25, rel=1e-6)
    stored.reference = Reference(save_batch(directory / 'wrong.npz', pictures, mu_s=mu_6e, sigma_s=sigma_6e, mu=mu,
                                            sigma=sigma))    # the same networks, statistics of the next block
    check = stored.check_reference()
    assert check['pool']['frechet_distance'] == pytest.approx(0, abs=1e-6 * check['pool']['stored_trace_sigma'])
    assert check['spatial']['frechet_distance'] > 0.1 * np.trace(sigma_6e)


def test_reference_kinds(tmp_path):
    from libs.images import from_uint8, save_pngs
    pictures = images(3, 4, size=8)
    save_pngs(from_uint8(pictures), str(tmp_path / 'folder'), 0)
    folder = Reference(str(tmp_path / 'folder'))
    assert (folder.kind, folder.count, folder.image_size) == ('folder', 3, (8, 8))
    assert folder.sha256 == Reference(str(tmp_path / 'folder')).sha256
    np.savez(tmp_path / 'stats.npz', mu=np.zeros(4), sigma=np.eye(4))
    stats = Reference(str(tmp_path / 'stats.npz'))
    assert (stats.kind, stats.count, stats.image_size, sorted(stats.stored)) == ('statistics', None, None, ['pool'])
    stats.check_image_size((64, 64))   # statistics say nothing of the size
    batch = Reference(save_batch(tmp_path / 'batch.npz', pictures))
    assert (batch.kind, batch.count, batch.image_size, batch.stored) == ('batch', 3, (8, 8), {})


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert '\n' not in message
    return message


def test_errors_are_one_line(scored, tmp_path, random_weights):
    """Each before any network is loaded, except the size of samples given batch by batch (the first batch)."""
    reference = scored['reference']
    with pytest.raises(UserError) as info:
        scored['metric_set'].check_images(torch.zeros(1, 3, 32, 32))
    assert one_line(info) == (f'the reference {reference} holds 16x16 images and the samples are 32x32: compare '
                              'samples with a reference of their own resolution')
    with pytest.raises(UserError, match='holds 16x16 images and the samples are 64x64'):
        MetricSet(reference, MetricSettings(), image_size=(64, 64))
    cases = [(MetricSettings(metrics=('prec',)), 3,
              'precision and recall with pr_k=3: at least 4 samples are needed, got 3'),
             (MetricSettings(metrics=('recall',), pr_k=10), 12,
              'precision and recall with pr_k=10: at least 11 reference images are needed, got 5'),
             (MetricSettings(metrics=('kid',), kid_subset_size=4), 3,
              'KID subsets of kid_subset_size=4: at least 4 samples are needed, got 3'),
             (MetricSettings(metrics=('kid',)), 5000,
              'KID subsets of kid_subset_size=1000: at least 1000 reference images are needed, got 5'),
             (MetricSettings(metrics=('fid', 'is'), is_splits=10), 8,
              'the Inception Score over is_splits=10 parts: at least 10 samples are needed, got 8'),
             (MetricSettings(metrics=('sfid',)), 1, 'a Frechet distance: at least 2 samples are needed, got 1')]
    for settings, n, message in cases:
        with pytest.raises(UserError) as info:
            MetricSet(reference, settings, n_samples=n)
        assert one_line(info) == message
    np.savez(tmp_path / 'stats.npz', mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(UserError) as info:
        MetricSet(str(tmp_path / 'stats.npz'), MetricSettings(metrics=('fid', 'recall')))
    assert one_line(info).startswith(f'recall needs the reference images, and {tmp_path / "stats.npz"} holds only '
                                     'statistics (pool): use a reference batch')
    with pytest.raises(UserError) as info:
        MetricSet(reference, MetricSettings(inception_path=str(tmp_path / 'none.pth')))
    assert one_line(info) == f'FID Inception weights not found: {tmp_path / "none.pth"}'
    with pytest.raises(UserError) as info:
        MetricSet(reference, MetricSettings(metrics=('fd_dinov2',), dinov2_path=str(tmp_path / 'dino')))
    assert one_line(info).startswith(f'DINOv2 folder {tmp_path / "dino"}/ not found')
    with pytest.raises(UserError, match="unknown metric 'fdd' in metrics; known: fid, sfid, is, prec, recall"):
        MetricSettings(metrics='fid,fdd')
    with pytest.raises(UserError, match='FID reference statistics not found: '):
        MetricSet(str(tmp_path / 'missing.npz'), MetricSettings())
    np.savez(tmp_path / 'other.npz', images=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(UserError, match=r"has arrays \['images'\]; expected mu and sigma \(statistics\) or arr_0"):
        MetricSet(str(tmp_path / 'other.npz'), MetricSettings())


def test_settings_from_a_config():
    from libs.config import defaults
    from libs.evaluation.scorers import metric_settings
    config = defaults()
    config.eval.update(metrics='kid, fid', pr_k=5, kid_subset_size=500)
    settings = metric_settings(config)
    assert settings.metrics == ('fid', 'kid') and settings.kid_subset_size == 500 and settings.is_splits == 0
    gen = metric_settings(config, inception_score=True)   # eval.py --eval=gen: HybViT's 10 equal parts
    assert gen.metrics == ('fid', 'is', 'kid') and gen.is_splits == 10
    config.eval.metrics = 'fid,precision'
    with pytest.raises(UserError, match="unknown metric 'precision' in config.eval.metrics; known: fid, sfid"):
        metric_settings(config)
    config.eval.update(metric='digits', metrics='fid,kid')
    with pytest.raises(UserError, match="applies to config.eval.metric='fid'"):
        metric_settings(config)
