"""DDAE's backbones: the UNet (DDPM and DDPM++ configurations; parameter counts, names, forward, features) and the
noise-conditional WideResNet; and the feature protocol of the ViTs."""
import pytest
import torch

from libs.errors import UserError
from libs.nets import build_nnet, count_parameters
from libs.nets.genvit import GenViT
from libs.nets.unet import UNet, ResAttBlock
from libs.nets.uvit import UViT
from libs.nets.wideresnet import NoiseConditionalWideResNet

pytestmark = pytest.mark.usefixtures('one_thread')  # small tensors: threads only add overhead

DDPM = dict()  # the constructor defaults are DDAE's "DDPM" UNet
DDPMPP = dict(n_channels=128, ch_mults=(2, 2, 2), is_attn=(False, True, False), dropout=0.13, n_blocks=4,
              use_res_for_updown=True)
DIGITS = dict(image_shape=(1, 8, 8), n_channels=32, ch_mults=(1, 2), is_attn=(False, True), n_blocks=1)


def closed_form_unet_parameters(image_shape=(3, 32, 32), n_channels=128, ch_mults=(1, 2, 2, 2),
                                is_attn=(False, True, False, False), n_blocks=2, use_res_for_updown=False,
                                augment_dim=0, dropout=None):
    """The parameter count summed layer by layer from the architecture's description, without building modules."""
    c, n, t = image_shape[0], n_channels, 4 * n_channels

    def norm(w):
        return 2 * w

    def conv3(i, o):
        return 9 * i * o + o

    def linear(i, o, bias=True):
        return i * o + (o if bias else 0)

    def res(i, o):
        shortcut = linear(i, o) if i != o else 0   # a 1x1 convolution has a linear's count
        return norm(i) + conv3(i, o) + linear(t, o) + norm(o) + conv3(o, o) + shortcut

    def attention(w):
        return norm(w) + linear(w, 3 * w) + linear(w, w)

    def resample(w):
        return res(w, w) if use_res_for_updown else conv3(w, w)

    total = conv3(c, n) + linear(augment_dim, n, bias=False) + linear(n, t) + linear(t, t)
    width, skips = n, [n]
    for level, mult in enumerate(ch_mults):
        for _ in range(n_blocks):
            total += res(width, n * mult) + (attention(n * mult) if is_attn[level] else 0)
            width = n * mult
            skips.append(width)
        if level < len(ch_mults) - 1:
            total += resample(width)
            skips.append(width)
    total += 2 * res(width, width) + attention(width)
    for level in reversed(range(len(ch_mults))):
        for _ in range(n_blocks + 1):
            total += res(width + skips.pop(), n * ch_mults[level]) + (attention(n * ch_mults[level])
                                                                       if is_attn[level] else 0)
            width = n * ch_mults[level]
        if level > 0:
            total += resample(width)
    return total + norm(width) + conv3(width, c)


def closed_form_wrn_parameters(depth=28, widen_factor=2, num_classes=10, in_chans=3):
    """Trainable parameters of the noise-conditional WRN (the 128 fixed Fourier frequencies are a buffer)."""
    n, noise = (depth - 4) // 6, 512
    widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]

    def block(i, p):  # GroupNorm, bias-free conv, GroupNorm, bias-free conv, noise Linear
        return 2 * i + 9 * i * p + 2 * p + 9 * p * p + noise * p + p

    total = (256 * noise + noise) + (noise * noise + noise) + 9 * in_chans * 16
    width = 16
    for w in widths:
        total += block(width, w) + (n - 1) * block(w, w)
        width = w
    return total + 2 * width + width * num_classes + num_classes


def meta(cls, **kwargs):
    with torch.device('meta'):
        return cls(**kwargs)


