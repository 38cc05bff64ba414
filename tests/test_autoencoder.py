"""The autoencoders: CompVis <-> diffusers key mapping, loading the CompVis file and diffusers folders of each known
class (AutoencoderKL with and without a shift, AutoencoderDC), their latents against diffusers' own, the one-line
errors."""
import json

import pytest
import torch
from diffusers import AutoencoderKL

from libs.data.latent_format import LatentFormat
from libs.errors import UserError
from libs.latent.autoencoder import (SCALE_FACTOR, SD_CONFIG, FrozenAutoencoder, autoencoder_format,
                                     compvis_to_diffusers, diffusers_to_compvis, load_autoencoder)
from tiny_models import TINY_AUTOENCODER as TINY
from tiny_models import save_tiny_autoencoder, tiny_autoencoder, tiny_dc_autoencoder, tiny_shifted_autoencoder


@pytest.fixture(scope='module')
def vae():
    return tiny_autoencoder(seed=0)


@pytest.fixture(scope='module')
def compvis_file(vae, tmp_path_factory):
    path = tmp_path_factory.mktemp('sd') / 'autoencoder_kl.pth'
    torch.save(diffusers_to_compvis(vae.state_dict(), TINY), path)
    return str(path)


@pytest.fixture
def images():
    return torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_mapping_round_trip_is_exact_and_names_follow_the_compvis_layout(vae):
    sd = vae.state_dict()
    compvis = diffusers_to_compvis(sd, TINY)
    back = compvis_to_diffusers(compvis, TINY)
    assert list(back) == list(sd)
    for key in sd:
        assert back[key].shape == sd[key].shape and torch.equal(back[key], sd[key]), key

    diffusers_words = ('down_blocks', 'up_blocks', 'mid_block', 'to_', 'conv_norm')
    assert not [k for k in compvis if any(word in k for word in diffusers_words)]
    assert torch.equal(compvis['encoder.conv_in.weight'], sd['encoder.conv_in.weight'])
    assert torch.equal(compvis['encoder.norm_out.weight'], sd['encoder.conv_norm_out.weight'])
    assert compvis['encoder.mid.attn_1.q.weight'].shape == (16, 16, 1, 1)
    assert compvis['decoder.mid.attn_1.proj_out.weight'].shape == (16, 16, 1, 1)
    assert torch.equal(compvis['encoder.mid.attn_1.norm.bias'], sd['encoder.mid_block.attentions.0.group_norm.bias'])
    assert torch.equal(compvis['encoder.mid.block_2.conv1.weight'], sd['encoder.mid_block.resnets.1.conv1.weight'])
    assert torch.equal(compvis['encoder.down.1.block.0.nin_shortcut.weight'],
                       sd['encoder.down_blocks.1.resnets.0.conv_shortcut.weight'])
    assert 'encoder.down.0.downsample.conv.weight' in compvis and 'encoder.down.1.downsample.conv.weight' not in compvis
    # Decoder levels run in reverse: diffusers' first up block (16 channels) is CompVis level 1.
    assert torch.equal(compvis['decoder.up.1.block.1.conv2.weight'], sd['decoder.up_blocks.0.resnets.1.conv2.weight'])
    assert torch.equal(compvis['decoder.up.1.upsample.conv.weight'], sd['decoder.up_blocks.0.upsamplers.0.conv.weight'])
    assert compvis['decoder.up.0.block.0.nin_shortcut.weight'].shape == (8, 16, 1, 1)
    assert 'decoder.up.0.upsample.conv.weight' not in compvis
    assert 'quant_conv.weight' in compvis and 'post_quant_conv.bias' in compvis


def test_stable_diffusion_1_config_gives_the_released_layout():
    with torch.device('meta'):
        sd = AutoencoderKL(**SD_CONFIG).state_dict()
    compvis = diffusers_to_compvis(sd, SD_CONFIG)
    assert len(compvis) == 248
    shapes = {k: tuple(v.shape) for k, v in compvis.items()}
    assert shapes['encoder.conv_in.weight'] == (128, 3, 3, 3)
    assert shapes['encoder.down.1.block.0.nin_shortcut.weight'] == (256, 128, 1, 1)
    assert shapes['encoder.down.1.downsample.conv.weight'] == (256, 256, 3, 3)
    assert shapes['encoder.down.2.downsample.conv.weight'] == (512, 512, 3, 3)
    assert 'encoder.down.3.downsample.conv.weight' not in shapes
    assert shapes['encoder.mid.attn_1.k.weight'] == (512, 512, 1, 1)
    assert shapes['decoder.up.3.block.2.conv2.weight'] == (512, 512, 3, 3)
    assert shapes['decoder.up.1.upsample.conv.weight'] == (256, 256, 3, 3)
    assert shapes['decoder.up.0.block.0.nin_shortcut.weight'] == (128, 256, 1, 1)
    assert 'decoder.up.0.upsample.conv.weight' not in shapes
    assert shapes['quant_conv.weight'] == (8, 8, 1, 1) and shapes['post_quant_conv.weight'] == (4, 4, 1, 1)


