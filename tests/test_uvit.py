"""U-ViT: compatibility with the released checkpoints (keys, shapes, counts, strict loading) and the forward math."""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from libs.errors import UserError
from libs.nets import build_nnet, count_parameters, load_nnet_weights
from libs.uvit import UViT
from libs.uvit_t2i import UViT as UViTT2I

REFERENCE = os.path.join(os.path.dirname(__file__), 'data', 'uvit_official_state_dicts.json')


def released():
    with open(REFERENCE) as f:
        return {name: entry for name, entry in json.load(f).items() if entry['nnet']['name'] == 'uvit'}


def constructor_args(entry):
    kwargs = dict(entry['nnet'])
    kwargs.pop('name')
    return kwargs


def test_every_released_config_has_the_released_keys_shapes_and_parameter_count():
    for name, entry in released().items():
        with torch.device('meta'):
            model = UViT(**constructor_args(entry))
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert shapes == entry['keys'], name
        assert list(shapes) == list(entry['keys']), f'{name}: key order differs'
        assert count_parameters(model) == entry['n_params'], name


def random_state_dict(keys: dict, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*shape, generator=generator) * 0.02 for k, shape in keys.items()}


@pytest.mark.parametrize('name', ['cifar10_uvit_small', 'imagenet64_uvit_mid'])
def test_state_dict_built_from_the_released_key_list_loads_strictly_and_samples(tmp_path, name):
    entry = released()[name]
    path = tmp_path / f'{name}.pth'
    torch.save(random_state_dict(entry['keys']), path)
    kwargs = constructor_args(entry)
    model = build_nnet(dict(name='uvit', **kwargs))
    assert load_nnet_weights(model, str(path)) == str(path)
    loaded = model.state_dict()
    reference = torch.load(path, weights_only=True)
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)
    c, s = kwargs.get('in_chans', 3), kwargs['img_size']
    x = torch.randn(2, c, s, s)
    y = torch.tensor([3, 999]) if kwargs['num_classes'] > 0 else None
    with torch.no_grad():
        out = model.eval()(x, torch.tensor([10.0, 900.0]), y)
    assert out.shape == x.shape and torch.isfinite(out).all()