def test_parameter_counts_of_the_papers_configurations():
    ddpm = meta(UNet, **DDPM)
    assert count_parameters(ddpm) == 35_746_307 == closed_form_unet_parameters(**DDPM)  # the number DDAE states
    for dropout in (0.1, 0.13):  # DDPM_ddpmpp.yaml and EDM_ddpmpp*.yaml
        assert count_parameters(meta(UNet, **dict(DDPMPP, dropout=dropout))) == 56_524_291
    assert closed_form_unet_parameters(**DDPMPP) == 56_524_291
    augmented = meta(UNet, **DDPMPP, augment_dim=9)
    assert count_parameters(augmented) == 56_525_443 == 56_524_291 + 9 * 128
    assert closed_form_unet_parameters(**DDPMPP, augment_dim=9) == 56_525_443
    assert tuple(augmented.state_dict()['time_emb.aug_emb.weight'].shape) == (128, 9)
    assert 'time_emb.aug_emb.bias' not in augmented.state_dict()


def test_parameter_count_of_the_noise_conditional_wrn_28_2():
    wrn = meta(NoiseConditionalWideResNet)
    assert count_parameters(wrn) == 2_310_746 == closed_form_wrn_parameters()
    # of which the noise conditioning (embedding MLP + one Linear per block) is 853,888; the plain WRN-28-2 1.46M
    conditioning = (256 * 512 + 512 + 512 * 512 + 512) + 4 * sum(512 * w + w for w in (32, 64, 128))
    assert conditioning == 853_888 and count_parameters(wrn) - conditioning == 1_456_858
    assert count_parameters(meta(NoiseConditionalWideResNet, widen_factor=10)) == closed_form_wrn_parameters(
        widen_factor=10) == 38_913_114
    assert 'time_emb.W' in wrn.state_dict() and tuple(wrn.time_emb.W.shape) == (128,)


def test_module_names_are_ddaes():
    keys = meta(UNet, **DDPM).state_dict()
    for key in ('image_proj.weight', 'time_emb.lin1.weight', 'time_emb.lin2.bias', 'down.0.res.norm1.weight',
                'down.0.res.conv1.weight', 'down.0.res.time_emb.1.weight', 'down.0.res.norm2.weight',
                'down.0.res.conv2.1.weight', 'down.2.conv.weight', 'down.3.res.shortcut.weight',
                'down.3.attn.norm.weight', 'down.3.attn.projection.weight', 'down.3.attn.output.weight',
                'middle.res1.conv1.weight', 'middle.attn.projection.weight', 'middle.res2.conv2.1.bias',
                'up.0.res.shortcut.weight', 'up.3.conv.weight', 'norm.weight', 'final.weight'):
        assert key in keys, key
    assert 'time_emb.aug_emb.weight' not in keys and 'down.0.res.shortcut.weight' not in keys
    keys = meta(UNet, **DDPMPP).state_dict()
    for key in ('down.4.op.conv1.weight', 'down.4.op.time_emb.1.weight', 'up.5.op.conv2.1.weight',
                'down.5.attn.projection.weight', 'down.0.res.shortcut.weight', 'up.0.res.shortcut.weight'):
        assert key in keys, key
    assert 'down.4.op.shortcut.weight' not in keys
    wrn = meta(NoiseConditionalWideResNet).state_dict()
    for key in ('time_emb_mlp.0.weight', 'time_emb_mlp.2.weight', 'init_conv.weight',
                'group1.blocks.0.init_bn.0.weight', 'group1.blocks.0.conv1.weight', 'group1.blocks.0.bn_2.0.bias',
                'group1.blocks.0.conv2.weight', 'group3.blocks.3.time_emb.1.weight', 'pre_pool_bn.0.weight',
                'final_linear.weight'):
        assert key in wrn, key
    assert 'init_conv.bias' not in wrn and 'group1.blocks.0.conv1.bias' not in wrn


def digits_unet(seed=0, **kwargs):
    torch.manual_seed(seed)
    return UNet(**dict(DIGITS, **kwargs))


