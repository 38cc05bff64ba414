"""Regional compilation (libs/nets/compile.py): each repeated block compiled in place, the same numbers as eager, the
release's parameter names and checkpoint keys; the Trainer's and the harness's switches.

Compiled with dynamo's 'eager' backend (its graph capture and guards, without inductor's C++ build, which takes
half a minute on a CPU); one compiled network is shared by the tests."""
import os

import pytest
import torch

from libs.config import compile_mode, device_switch
from libs.errors import UserError
from libs.nets import compile as compile_module
from libs.nets.compile import compile_regions, compiled_modules
from libs.nets.dit import DiT
from libs.nets.genvit import GenViT
from libs.nets.uvit import UViT
from libs.training.loop import Trainer
from test_training import tiny_config

# tiny_config()'s network, and its batches: 32 to train, 8 to sample its grid of 4 with guidance. Graphs compiled
# here serve the compiled training run below too (dynamo keys them by code, shapes and flags, not by module).
TINY_UVIT = dict(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2,
                 num_classes=11)


@pytest.fixture(scope='module')
def compiled_pair():
    """(a tiny U-ViT compiled region by region, an uncompiled copy with the same weights)."""
    torch.manual_seed(0)
    nnet = UViT(**TINY_UVIT)
    eager = UViT(**TINY_UVIT)
    eager.load_state_dict(nnet.state_dict())
    assert compile_regions(nnet, backend='eager') == 3
    return nnet, eager


def test_each_block_is_compiled_in_place_with_the_release_keys(compiled_pair):
    nnet, eager = compiled_pair
    assert compiled_modules(nnet) == ['in_blocks.0', 'mid_block', 'out_blocks.0']
    assert compiled_modules(eager) == []
    assert list(nnet.state_dict()) == list(eager.state_dict())
    assert [name for name, _ in nnet.named_parameters()] == [name for name, _ in eager.named_parameters()]
    assert not any('_orig_mod' in key for key in nnet.state_dict())


def test_compiled_blocks_give_the_eager_outputs_and_gradients(compiled_pair):
    nnet, eager = compiled_pair
    torch.manual_seed(1)
    x, t, y = torch.randn(32, 1, 8, 8), torch.rand(32) * 999, torch.randint(0, 11, (32,))
    outputs, grads = [], []
    for model in (nnet, eager):
        model.zero_grad(set_to_none=True)
        out = model(x, t, y)
        out.square().mean().backward()
        outputs.append(out.detach())
        grads.append([p.grad for p in model.parameters()])
    scale = outputs[1].abs().max()
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-6 * scale)
    for compiled_grad, eager_grad in zip(*grads):
        torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-5, atol=1e-6 * eager_grad.abs().max())
    # the sampling forward (eval mode, no gradients, frozen weights as the EMA's) is a graph of its own
    with torch.no_grad():
        nnet.eval().requires_grad_(False)
        torch.testing.assert_close(nnet(x[:8], t[:8], y[:8]), eager.eval()(x[:8], t[:8], y[:8]), rtol=0,
                                   atol=1e-6 * scale)
    nnet.train().requires_grad_(True), eager.train()


def test_dit_and_genvit_name_their_blocks_and_a_backbone_without_blocks_is_compiled_whole(monkeypatch):
    dit = DiT(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=3, num_heads=2, num_classes=10)
    assert dit.repeated_blocks() == list(dit.blocks)
    genvit = GenViT(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=2)
    assert genvit.repeated_blocks() == list(genvit.blocks)
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert compile_regions(plain, backend='eager') == 1 and compiled_modules(plain) == ['']
    monkeypatch.setattr(torch, '__version__', '2.4.1')  # a graph per block: the whole network instead
    assert compile_regions(genvit, backend='eager') == 1 and compiled_modules(genvit) == ['']
    monkeypatch.delattr(torch.nn.Module, 'compile')  # torch < 2.2: a warning, nothing compiled
    assert compile_regions(torch.nn.Linear(2, 2)) == 0


@pytest.mark.parametrize('value, cuda, cpu', [('auto', True, False), (True, True, True), ('False', False, False),
                                              ('off', False, False), ('1', True, True), (False, False, False)])
def test_device_switches(value, cuda, cpu):
    assert device_switch(value, 'train.compile', 'cuda') is cuda
    assert device_switch(value, 'train.compile', 'cpu') is cpu


def test_compile_modes_and_a_bad_switch_is_one_line():
    assert compile_mode('auto', 'train.compile', 'cuda') == 'regional' and compile_mode('auto', 'x', 'cpu') == ''
    assert compile_mode('full', 'train.compile', 'cpu') == 'full' and compile_mode('False', 'x', 'cuda') == ''
    with pytest.raises(UserError, match=r"config.train.fused_optimizer must be 'auto', True or False, got 'often'"):
        device_switch('often', 'train.fused_optimizer', 'cpu')
    with pytest.raises(UserError, match=r"config.train.compile must be 'auto', True, False or 'full', got 'often'"):
        compile_mode('often', 'train.compile', 'cpu')


@pytest.mark.usefixtures('fresh_accelerate_state')
def test_a_compiled_training_run_saves_the_release_keys_and_draws_its_grid(tmp_path, monkeypatch):
    monkeypatch.setattr(compile_module, 'BACKEND', 'eager')
    config = tiny_config(n_steps=2, save_interval=2, eval_interval=2, grid_size=4, compile='true')
    config.sample.compile = 'true'
    config.eval.train_n_samples = 0  # no score at the checkpoint: the grid is the sampling forward
    assert dict(config.nnet) == dict(TINY_UVIT, name='uvit', in_chans=1, mlp_time_embed=False, qkv_bias=False)
    trainer = Trainer(config, str(tmp_path))
    assert compiled_modules(trainer.backbone()) == ['in_blocks.0', 'mid_block', 'out_blocks.0']
    assert compiled_modules(trainer.nnet_ema) == ['in_blocks.0', 'mid_block', 'out_blocks.0']
    trainer.fit()
    expected = list(UViT(**{k: v for k, v in config.nnet.items() if k != 'name'}).state_dict())
    for name in ('nnet.pth', 'nnet_ema.pth'):
        saved = torch.load(tmp_path / 'ckpts' / '2.ckpt' / name, weights_only=True)
        assert list(saved) == expected
        assert all(torch.isfinite(v).all() for v in saved.values())
    assert os.path.isfile(tmp_path / 'samples' / '2.png')


@pytest.mark.usefixtures('fresh_accelerate_state')
def test_the_evaluation_compiles_the_sampling_network_only_for_sampling_modes(tmp_path, monkeypatch):
    from libs.evaluation.harness import EvalRun
    monkeypatch.setattr(compile_module, 'BACKEND', 'eager')
    config = tiny_config()
    torch.save(UViT(**TINY_UVIT).state_dict(), tmp_path / 'nnet_ema.pth')
    config.sample.compile = 'true'
    assert compiled_modules(EvalRun.load(config, str(tmp_path / 'nnet_ema.pth'), sampling=True).nnet) == [
        'in_blocks.0', 'mid_block', 'out_blocks.0']
    assert compiled_modules(EvalRun.load(config, str(tmp_path / 'nnet_ema.pth')).nnet) == []  # e.g. --eval=nll
    config.sample.compile = 'auto'  # on a CPU: off
    assert compiled_modules(EvalRun.load(config, str(tmp_path / 'nnet_ema.pth'), sampling=True).nnet) == (
        ['in_blocks.0', 'mid_block', 'out_blocks.0'] if torch.cuda.is_available() else [])