def reference_forward(sd: dict, x, timesteps, y, *, patch_size, num_heads, depth, mlp_time_embed, conv,
                      context=None):
    """U-ViT written out from the paper with plain tensor ops on a state dict (no code shared with libs/)."""
    def linear(h, name, bias=True):
        return h @ sd[f'{name}.weight'].T + (sd[f'{name}.bias'] if bias and f'{name}.bias' in sd else 0)

    def layer_norm(h, name):
        return F.layer_norm(h, h.shape[-1:], sd[f'{name}.weight'], sd[f'{name}.bias'], eps=1e-5)

    def block(h, name, skip=None):
        if skip is not None:
            h = linear(torch.cat([h, skip], -1), f'{name}.skip_linear')
        a = layer_norm(h, f'{name}.norm1')
        qkv = linear(a, f'{name}.attn.qkv')
        b, n, three_d = qkv.shape
        dim = three_d // 3
        hd = dim // num_heads
        q, k, v = qkv.view(b, n, 3, num_heads, hd).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1) @ v
        h = h + linear(att.transpose(1, 2).reshape(b, n, dim), f'{name}.attn.proj')
        m = layer_norm(h, f'{name}.norm2')
        m = linear(F.gelu(linear(m, f'{name}.mlp.fc1')), f'{name}.mlp.fc2')
        return h + m

    b, c, height, width = x.shape
    dim = sd['pos_embed'].shape[-1]
    tokens = F.conv2d(x, sd['patch_embed.proj.weight'], sd['patch_embed.proj.bias'], stride=patch_size)
    tokens = tokens.flatten(2).transpose(1, 2)
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / half)
    angles = timesteps[:, None] * freqs[None]
    t_emb = torch.cat([torch.cos(angles), torch.sin(angles)], -1)
    if mlp_time_embed:
        t_emb = linear(F.silu(linear(t_emb, 'time_embed.0')), 'time_embed.2')
    seq = [t_emb[:, None], tokens]
    if y is not None:
        seq.insert(0, sd['label_emb.weight'][y][:, None])
    if context is not None:  # text-to-image: [time, context, patches]
        seq.insert(1, linear(context, 'context_embed'))
    h = torch.cat(seq, 1) + sd['pos_embed']
    skips = []
    for i in range(depth // 2):
        h = block(h, f'in_blocks.{i}')
        skips.append(h)
    h = block(h, 'mid_block')
    for i in range(depth // 2):
        h = block(h, f'out_blocks.{i}', skips.pop())
    h = linear(layer_norm(h, 'norm'), 'decoder_pred')
    h = h[:, h.shape[1] - tokens.shape[1]:]
    grid = height // patch_size
    img = h.view(b, grid, grid, patch_size, patch_size, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, height, width)
    if conv:
        img = F.conv2d(img, sd['final_layer.weight'], sd['final_layer.bias'], padding=1)
    return img


@pytest.mark.parametrize('num_classes,mlp_time_embed,conv', [(-1, False, True), (10, True, False), (11, False, True)])
def test_forward_equals_the_paper_math(num_classes, mlp_time_embed, conv):
    torch.manual_seed(0)
    kwargs = dict(img_size=8, patch_size=2, in_chans=3, embed_dim=32, depth=4, num_heads=4,
                  num_classes=num_classes, mlp_time_embed=mlp_time_embed, conv=conv)
    model = UViT(**kwargs).eval()
    with torch.no_grad():  # the default init zeroes biases and pos_embed is small: randomise everything
        for p in model.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(3, 3, 8, 8)
    t = torch.tensor([0.0, 499.5, 999.0])
    y = torch.tensor([0, 5, num_classes - 1]) if num_classes > 0 else None
    with torch.no_grad():
        ours = model(x, t, y)
        ref = reference_forward(model.state_dict(), x, t, y, patch_size=2, num_heads=4, depth=4,
                                mlp_time_embed=mlp_time_embed, conv=conv)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    kwargs = dict(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=4, num_heads=4, num_classes=10)
    plain, ckpt = UViT(**kwargs), UViT(use_checkpoint=True, **kwargs)
    ckpt.load_state_dict(plain.state_dict())
    x, t, y = torch.randn(4, 1, 8, 8), torch.rand(4) * 999, torch.randint(0, 10, (4,))
    grads = []
    for model in (plain, ckpt):
        model(x, t, y).square().mean().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-5, atol=1e-7)


def test_the_long_skip_hands_back_compact_gradients_with_the_same_numbers():
    """JoinSkip is torch.cat in the forward; in the backward each input gets a compact gradient of its own, not a
    slice that keeps the (B, L, 2D) gradient alive until the backward reaches the shallow block."""
    from libs.nets.layers import JoinSkip
    torch.manual_seed(0)
    x, skip = torch.randn(2, 5, 8, requires_grad=True), torch.randn(2, 5, 8, requires_grad=True)
    weight = torch.randn(16, 4)
    joined = JoinSkip.apply(x, skip)
    assert torch.equal(joined, torch.cat([x, skip], dim=-1))
    ours = torch.autograd.grad((joined @ weight).sin().sum(), (x, skip))
    plain = torch.autograd.grad((torch.cat([x, skip], dim=-1) @ weight).sin().sum(), (x, skip))
    for grad, reference in zip(ours, plain):
        assert torch.equal(grad, reference)
        assert grad.is_contiguous() and grad.untyped_storage().nbytes() == grad.numel() * grad.element_size()
    assert reference.untyped_storage().nbytes() == 2 * reference.numel() * reference.element_size()  # cat's slices


def test_mismatched_checkpoint_names_the_first_offending_key(tmp_path):
    model = UViT(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=4)
    sd = model.state_dict()
    wrong_shape = dict(sd, pos_embed=torch.zeros(1, 5, 32))
    torch.save(wrong_shape, tmp_path / 'shape.pth')
    with pytest.raises(UserError, match=r"'pos_embed' has shape \(1, 5, 32\), the model expects \(1, 17, 32\)"):
        load_nnet_weights(model, str(tmp_path / 'shape.pth'))
    missing = {k: v for k, v in sd.items() if k != 'norm.weight'}
    torch.save(missing, tmp_path / 'missing.pth')
    with pytest.raises(UserError, match=r"key 'norm.weight' is missing"):
        load_nnet_weights(model, str(tmp_path / 'missing.pth'))
    torch.save(dict(sd, extra=torch.zeros(1)), tmp_path / 'extra.pth')
    with pytest.raises(UserError, match=r"unexpected key 'extra'"):
        load_nnet_weights(model, str(tmp_path / 'extra.pth'))
    with pytest.raises(UserError, match='weights file not found'):
        load_nnet_weights(model, str(tmp_path / 'absent.pth'))
    (tmp_path / 'garbage.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(UserError, match='cannot read weights file'):
        load_nnet_weights(model, str(tmp_path / 'garbage.pth'))


def test_wrapper_prefixes_from_ddp_and_compile_are_accepted(tmp_path):
    model = UViT(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=4)
    torch.save({f'module._orig_mod.{k}': v for k, v in model.state_dict().items()}, tmp_path / 'w.pth')
    load_nnet_weights(UViT(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=4),
                      str(tmp_path / 'w.pth'))


def test_unknown_nnet_and_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="unknown nnet name 'vit' in config.nnet; known: uvit, uvit_t2i, genvit"):
        build_nnet(dict(name='vit'))
    with pytest.raises(UserError, match='config.nnet does not fit UViT'):
        build_nnet(dict(name='uvit', img_size=8, patch_size=2, embed_dimm=3))


def test_text_to_image_uvit_has_the_released_keys_and_forward():
    with open(REFERENCE) as f:
        entry = json.load(f)['mscoco_uvit_small']
    with torch.device('meta'):
        model = build_nnet(dict(entry['nnet']))
    assert isinstance(model, UViTT2I)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == entry['keys']
    assert count_parameters(model) == entry['n_params']

    torch.manual_seed(0)
    small = UViTT2I(img_size=8, patch_size=2, in_chans=4, embed_dim=32, depth=4, num_heads=4, clip_dim=12,
                    num_clip_token=5).eval()
    with torch.no_grad():
        for p in small.parameters():
            p.normal_(0, 0.2)
        x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 700.0]), torch.randn(2, 5, 12)
        ours = small(x, t, context)
        ref = reference_forward(small.state_dict(), x, t, None, patch_size=2, num_heads=4, depth=4,
                                mlp_time_embed=False, conv=True, context=context)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------- hybrid U-ViT (clf_classes > 0)
