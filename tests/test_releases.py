"""The releases' networks read from a clone (libs/nets/releases.py): imported as packages of their own, built on our
tensors; what is missing is one line. Our own backbones stand in for the releases' files."""
import pytest
import torch

from libs.errors import UserError
from libs.nets.dit import DiT
from libs.nets.releases import load_release, release_network, share_weights

TINY_DIT = dict(name='dit', input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=2,
                num_classes=10, learn_sigma=True, attention_backend='math')


# a U-ViT with the release's constructor (no clf_classes, this suite's addition)
NARROW_UVIT = '''from libs.nets.uvit import UViT as Ours


class UViT(Ours):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12):
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         depth=depth, num_heads=num_heads)
'''


def clone(root, files: dict) -> str:
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return str(root)


def test_a_release_network_runs_on_our_tensors(tmp_path):
    release = clone(tmp_path / 'DiT', {'models.py': 'from libs.nets.dit import DiT  # noqa: F401\n'})
    torch.manual_seed(0)
    ours = DiT(**{k: v for k, v in TINY_DIT.items() if k != 'name'})
    theirs = release_network(TINY_DIT, release, ours)
    assert theirs is not ours and theirs.blocks[0].attn.backend == 'sdpa'  # built without our attention_backend
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert a is b, name
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 500.0]), torch.tensor([1, 7])
    ours.eval(), theirs.eval()
    torch.testing.assert_close(theirs(x, t, y), ours(x, t, y), rtol=1e-5, atol=1e-6)


def test_what_is_missing_is_one_line(tmp_path):
    uvit = clone(tmp_path / 'U-ViT', {'libs/uvit.py': NARROW_UVIT})
    with pytest.raises(UserError, match=r"no models.py there; for config.nnet.name='dit' it is a clone of "
                                        r'github.com/facebookresearch/DiT$'):
        load_release(uvit, 'dit')
    dit = clone(tmp_path / 'DiT', {'models.py': 'import timm_of_the_release  # noqa: F401\n'})
    with pytest.raises(UserError, match=r"cannot import .*DiT/models.py: No module named 'timm_of_the_release' "
                                        r'\(the release needs timm: pip install timm\)$'):
        load_release(dit, 'dit')
    with pytest.raises(UserError, match=r"config.nnet.name is 'unet'"):
        load_release(uvit, 'unet')
    with pytest.raises(UserError, match=r"the release's UViT has no clf_classes \(config.nnet\)"):
        release_network(dict(name='uvit', img_size=8, patch_size=2, embed_dim=32, depth=2, num_heads=2,
                             clf_classes=10), uvit, None)


def test_shared_weights_must_have_the_same_keys():
    small, large = torch.nn.Linear(2, 3), torch.nn.Linear(2, 4)
    with pytest.raises(UserError, match=r"target does not fit the model: 'weight' has shape \(3, 2\), the model "
                                        r'expects \(4, 2\)'):
        share_weights(small, large, 'target')
