"""The optimiser's kernels and the EMA (libs/training/optim.py): fused and foreach AdamW give plain AdamW's update to
fp32 rounding, a resumed optimiser keeps its own kernel, and the multi-tensor EMA gives the per-tensor one's bits."""
import copy

import pytest
import torch

from libs.config import d
from libs.training.optim import build_optimizer, fused_supported, kernel_choice, load_optimizer_state, update_ema

ADAMW = d(name='adamw', lr=1e-2, weight_decay=0.03, betas=(0.9, 0.999), eps=1e-8)


def net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))


def train(model, optimizer, steps: int, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 6, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        optimizer.step()


@pytest.mark.parametrize('kernel', ['fused', 'foreach'])
def test_fused_and_foreach_adamw_give_the_plain_update(kernel, monkeypatch):
    if kernel == 'foreach':  # a device without fused kernels: the foreach kernel instead
        monkeypatch.setattr('libs.training.optim.fused_supported', lambda device: False)
    elif not fused_supported('cpu'):
        pytest.skip(f'torch {torch.__version__} has no fused AdamW for the CPU')
    plain_net, fast_net = net(), net()
    plain = build_optimizer(ADAMW, plain_net.parameters())
    fast = build_optimizer(ADAMW, fast_net.parameters(), fused=True, device='cpu')
    assert fast.param_groups[0][kernel] is True and not plain.param_groups[0]['fused']
    train(plain_net, plain, 5)
    train(fast_net, fast, 5)
    assert not torch.equal(plain_net[0].weight, net()[0].weight)  # it trained
    for p, q in zip(plain_net.parameters(), fast_net.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-6 * p.abs().max().item())


def test_kernel_choice_follows_what_the_optimiser_has():
    assert kernel_choice(torch.optim.AdamW, False, 'cpu') == {}
    assert kernel_choice(torch.optim.AdamW, True, 'cpu') == ({'fused': True} if fused_supported('cpu')
                                                              else {'foreach': True})
    assert fused_supported('cuda')


def test_a_resumed_optimiser_keeps_its_own_kernel_and_continues_exactly():
    """A checkpoint of a fused run resumes in a plain one (a GPU run continued on a CPU) and the other way round:
    the kernel is the resuming run's, and the next steps are those of an uninterrupted run."""
    kinds = [dict(fused=True), dict(fused=False)] if fused_supported('cpu') else [dict(fused=False)]
    for writer in kinds:
        for reader in kinds:
            first = net()
            optimizer = build_optimizer(ADAMW, first.parameters(), **writer)
            train(first, optimizer, 3)
            state = copy.deepcopy(optimizer.state_dict())  # as read from a checkpoint: tensors of its own
            resumed = net(5)
            resumed.load_state_dict(first.state_dict())
            again = build_optimizer(ADAMW, resumed.parameters(), **reader)
            load_optimizer_state(again, state)
            assert bool(again.param_groups[0]['fused']) == reader['fused']
            for group_state in again.state.values():
                assert group_state['step'].item() == 3 and group_state['step'].device.type == 'cpu'
            train(first, optimizer, 2, seed=7)
            train(resumed, again, 2, seed=7)
            for p, q in zip(first.parameters(), resumed.parameters()):
                torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)


def test_multi_tensor_ema_gives_the_per_tensor_bits():
    model, ema_loop, ema_foreach = net(0), net(1), net(1)
    model.register_buffer('count', torch.tensor([3.0]))
    for ema in (ema_loop, ema_foreach):
        ema.register_buffer('count', torch.tensor([0.0]))
    for rate in (0.9999, 0.9, 0.3):  # lerp's two branches: weight 1 - rate below and above 1/2
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        before = {k: v.clone() for k, v in ema_foreach.state_dict().items()}
        update_ema(ema_loop, model, rate)
        update_ema(ema_foreach, model, rate, foreach=True)
        for (name, a), b in zip(ema_loop.state_dict().items(), ema_foreach.state_dict().values()):
            assert torch.equal(a, b), name
        for name, value in model.state_dict().items():
            expected = value if name == 'count' else rate * before[name] + (1 - rate) * value
            torch.testing.assert_close(ema_foreach.state_dict()[name], expected, rtol=1e-6, atol=1e-7)
