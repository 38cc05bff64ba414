"""FD-DINOv2: dgm-eval's preprocessing against PIL, the CLS features of a tiny DINOv2 read from a local folder, the
Frechet distance in closed form, and one-line errors for a missing folder."""
import numpy as np
import pytest
import torch
from PIL import Image

from libs.errors import UserError
from libs.images import from_uint8
from libs.latent.dinov2 import IMAGENET_MEAN, IMAGENET_STD, dinov2_pixels, load_dinov2
from libs.metrics.fd_dinov2 import DinoV2Features, fd_dinov2

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def tiny_dinov2(tmp_path_factory):
    """A randomly initialised two-layer DINOv2 (patch 14, width 32) saved as a transformers folder."""
    from transformers import Dinov2Config, Dinov2Model
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          patch_size=14, image_size=28)
    path = tmp_path_factory.mktemp('dinov2')
    Dinov2Model(config).save_pretrained(path)
    return str(path)


def as_levels(pixels: torch.Tensor) -> np.ndarray:
    """DINOv2's normalised input back to 0..255 pixel levels."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((pixels * std + mean) * 255).round().numpy()


@pytest.mark.parametrize('size', [40, 256])
def test_preprocessing_is_pils_bicubic_resize_and_imagenet_normalisation(size):
    images = torch.randint(0, 256, (2, 3, size, size), generator=torch.Generator().manual_seed(size),
                           dtype=torch.uint8)
    levels = as_levels(dinov2_pixels(images))
    assert levels.shape == (2, 3, 224, 224)
    pil = np.stack([np.asarray(Image.fromarray(img.permute(1, 2, 0).numpy()).resize((224, 224), Image.BICUBIC))
                    for img in images]).transpose(0, 3, 1, 2)
    difference = np.abs(levels - pil)
    assert difference.max() <= 2 and (difference > 0).mean() < 0.02, (difference.max(), (difference > 0).mean())
    # float samples in [-1, 1] and grayscale images arrive as the same pixels
    np.testing.assert_array_equal(dinov2_pixels(from_uint8(images)).numpy(), dinov2_pixels(images).numpy())
    gray = images[:, :1]
    np.testing.assert_array_equal(dinov2_pixels(gray).numpy(), dinov2_pixels(gray.repeat(1, 3, 1, 1)).numpy())


def test_images_of_224_are_only_normalised():
    images = torch.randint(0, 256, (1, 3, 224, 224), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    np.testing.assert_array_equal(as_levels(dinov2_pixels(images)), images.numpy())


def test_features_are_the_cls_token_after_the_final_norm(tiny_dinov2):
    features = DinoV2Features.from_folder(tiny_dinov2, batch_size=2)
    assert features.width == 32
    images = torch.randint(0, 256, (3, 3, 30, 30), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    out = features(images)
    model = load_dinov2(tiny_dinov2)
    with torch.no_grad():
        hidden = model(pixel_values=dinov2_pixels(images), output_hidden_states=True).hidden_states[-1]
        expected = model.layernorm(hidden)[:, 0]
    assert out.shape == (3, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[0], out[1])


def test_frechet_distance_of_shifted_features():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((40, 6))
    shift = np.array([0.5, -1.0, 0.0, 2.0, 0.0, 0.25])
    assert fd_dinov2(ref + shift, ref) == pytest.approx(float(shift @ shift), rel=1e-9)
    assert fd_dinov2(torch.from_numpy(ref), ref) == pytest.approx(0.0, abs=1e-9)


def test_a_missing_or_incomplete_folder_is_one_line(tmp_path):
    with pytest.raises(UserError) as info:
        load_dinov2(str(tmp_path / 'nowhere'))
    message = str(info.value)
    assert '\n' not in message and message.startswith(f'DINOv2 folder {tmp_path / "nowhere"}/ not found: put ')
    assert 'facebook/dinov2-large' in message and 'assets/dinov2-vitl14/' in message
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'config.json').write_text('{}')
    with pytest.raises(UserError, match='lacks config.json or the weights'):
        load_dinov2(str(tmp_path / 'empty'))


def test_the_metric_set_scores_fd_dinov2_without_loading_inception(tiny_dinov2, tmp_path):
    from libs.metrics.metric_set import MetricSet, MetricSettings
    reference_images = torch.randint(0, 256, (4, 3, 24, 24), generator=torch.Generator().manual_seed(2),
                                     dtype=torch.uint8)
    np.savez(tmp_path / 'ref.npz', arr_0=reference_images.permute(0, 2, 3, 1).numpy())
    metric_set = MetricSet(str(tmp_path / 'ref.npz'), MetricSettings(metrics='fd_dinov2', dinov2_path=tiny_dinov2,
                                                                     inception_path=str(tmp_path / 'absent.pth')))
    assert metric_set.inception is None and metric_set.columns == ['dinov2']
    samples = torch.randint(0, 256, (5, 3, 24, 24), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    rows = metric_set.rows(samples)
    features = DinoV2Features.from_folder(tiny_dinov2)
    assert rows.shape == (5, 32)
    expected = fd_dinov2(features(samples), features(reference_images))
    assert metric_set.scores(rows) == pytest.approx({'fd_dinov2': expected}, rel=1e-6)
    record = metric_set.record()
    assert record['dinov2'] == tiny_dinov2 and record['dinov2_width'] == 32 and 'inception' not in record