@pytest.mark.parametrize('use_res_for_updown', [False, True])
def test_small_unet_forward_and_gradient(use_res_for_updown):
    net = digits_unet(use_res_for_updown=use_res_for_updown)
    assert net.input_shape == (1, 8, 8) and net.condition == 'none' and not net.classifies
    x = torch.randn(3, 1, 8, 8)
    out = net(x, torch.tensor([0.01, 0.5, 1.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    assert net.image_proj.weight.grad is not None and net.image_proj.weight.grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():  # a 0-d tensor or a python number is the time of the whole batch
        same = net(x, torch.full((3,), 0.5))
        assert torch.equal(net(x, torch.tensor(0.5)), same) and torch.equal(net(x, 0.5), same)


def test_build_nnet_knows_the_unet():
    with torch.device('meta'):
        net = build_nnet(dict(name='unet', **DIGITS))
    assert isinstance(net, UNet) and net.output == 'image'


def block_outputs(net, blocks, *args):
    """The outputs of ``blocks`` in one forward pass ``net(*args)``, captured by hooks that are removed after."""
    outputs, handles = [], [blk.register_forward_hook(lambda m, i, o: outputs.append(o)) for blk in blocks]
    try:
        with torch.no_grad():
            net(*args)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


@pytest.mark.parametrize('use_res_for_updown', [False, True])
def test_features_are_the_pooled_outputs_of_the_up_path_blocks(use_res_for_updown):
    net = digits_unet(use_res_for_updown=use_res_for_updown).eval()
    names = net.feature_layers()
    assert names == ['out_1', 'out_2', 'out_3', 'out_4']  # 2 resolutions x (n_blocks + 1), upsamplers not counted
    blocks = [m for m in net.up if isinstance(m, ResAttBlock)]
    assert len(blocks) == 4 and len(net.up) == 5
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 0.9])
    captured = dict(zip(names, block_outputs(net, blocks, x, t)))
    with torch.no_grad():
        features = net.features(x, t, names)
        deepest = net.features(x, t, ['out_2'])
    assert list(features) == names
    for name, width in zip(names, (64, 64, 32, 32)):
        assert features[name].shape == (2, width) and features[name].dtype == torch.float32
        assert torch.allclose(features[name], captured[name].mean(dim=(2, 3)), atol=1e-6, rtol=0)
    assert list(deepest) == ['out_2'] and torch.equal(deepest['out_2'], features['out_2'])
    assert not net._forward_hooks and not any(m._forward_hooks for m in net.modules())


def test_an_unknown_feature_layer_is_one_line_listing_the_valid_names():
    with torch.device('meta'):
        net = UNet(**DIGITS)
    with pytest.raises(UserError, match=r"no feature layer 'out_9'; valid names: out_1, out_2, out_3, out_4$"):
        net.features(torch.zeros(1, 1, 8, 8), torch.zeros(1), ['out_1', 'out_9'])


def test_augment_labels_are_optional_and_condition_the_output():
    net = digits_unet(use_res_for_updown=True, augment_dim=9).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.2, 0.7])
    labels = torch.randn(2, 9)
    with torch.no_grad():
        plain = net(x, t)
        assert torch.equal(net(x, t, augment_labels=None), plain)
        augmented = net(x, t, augment_labels=labels)
        assert augmented.shape == x.shape and not torch.allclose(augmented, plain)
        # all-zero labels (no augmentation applied) embed to zero, the same as leaving them out
        assert torch.allclose(net(x, t, torch.zeros(2, 9)), plain, atol=1e-6)
        features = net.features(x, t, ['out_3'], augment_labels=labels)['out_3']
        assert not torch.allclose(features, net.features(x, t, ['out_3'])['out_3'])


