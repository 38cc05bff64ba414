"""Regional compilation (libs/nets/compile.py): each repeated block compiled in place, the same numbers as eager, the
release's parameter names and checkpoint keys; the Trainer's and the harness's switches.

Compiled with dynamo's 'eager' backend (its graph capture and guards, without inductor's C++ build, which takes
half a minute on a CPU); what runs compiled code runs once, in one forked child, for all the tests."""
import json
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
from conftest import reset_accelerate
from forking import fork, wait
from test_training import tiny_config

# tiny_config()'s network, and its batches: 32 to train, 8 to sample its grid of 4 with guidance. Graphs compiled
# here serve the compiled training run below too (dynamo keys them by code, shapes and flags, not by module).
TINY_UVIT = dict(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2,
                 num_classes=11)


def compiled_run(out_dir: str) -> None:
    """What runs compiled code (in a forked child, see ``compiled``): a tiny U-ViT compiled block by block against an
    uncompiled copy with the same weights (outputs, gradients, the sampling forward), then a compiled training run
    whose checkpoint and grid land in ``out_dir``; the numbers go to ``out_dir/result.json``."""
    compile_module.BACKEND = 'eager'
    torch.manual_seed(0)
    nnet, eager = UViT(**TINY_UVIT), UViT(**TINY_UVIT)
    eager.load_state_dict(nnet.state_dict())
    result = dict(count=compile_regions(nnet), compiled=compiled_modules(nnet), eager=compiled_modules(eager),
                  keys=list(nnet.state_dict()) == list(eager.state_dict()),
                  names=[n for n, _ in nnet.named_parameters()] == [n for n, _ in eager.named_parameters()])
    x, t, y = torch.randn(32, 1, 8, 8), torch.rand(32) * 999, torch.randint(0, 11, (32,))
    outputs, grads = [], []
    for model in (nnet, eager):
        out = model(x, t, y)
        out.square().mean().backward()
        outputs.append(out.detach())
        grads.append([p.grad for p in model.parameters()])
    scale = outputs[1].abs().max().item()
    result.update(output_error=(outputs[0] - outputs[1]).abs().max().item() / scale,
                  grad_error=max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(*grads)))
    # the sampling forward (eval mode, no gradients, frozen weights as the EMA's) is a graph of its own
    with torch.no_grad():
        nnet.eval().requires_grad_(False)
        difference = nnet(x[:8], t[:8], y[:8]) - eager.eval()(x[:8], t[:8], y[:8])
    result['sample_error'] = difference.abs().max().item() / scale
    config = tiny_config(n_steps=2, save_interval=2, eval_interval=2, grid_size=4, compile='true')
    config.sample.compile = 'true'
    config.eval.train_n_samples = 0  # no score at the checkpoint: the grid is the sampling forward
    trainer = Trainer(config, os.path.join(out_dir, 'run'))
    result.update(trained=compiled_modules(trainer.backbone()), ema=compiled_modules(trainer.nnet_ema),
                  nnet=dict(config.nnet))
    trainer.fit()
    with open(os.path.join(out_dir, 'result.json'), 'w') as f:
        json.dump(result, f)


@pytest.fixture(scope='module')
def compiled(tmp_path_factory):
    """``compiled_run``'s numbers. It runs in a forked child: a backward through compiled code starts autograd's
    device threads, after which this process could no longer fork the training children of other tests."""
    out = tmp_path_factory.mktemp('compiled')
    assert wait(fork(lambda: compiled_run(str(out)), str(out / 'child.log')), timeout=300) == 0, \
        (out / 'child.log').read_text()[-3000:]
    with open(out / 'result.json') as f:
        return json.load(f), out


def test_each_block_is_compiled_in_place_with_the_release_keys(compiled):
    result, _ = compiled
    assert result['count'] == 3 and result['compiled'] == ['in_blocks.0', 'mid_block', 'out_blocks.0']
    assert result['eager'] == [] and result['keys'] and result['names']


def test_compiled_blocks_give_the_eager_outputs_and_gradients(compiled):
    result, _ = compiled
    assert result['output_error'] <= 1e-6 and result['sample_error'] <= 1e-6
    assert result['grad_error'] <= 1e-5


def test_a_compiled_training_run_saves_the_release_keys_and_draws_its_grid(compiled):
    result, out = compiled
    assert result['trained'] == result['ema'] == ['in_blocks.0', 'mid_block', 'out_blocks.0']
    assert result['nnet'] == dict(TINY_UVIT, name='uvit', in_chans=1, mlp_time_embed=False, qkv_bias=False)
    expected = list(UViT(**TINY_UVIT).state_dict())
    for name in ('nnet.pth', 'nnet_ema.pth'):
        saved = torch.load(out / 'run' / 'ckpts' / '2.ckpt' / name, weights_only=True)
        assert list(saved) == expected
        assert all(torch.isfinite(v).all() for v in saved.values())
    assert os.path.isfile(out / 'run' / 'samples' / '2.png')


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
def test_full_compilation_compiles_the_module_the_training_step_calls(tmp_path, monkeypatch):
    """train.compile='full' with REPA compiles the module around the backbone (its forward calls the backbone's
    forward_with_tokens, past a compiled backbone's __call__); regional compilation compiles the backbone's blocks.
    Nothing runs compiled here."""
    from test_repa import write_digits_encoder
    from test_training import repa_config
    monkeypatch.setattr(compile_module, 'BACKEND', 'eager')
    config = repa_config()
    config.repa.encoder_path = write_digits_encoder(tmp_path / 'digits_encoder.pt')
    config.train.compile = 'full'
    trainer = Trainer(config, str(tmp_path / 'full'))
    assert trainer.nnet is not trainer.backbone() and compiled_modules(trainer.nnet) == ['']
    reset_accelerate()
    config.train.compile = 'true'
    trainer = Trainer(config, str(tmp_path / 'regional'))
    assert compiled_modules(trainer.nnet) == ['nnet.in_blocks.0', 'nnet.mid_block', 'nnet.out_blocks.0']


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
