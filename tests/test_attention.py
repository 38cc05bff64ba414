"""Attention backends agree with each other, and xformers falls back to SDPA with one warning."""
import logging

import pytest
import torch

from libs.nets import attention as attention_module
from libs.nets.attention import ATTENTION_BACKENDS, attention, available_backends, check_backend
from libs.errors import UserError
from libs.uvit import UViT


def test_available_backends_agree_with_the_math_reference():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 17, 16) for _ in range(3))
    reference = attention(q, k, v, 'math')
    # the reference itself against a hand-written softmax
    manual = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1) @ v
    torch.testing.assert_close(reference, manual)
    for backend in available_backends():
        torch.testing.assert_close(attention(q, k, v, backend), reference, rtol=1e-5, atol=1e-6)


def test_custom_scale_is_used_by_every_backend():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    outs = [attention(q, k, v, b, scale=0.05) for b in available_backends()]
    assert not torch.allclose(outs[0], attention(q, k, v, 'math'))
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-5, atol=1e-6)


def test_uvit_output_does_not_depend_on_the_backend():
    torch.manual_seed(0)
    kwargs = dict(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=4, num_heads=4, num_classes=10)
    models = {b: UViT(attention_backend=b, **kwargs).eval() for b in ATTENTION_BACKENDS}
    state = models['sdpa'].state_dict()
    x, t, y = torch.randn(3, 1, 8, 8), torch.rand(3) * 999, torch.randint(0, 10, (3,))
    with torch.no_grad():
        outs = {}
        for b, m in models.items():
            m.load_state_dict(state)
            outs[b] = m(x, t, y)
    for b in outs:
        torch.testing.assert_close(outs[b], outs['math'], rtol=1e-4, atol=1e-5)


def test_missing_xformers_falls_back_to_sdpa_with_one_warning(monkeypatch, caplog):
    import builtins
    real_import = builtins.__import__

    def no_xformers(name, *args, **kwargs):
        if name.startswith('xformers'):
            raise ImportError('No module named xformers')
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', no_xformers)
    monkeypatch.setattr(attention_module, '_xformers_checked', False)
    monkeypatch.setattr(attention_module, '_xformers_ops', None)
    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    with caplog.at_level(logging.WARNING, logger='libs.nets.attention'):
        out1 = attention(q, k, v, 'xformers')
        out2 = attention(q, k, v, 'xformers')
    warnings = [r for r in caplog.records if 'xformers' in r.getMessage()]
    assert len(warnings) == 1 and "using 'sdpa' instead" in warnings[0].getMessage()
    torch.testing.assert_close(out1, attention(q, k, v, 'sdpa'))
    torch.testing.assert_close(out2, out1)
    assert 'xformers' not in available_backends()


def test_unknown_backend_is_a_user_error():
    with pytest.raises(UserError, match="unknown attention backend 'flash3'; known: sdpa, xformers, math"):
        check_backend('flash3')
    with pytest.raises(UserError):
        UViT(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=4, attention_backend='flash3')