def test_a_saved_state_dict_loads_strictly_and_gives_the_same_outputs(tmp_path):
    source = digits_unet(seed=1, use_res_for_updown=True).eval()
    torch.save(source.state_dict(), tmp_path / 'unet.pth')
    target = digits_unet(seed=2, use_res_for_updown=True).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.1, 0.6])
    with torch.no_grad():
        assert not torch.allclose(source(x, t), target(x, t))
        target.load_state_dict(torch.load(tmp_path / 'unet.pth', weights_only=True), strict=True)
        assert torch.equal(source(x, t), target(x, t))
    keys = set(target.state_dict())
    for key in ('image_proj.weight', 'time_emb.lin1.weight', 'down.0.res.conv1.weight',
                'middle.attn.projection.weight', 'up.0.res.shortcut.weight', 'final.weight', 'down.1.op.conv1.weight',
                'up.2.op.conv1.weight'):
        assert key in keys, key


def test_noise_conditional_wrn_on_small_single_channel_images():
    torch.manual_seed(0)
    wrn = NoiseConditionalWideResNet(depth=28, widen_factor=2, num_classes=10, in_chans=1).eval()
    x = torch.randn(2, 1, 8, 8)
    sigma = torch.tensor([0.05, 2.0])
    with torch.no_grad():
        logits = wrn(x, sigma)
        assert logits.shape == (2, 10) and torch.isfinite(logits).all()
        # each image is standardised first: a positive rescaling of the input changes nothing
        assert torch.allclose(wrn(3.0 * x + 0.5, sigma), logits, atol=1e-4)
        # the blocks are told the noise level
        assert not torch.allclose(wrn(x, torch.tensor([5.0, 0.01])), logits, atol=1e-3)
        assert torch.equal(wrn(x, 0.3), wrn(x, torch.full((2,), 0.3)))




@pytest.mark.parametrize('num_classes', [-1, 11])
def test_uvit_features_are_block_outputs_averaged_over_the_patch_tokens(num_classes):
    torch.manual_seed(0)
    net = UViT(img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=4, num_heads=2,
               num_classes=num_classes).eval()
    names = net.feature_layers()
    assert names == ['block_0', 'block_1', 'block_2', 'block_3', 'block_4']  # 2 in, the mid, 2 out
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 500.0])
    y = torch.tensor([3, 10]) if num_classes > 0 else None
    outputs = block_outputs(net, [*net.in_blocks, net.mid_block, *net.out_blocks], x, t, y)
    extras = 2 if num_classes > 0 else 1  # [label?, time] come before the 16 patch tokens
    with torch.no_grad():
        features = net.features(x, t, names, y=y)
        assert list(net.features(x, t, ['block_1'], y=y)) == ['block_1']
    assert list(features) == names
    for name, output in zip(names, outputs):
        assert output.shape == (2, extras + 16, 16)
        assert features[name].shape == (2, 16) and features[name].dtype == torch.float32
        assert torch.allclose(features[name], output[:, extras:].mean(dim=1), atol=1e-6, rtol=0)
        assert not torch.allclose(features[name], output.mean(dim=1))
    with pytest.raises(UserError, match='valid names: block_0, block_1, block_2, block_3, block_4'):
        net.features(x, t, ['out_1'], y=y)


def test_genvit_features_are_block_outputs_averaged_over_the_patch_tokens():
    torch.manual_seed(0)
    net = GenViT(img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=3, num_heads=2).eval()
    names = net.feature_layers()
    assert names == ['block_0', 'block_1', 'block_2']
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 500.0])
    outputs = block_outputs(net, net.blocks, x, t)
    with torch.no_grad():
        features = net.features(x, t, names)
        only = net.features(x, t, 'block_1')
    assert list(features) == names and list(only) == ['block_1']
    assert torch.equal(only['block_1'], features['block_1'])
    for name, output in zip(names, outputs):
        assert features[name].shape == (2, 16) and features[name].dtype == torch.float32
        assert torch.allclose(features[name], output[:, 1:].mean(dim=1), atol=1e-6, rtol=0)  # class token left out
    with pytest.raises(UserError, match='GenViT has no feature layer .block_3.; valid names: block_0, block_1, '
                                        'block_2'):
        net.features(x, t, ['block_3'])
