"""DiT (libs/nets/dit.py): the release's twelve configurations and parameter names, adaLN-Zero, fixed positions.

Parameter counts are checked against a closed-form sum over the release's layers; the XL configs on the meta device.
"""
import numpy as np
import pytest
import torch

from libs.dit import DiT, DiT_models
from libs.diffusion.gaussian import GaussianFramework
from libs.diffusion.schedules import DiscreteSchedule
from libs.errors import UserError
from libs.nets import build_nnet
from libs.nets.dit import sincos_2d

SIZES = {'S': (12, 384, 6), 'B': (12, 768, 12), 'L': (24, 1024, 16), 'XL': (28, 1152, 16)}


def expected_parameters(depth, hidden, patch, input_size=32, in_channels=4, classes=1000, learn_sigma=True):
    """The release's layers: patch projection, time MLP (256 -> D -> D), label table (+1 "no class" row), fixed
    positions (counted: a Parameter), per block qkv + proj + MLP 4D + adaLN 6D, final adaLN 2D + linear."""
    out = in_channels * (2 if learn_sigma else 1)
    linear = lambda i, o: i * o + o  # noqa: E731
    block = linear(hidden, 3 * hidden) + linear(hidden, hidden) + linear(hidden, 4 * hidden) + \
        linear(4 * hidden, hidden) + linear(hidden, 6 * hidden)
    return (in_channels * patch * patch * hidden + hidden + linear(256, hidden) + linear(hidden, hidden)
            + (classes + 1) * hidden + (input_size // patch) ** 2 * hidden + depth * block
            + linear(hidden, 2 * hidden) + linear(hidden, patch * patch * out))


@pytest.mark.parametrize('name', sorted(DiT_models))
def test_the_twelve_configurations_have_the_releases_parameter_counts(name):
    size, patch = name[len('DiT-'):].split('/')
    depth, hidden, heads = SIZES[size]
    with torch.device('meta'):
        net = DiT_models[name](input_size=32, num_classes=1000)
    assert sum(p.numel() for p in net.parameters()) == expected_parameters(depth, hidden, int(patch))
    assert (len(net.blocks), net.num_heads, net.patch_size) == (depth, heads, int(patch))


def test_dit_xl_2_keys_and_shapes_are_the_releases():
    with torch.device('meta'):
        net = DiT_models['DiT-XL/2'](input_size=32, num_classes=1000)
        at_512 = DiT_models['DiT-XL/2'](input_size=64, num_classes=1000)
    assert sum(p.numel() for p in net.parameters()) == 675_129_632      # the release's printed count at 256 px
    state = net.state_dict()
    shapes = {
        'pos_embed': (1, 256, 1152), 'x_embedder.proj.weight': (1152, 4, 2, 2), 'x_embedder.proj.bias': (1152,),
        't_embedder.mlp.0.weight': (1152, 256), 't_embedder.mlp.2.weight': (1152, 1152),
        'y_embedder.embedding_table.weight': (1001, 1152), 'blocks.0.attn.qkv.weight': (3456, 1152),
        'blocks.0.attn.qkv.bias': (3456,), 'blocks.0.attn.proj.weight': (1152, 1152),
        'blocks.0.mlp.fc1.weight': (4608, 1152), 'blocks.27.mlp.fc2.weight': (1152, 4608),
        'blocks.27.adaLN_modulation.1.weight': (6912, 1152), 'final_layer.linear.weight': (32, 1152),
        'final_layer.adaLN_modulation.1.weight': (2304, 1152),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert len(state) == 8 + 28 * 10 + 4                           # no LayerNorm weights (elementwise_affine=False)
    assert not any('norm' in key for key in state)
    assert tuple(at_512.state_dict()['pos_embed'].shape) == (1, 1024, 1152)
    assert sum(p.numel() for p in at_512.parameters()) == 675_129_632 + 768 * 1152


def small_dit(**kwargs):
    torch.manual_seed(0)
    options = dict(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=2, num_classes=10)
    options.update(kwargs)
    return DiT(**options)


def test_adaln_zero_makes_a_fresh_block_the_identity_and_a_fresh_dit_output_zero():
    block = small_dit().blocks[0]                       # as DiT initialises it: adaLN-Zero
    torch.nn.init.normal_(block.attn.qkv.weight)       # whatever the branches compute, the zero gates remove it
    x, c = torch.randn(3, 5, 32), torch.randn(3, 32)
    assert torch.equal(block(x, c), x)
    net = small_dit().eval()
    out = net(torch.randn(2, 1, 8, 8), torch.tensor([3.0, 900.0]), torch.tensor([1, 7]))
    assert out.shape == (2, 2, 8, 8) and torch.equal(out, torch.zeros_like(out))   # learn_sigma: 2C channels


def layer_norm(x, eps=1e-6):
    """LayerNorm over the last axis without parameters (DiT's norm1, norm2 and norm_final)."""
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt((x - mean).square().mean(-1, keepdim=True) + eps)


def adaln(module, c, chunks: int) -> list:
    """The paper's modulation: Linear(SiLU(c)) split into ``chunks`` (B, 1, D) parts, in the release's order."""
    linear = module.adaLN_modulation[-1]
    out = torch.nn.functional.silu(c) @ linear.weight.T + linear.bias
    return [part[:, None] for part in out.chunk(chunks, dim=1)]


def randomise_modulations(net) -> None:
    """Non-zero weights in every block and the final layer, the adaLN modulations included (adaLN-Zero starts them at
    zero, where shift, scale and gate cannot be told apart)."""
    torch.manual_seed(1)
    for module in [*net.blocks, net.final_layer]:
        for parameter in module.parameters():
            torch.nn.init.normal_(parameter, std=0.3)


def test_a_block_and_the_final_layer_follow_the_papers_adaln_with_non_zero_modulations():
    """x + gate_msa attn(LN(x) (1 + scale_msa) + shift_msa), then the same for the MLP, with (shift, scale, gate) x 2
    in the release's order; the final layer is Linear(LN(x) (1 + scale) + shift) with (shift, scale). Attention and
    MLP are the block's own (tested in test_attention.py): what is checked here is where each modulation goes."""
    net = small_dit().eval()
    randomise_modulations(net)
    block, final = net.blocks[0], net.final_layer
    x, c = torch.randn(3, 5, 32), torch.randn(3, 32)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = adaln(block, c, 6)
    h = x + gate_msa * block.attn(layer_norm(x) * (1 + scale_msa) + shift_msa)
    expected = h + gate_mlp * block.mlp(layer_norm(h) * (1 + scale_mlp) + shift_mlp)
    shift, scale = adaln(final, c, 2)
    expected_final = (layer_norm(x) * (1 + scale) + shift) @ final.linear.weight.T + final.linear.bias
    with torch.no_grad():
        for ours, theirs in ((block(x, c), expected), (final(x, c), expected_final)):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5 * theirs.abs().max().item())


def test_positions_are_fixed_two_dimensional_sin_cos():
    table = sincos_2d(8, 4)                             # 16 positions: columns in the first half, rows in the second
    assert table.shape == (16, 8)
    np.testing.assert_allclose(table[0], [0, 0, 1, 1, 0, 0, 1, 1], atol=1e-12)    # position (0, 0): sin 0, cos 0
    col, row = 3, 2
    expected_col = [np.sin(col), np.sin(col / 100), np.cos(col), np.cos(col / 100)]
    expected_row = [np.sin(row), np.sin(row / 100), np.cos(row), np.cos(row / 100)]
    np.testing.assert_allclose(table[row * 4 + col], expected_col + expected_row, rtol=1e-6)
    net = small_dit()
    assert not net.pos_embed.requires_grad
    torch.testing.assert_close(net.pos_embed[0], torch.from_numpy(sincos_2d(32, 4)).float())


def test_labels_time_and_strict_reload():
    net = small_dit(learn_sigma=False)
    for parameter in net.parameters():                  # leave adaLN-Zero so the conditioning shows
        if parameter.requires_grad:
            torch.nn.init.normal_(parameter, std=0.1)
    net.eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5.0, 500.0])
    a = net(x, t, torch.tensor([1, 2]))
    assert a.shape == (2, 1, 8, 8)
    assert not torch.allclose(a, net(x, t, torch.tensor([3, 2])))
    assert not torch.allclose(a, net(x, t + 100, torch.tensor([1, 2])))
    null = net(x, t, torch.tensor([10, 10]))            # the extra "no class" row
    assert torch.isfinite(null).all() and net.num_classes == 11
    copy = small_dit(learn_sigma=False)
    copy.load_state_dict(net.state_dict(), strict=True)
    assert torch.equal(copy.eval()(x, t, torch.tensor([1, 2])), a)
    # training mode drops labels to the "no class" row at class_dropout_prob, as the release
    net.train()
    torch.manual_seed(0)
    dropped = net.y_embedder(torch.zeros(4000, dtype=torch.long), True)
    share = (dropped == net.y_embedder.embedding_table.weight[10]).all(1).double().mean().item()
    assert share == pytest.approx(0.1, abs=0.02)
    assert small_dit(class_dropout_prob=0.0).num_classes == 10


def test_registry_and_the_frameworks_check():
    net = build_nnet(dict(name='dit', input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=1,
                          num_heads=2, num_classes=10, learn_sigma=False))
    assert isinstance(net, DiT) and net.input_shape == (1, 8, 8) and net.condition == 'labels'
    framework = GaussianFramework(DiscreteSchedule.linear())
    framework.check_backbone(net)
    with pytest.raises(UserError, match="declares 'image\\+variance'"):
        framework.check_backbone(small_dit())