def raw_moments(vae, images):
    with torch.no_grad():
        return vae.quant_conv(vae.encoder(images))


def raw_decode(vae, latents):
    with torch.no_grad():
        return vae.decode(latents / SCALE_FACTOR).sample


def test_compvis_file_loads_and_matches_the_original(vae, compvis_file, images):
    ae = load_autoencoder(compvis_file, config=TINY)
    assert isinstance(ae, FrozenAutoencoder) and not ae.training
    assert not any(p.requires_grad for p in ae.parameters())
    ae.train()
    assert not ae.training and not ae.vae.training
    torch.testing.assert_close(ae.encode_features(images), raw_moments(vae, images), rtol=0, atol=1e-6)
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ae.decode(latents), raw_decode(vae, latents), rtol=0, atol=1e-6)


def test_compvis_checkpoint_wrappers_are_unwrapped(vae, tmp_path, images):
    compvis = diffusers_to_compvis(vae.state_dict(), TINY)
    wrapped = {f'first_stage_model.{k}': v for k, v in compvis.items()}
    wrapped['model.diffusion_model.out.0.weight'] = torch.zeros(1)
    wrapped['loss.logvar'] = torch.zeros(1)
    path = tmp_path / 'sd.ckpt'
    torch.save({'state_dict': wrapped}, path)
    ae = load_autoencoder(str(path), config=TINY)
    torch.testing.assert_close(ae.encode_features(images), raw_moments(vae, images), rtol=0, atol=1e-6)


def test_diffusers_folder_loads_in_the_requested_dtype(vae, tmp_path, images):
    vae.save_pretrained(tmp_path / 'vae')
    ae = load_autoencoder(str(tmp_path / 'vae'), dtype=torch.float64)
    assert ae.dtype == torch.float64 and ae.device == torch.device('cpu')
    moments = ae.encode_features(images)
    assert moments.dtype == torch.float64
    torch.testing.assert_close(moments.float(), raw_moments(vae, images), rtol=0, atol=1e-5)