HEAD_KEYS = ['classifier.cls_token', 'classifier.norm.weight', 'classifier.norm.bias', 'classifier.head.weight',
             'classifier.head.bias']


def test_the_classifier_option_only_appends_keys_to_the_released_ones():
    for name, entry in released().items():
        with torch.device('meta'):
            plain = UViT(**constructor_args(entry), clf_classes=0)
            hybrid = UViT(**constructor_args(entry), clf_classes=7)
        assert {k: list(v.shape) for k, v in plain.state_dict().items()} == entry['keys'], name
        keys = list(hybrid.state_dict())
        assert keys[:len(entry['keys'])] == list(entry['keys']) and keys[len(entry['keys']):] == HEAD_KEYS, name
        dim = constructor_args(entry)['embed_dim']
        assert tuple(hybrid.classifier.head.weight.shape) == (7, dim)
        assert tuple(hybrid.classifier.cls_token.shape) == (1, 1, dim)
        assert not plain.classifies and hybrid.classifies


HYBRID = dict(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=4, num_heads=4, mlp_time_embed=True)


def test_the_hybrid_starts_from_the_same_weights_and_keeps_the_paper_forward():
    torch.manual_seed(0)
    plain = UViT(**HYBRID)
    torch.manual_seed(0)
    hybrid = UViT(**HYBRID, clf_classes=10)
    shared = plain.state_dict()
    assert all(torch.equal(hybrid.state_dict()[k], v) for k, v in shared.items())   # head created last
    with torch.no_grad():
        for p in hybrid.parameters():
            p.normal_(0, 0.2)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0.0, 499.5, 999.0])
    with torch.no_grad():
        ours = hybrid.eval()(x, t)
        ref = reference_forward(hybrid.state_dict(), x, t, None, patch_size=2, num_heads=4, depth=4,
                                mlp_time_embed=True, conv=True)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)   # the head is not part of the diffusion forward
    plain.load_state_dict({k: v for k, v in hybrid.state_dict().items() if k in shared})
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x, t), ours)


def test_classify_reads_the_class_token_without_the_time_or_label_input():
    torch.manual_seed(0)
    model = UViT(**dict(HYBRID, num_classes=10), clf_classes=5)
    x = torch.randn(4, 1, 8, 8)
    logits = model.classify(x)
    assert logits.shape == (4, 5)
    logits.square().sum().backward()
    assert all(p.grad is None for p in model.time_embed.parameters())
    assert model.label_emb.weight.grad is None
    assert model.decoder_pred.weight.grad is None and model.final_layer.weight.grad is None
    extras = model.extras
    assert model.pos_embed.grad[:, :extras].abs().sum() == 0          # the label and time positions are unused
    assert model.pos_embed.grad[:, extras:].abs().sum() > 0           # the patches keep theirs
    token = model.classifier.cls_token
    assert token.grad.abs().sum() > 0
    with torch.no_grad():
        before = model.classify(x)
        token.add_(torch.randn(token.shape))
        assert not torch.allclose(before, model.classify(x))
        torch.testing.assert_close(model.classify(x[:1]), model.classify(x)[:1])   # per image: no batch coupling


def test_a_uvit_without_the_head_refuses_to_classify():
    model = build_nnet(dict(name='uvit', img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=4))
    with pytest.raises(ValueError, match='no classification head'):
        model.classify(torch.randn(1, 1, 8, 8))
    hybrid = build_nnet(dict(name='uvit', img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=4,
                             clf_classes=3))
    assert hybrid.classify(torch.randn(2, 1, 8, 8)).shape == (2, 3)
