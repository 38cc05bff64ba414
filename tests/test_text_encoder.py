"""CLIP text encoder: a tiny CLIP text model and BPE tokenizer saved to disk, loaded offline, checked for shapes,
padding and truncation, determinism, batching, the empty context and the error lines."""
import json
import os
import shutil
import socket

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from libs.errors import UserError
from libs.latent.text_encoder import encode_in_batches, load_text_encoder
from tiny_models import END, START, save_tiny_text_encoder, tiny_text_config, write_tokenizer

MAX_LENGTH = 8


@pytest.fixture(scope='module', autouse=True)
def no_network():
    """Any connection attempt, including while the module fixtures build and load the model, fails the suite,
    even where a library swallows the exception."""
    attempts = []

    def refuse(sock, address, *args, **kwargs):
        attempts.append(address)
        raise OSError('network access attempted')

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, 'connect', refuse)
        yield attempts
    assert not attempts, f'network access attempted: {attempts}'


def test_guard_catches_connections(no_network):
    with pytest.raises(OSError):
        socket.create_connection(('127.0.0.1', 9), timeout=1)
    assert no_network == [('127.0.0.1', 9)]
    no_network.clear()


@pytest.fixture(scope='module')
def tiny_dir(tmp_path_factory):
    """A directory laid out like a downloaded CLIP text model: config.json, model.safetensors, vocab.json,
    merges.txt."""
    return save_tiny_text_encoder(tmp_path_factory.mktemp('tiny_clip_text'), max_position_embeddings=16)


@pytest.fixture(scope='module')
def encoder(tiny_dir):
    return load_text_encoder(tiny_dir, max_length=MAX_LENGTH)


def _vocab(tiny_dir) -> dict:
    with open(os.path.join(tiny_dir, 'vocab.json')) as f:
        return json.load(f)


def test_shape_dtype_and_frozen(encoder):
    features = encoder.encode(['a cat', 'the dog sat', ''])
    assert features.shape == (3, MAX_LENGTH, 32)
    assert features.dtype == torch.float32
    assert not features.requires_grad
    assert not encoder.model.training
    assert not any(p.requires_grad for p in encoder.model.parameters())


def test_short_prompt_is_padded_with_end_tokens(encoder, tiny_dir):
    vocab = _vocab(tiny_dir)
    ids = encoder.tokenize(['a cat', 'Dog'])
    assert ids.shape == (2, MAX_LENGTH) and ids.dtype == torch.int64
    assert ids[0].tolist() == [vocab[START], vocab['a</w>'], vocab['cat</w>']] + [vocab[END]] * (MAX_LENGTH - 3)
    assert ids[1].tolist() == [vocab[START], vocab['dog</w>']] + [vocab[END]] * (MAX_LENGTH - 2)


def test_long_prompt_is_truncated(encoder, tiny_dir):
    vocab = _vocab(tiny_dir)
    words = ['cat', 'dog', 'sat'] * 5
    ids = encoder.tokenize([' '.join(words)])[0]
    kept = MAX_LENGTH - 2
    assert ids.tolist() == [vocab[START]] + [vocab[w + '</w>'] for w in words[:kept]] + [vocab[END]]
    assert torch.equal(encoder.encode([' '.join(words)]), encoder.encode([' '.join(words[:kept])]))


def test_deterministic_and_prompt_dependent(encoder):
    a1 = encoder.encode(['a cat sat'])
    a2 = encoder.encode(['a cat sat'])
    b = encoder.encode(['a dog sat'])
    assert torch.equal(a1, a2)
    assert not torch.allclose(a1, b, atol=1e-4)
    assert torch.equal(a1[:, :2], b[:, :2])  # causal attention: the tokens before the first difference agree


def test_empty_context_is_encoding_of_empty_prompt(encoder):
    empty = encoder.empty_context()
    assert empty.shape == (MAX_LENGTH, 32)
    assert torch.equal(empty, encoder.encode([''])[0])
    empty.zero_()
    assert not torch.equal(encoder.empty_context(), empty)


def test_batch_equals_one_at_a_time(encoder):
    prompts = ['a cat', 'the dog sat on a mat', '', 'cat dog cat dog cat dog cat dog cat', 'sat']
    batched = encoder.encode(prompts)
    single = torch.cat([encoder.encode([p]) for p in prompts])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)
    chunked = encode_in_batches(encoder, prompts, batch_size=2)
    assert chunked.device.type == 'cpu' and chunked.shape == batched.shape
    torch.testing.assert_close(chunked, batched, rtol=0, atol=1e-5)
    assert encode_in_batches(encoder, [], batch_size=2).shape == (0, MAX_LENGTH, 32)
    with pytest.raises(ValueError):
        encode_in_batches(encoder, prompts, batch_size=0)


def test_full_clip_checkpoint_loads_its_text_tower(tmp_path):
    """A downloaded openai/clip-vit-large-patch14 holds the whole CLIP model; only its text tower is used."""
    vocab = write_tokenizer(tmp_path)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=8,
                  patch_size=4)
    torch.manual_seed(1)
    clip = CLIPModel(CLIPConfig(text_config=tiny_text_config(len(vocab)).to_dict(), vision_config=vision,
                                projection_dim=8)).eval()
    clip.save_pretrained(tmp_path)
    encoder = load_text_encoder(str(tmp_path), max_length=MAX_LENGTH)
    ids = encoder.tokenize(['a cat sat'])
    with torch.no_grad():
        expected = clip.text_model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(encoder.encode(['a cat sat']), expected, rtol=0, atol=1e-6)


def _error_line(path, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        load_text_encoder(path, **kwargs)
    message = str(info.value)
    assert '\n' not in message
    return message


def test_missing_directory_error(tmp_path):
    message = _error_line(str(tmp_path / 'nowhere'))
    assert 'not found' in message and 'nowhere' in message
    for name in ('config.json', 'model.safetensors', 'vocab.json', 'merges.txt', 'assets/clip-vit-large-patch14/'):
        assert name in message


def test_directory_without_tokenizer_files_error(tiny_dir, tmp_path):
    path = tmp_path / 'model_only'
    path.mkdir()
    for name in ('config.json', 'model.safetensors'):
        shutil.copy(os.path.join(tiny_dir, name), path)
    message = _error_line(str(path))
    lacking = message.split('lacks ', 1)[1].split(':', 1)[0]
    assert 'vocab.json' in lacking and 'merges.txt' in lacking and 'config.json' not in lacking
    assert 'assets/clip-vit-large-patch14/' in message


def test_max_length_beyond_the_model_error(tiny_dir):
    assert 'max_length' in _error_line(tiny_dir, max_length=77)


def test_tokenizer_json_stands_in_for_vocab_and_merges(encoder, tmp_path):
    encoder.tokenizer.save_pretrained(tmp_path)
    encoder.model.save_pretrained(tmp_path)
    for name in ('vocab.json', 'merges.txt'):
        if (tmp_path / name).exists():
            (tmp_path / name).unlink()
    reloaded = load_text_encoder(str(tmp_path), max_length=MAX_LENGTH)
    assert torch.equal(reloaded.encode(['a cat sat']), encoder.encode(['a cat sat']))


def test_unreadable_config_error(tiny_dir, tmp_path):
    for name in ('model.safetensors', 'vocab.json', 'merges.txt'):
        shutil.copy(os.path.join(tiny_dir, name), tmp_path)
    (tmp_path / 'config.json').write_text('{not json')
    assert 'cannot load the CLIP text encoder' in _error_line(str(tmp_path) + '/')