def test_shapes_sampling_and_scale_round_trip(vae, compvis_file, images):
    ae = load_autoencoder(compvis_file, config=TINY)
    assert ae.format == LatentFormat('AutoencoderKL', 4, 2, SCALE_FACTOR, 0.0, 'moments', compvis_file)
    assert autoencoder_format(compvis_file, TINY) == ae.format
    moments = ae.encode_features(images)
    assert moments.shape == (3, 8, 8, 8)
    latents = ae.to_latents(moments, generator=torch.Generator().manual_seed(3))
    assert latents.shape == (3, 4, 8, 8)
    mean, logvar = moments.chunk(2, dim=1)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(latents, SCALE_FACTOR * (mean + torch.exp(0.5 * logvar) * noise))
    encoded = ae.encode(images, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(encoded, latents)

    decoded = ae.decode(encoded)
    assert decoded.shape == images.shape
    with torch.no_grad():
        z = SCALE_FACTOR ** -1 * encoded
        torch.testing.assert_close(z, mean + torch.exp(0.5 * logvar) * noise)
        expected = vae.decode(z).sample
    torch.testing.assert_close(decoded, expected, rtol=0, atol=1e-5)


def test_mini_batched_decode_equals_one_batch(compvis_file):
    ae = load_autoencoder(compvis_file, config=TINY)
    latents = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(ae.decode(latents, batch_size=2), ae.decode(latents), rtol=0, atol=1e-5)


def test_missing_path_says_what_to_put_where(tmp_path):
    path = str(tmp_path / 'assets' / 'stable-diffusion' / 'autoencoder_kl.pth')
    with pytest.raises(UserError) as info:
        load_autoencoder(path)
    message = str(info.value)
    assert '\n' not in message
    assert path in message and 'autoencoder_kl.pth' in message and 'config.json' in message
    assert 'AutoencoderDC, AutoencoderKL' in message and 'assets/README.md' in message


def test_unmappable_and_missing_keys_are_named(vae, tmp_path):
    compvis = diffusers_to_compvis(vae.state_dict(), TINY)
    with pytest.raises(UserError, match=r"'encoder\.down\.0\.attn\.0\.q\.weight'"):
        compvis_to_diffusers({**compvis, 'encoder.down.0.attn.0.q.weight': torch.zeros(1)}, TINY)

    path = tmp_path / 'bad.pth'
    torch.save({**compvis, 'encoder.down.7.block.0.conv1.weight': torch.zeros(1)}, path)
    with pytest.raises(UserError) as info:
        load_autoencoder(str(path), config=TINY)
    assert '\n' not in str(info.value) and "'encoder.down.7.block.0.conv1.weight'" in str(info.value)

    del compvis['decoder.up.1.upsample.conv.bias']
    torch.save(compvis, path)
    with pytest.raises(UserError, match=r"'decoder\.up\.1\.upsample\.conv\.bias' is missing"):
        load_autoencoder(str(path), config=TINY)

    with pytest.raises(UserError, match='config.json is missing'):
        load_autoencoder(str(tmp_path))


# ------------------------------------------------------------------------------------- diffusers folders by class

# (tiny model, class, channels, factor, scale, shift, what a store holds)
FOLDERS = {
    'sd3_style_kl': (tiny_shifted_autoencoder, 'AutoencoderKL', 3, 2, 1.5305, 0.0609, 'moments'),
    'dc_ae': (tiny_dc_autoencoder, 'AutoencoderDC', 8, 4, 0.4, 0.0, 'latents'),
}


@pytest.mark.parametrize('kind', sorted(FOLDERS))
def test_each_class_loads_from_its_folder_and_speaks_as_diffusers_pipelines(kind, tmp_path, images):
    make, name, channels, factor, scale, shift, stored = FOLDERS[kind]
    model = make(seed=3)
    path = save_tiny_autoencoder(tmp_path / kind, seed=3, make=make)
    fmt = autoencoder_format(path)                                   # config.json alone
    assert fmt == LatentFormat(name, channels, factor, scale, shift, stored, path)
    ae = load_autoencoder(path)
    assert type(ae.vae).__name__ == name and ae.format == fmt and not ae.training

    # Encoding as the pipelines' image-to-image paths do: (z - shift) * scale, z the Gaussian's sample / the code.
    with torch.no_grad():
        encoded = model.encode(images)
        if stored == 'moments':
            z = encoded.latent_dist.sample(generator=torch.Generator().manual_seed(5))
        else:
            z = encoded.latent
        expected = (z - shift) * scale
    latents = ae.encode(images, generator=torch.Generator().manual_seed(5))
    assert latents.shape == (3, channels, 16 // factor, 16 // factor)
    torch.testing.assert_close(latents, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    features = ae.encode_features(images)
    assert features.shape[1] == (2 * channels if stored == 'moments' else channels)

    # Decoding as their last step does: z = latents / scale + shift.
    with torch.no_grad():
        decoded = model.decode(latents / scale + shift).sample
    torch.testing.assert_close(ae.decode(latents), decoded, rtol=0, atol=1e-5)
    torch.testing.assert_close(ae.decode(latents, batch_size=2), decoded, rtol=0, atol=1e-5)
    assert decoded.shape == images.shape


def test_unknown_and_broken_folders_are_one_line_each(tmp_path):
    def message(path):
        with pytest.raises(UserError) as info:
            autoencoder_format(str(path))
        assert '\n' not in str(info.value)
        return str(info.value)

    folder = tmp_path / 'vq'
    folder.mkdir()
    (folder / 'config.json').write_text(json.dumps({'_class_name': 'VQModel', 'latent_channels': 3}))
    text = message(folder)
    assert "'VQModel'" in text and 'known: AutoencoderDC, AutoencoderKL' in text
    (folder / 'config.json').write_text('{"latent_channels": ')
    assert 'cannot read' in message(folder)
    (folder / 'config.json').write_text(json.dumps({'_class_name': 'AutoencoderKL', 'latents_mean': [0.1] * 4,
                                                    'latents_std': [1.0] * 4}))
    assert 'latents_mean' in message(folder)
    (folder / 'config.json').unlink()
    assert 'config.json is missing' in message(folder)
    missing = tmp_path / 'assets' / 'dc-ae-f64c128-in-1.0-diffusers'
    text = message(missing)
    assert text.startswith(f'autoencoder not found at {missing}: put a diffusers autoencoder folder there')

    empty_weights = tmp_path / 'no_weights'
    tiny_dc_autoencoder().save_pretrained(empty_weights)
    (empty_weights / 'diffusion_pytorch_model.safetensors').unlink()
    with pytest.raises(UserError, match='cannot load the diffusers AutoencoderDC in') as info:
        load_autoencoder(str(empty_weights))
    assert '\n' not in str(info.value)
