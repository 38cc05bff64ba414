"""Representation alignment (libs/training/repa.py), the backbones' image tokens (libs/nets/protocol.py) and the frozen
encoders (libs/latent/vision_encoders.py, libs/latent/digits_encoder.py): the loss by hand, the tokens of block k
from the training forward, gradients, one-line errors, tiny DINOv2 / CLIP folders written here, and the digits'
encoder read from a cache written here (never trained in a test)."""
import os

import pytest
import torch
import torch.nn.functional as F

from libs.config import d, load_config_file
from libs.diffusion.gaussian import GaussianFramework
from libs.diffusion.schedules import VPSDE
from libs.errors import UserError
from libs.fileio import recipe_hash
from libs.latent import digits_encoder
from libs.latent.vision_encoders import load_encoder
from libs.nets import build_nnet
from libs.nets.protocol import check_token_depth
from libs.training.objectives import build_objective
from libs.training.repa import AlignedNet, Repa, alignment_loss, projector_mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)   # as published (DINOv2, timm)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # OpenAI CLIP
TINY_VIT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, patch_size=2)


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        call(*args, **kwargs)
    assert '\n' not in str(info.value)
    return str(info.value)


def write_digits_encoder(path, seed: int = 0) -> str:
    """A randomly initialised digits encoder saved as the cache of the current recipe (so it is read, not trained)."""
    torch.manual_seed(seed)
    state = digits_encoder.DigitsEncoder().state_dict()
    torch.save({'recipe_hash': recipe_hash(digits_encoder.RECIPE), 'recipe': 'test', 'state_dict': state}, path)
    return str(path)


@pytest.fixture(scope='module')
def encoder_file(tmp_path_factory):
    return write_digits_encoder(tmp_path_factory.mktemp('repa') / 'digits_encoder.pt')


def test_the_loss_is_minus_the_mean_cosine_over_tokens():
    projected = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[3.0, 4.0], [1.0, 1.0]]])
    target = torch.tensor([[[1.0, 1.0], [0.0, -5.0]], [[4.0, 3.0], [-2.0, -2.0]]])
    # sample 0: cos 1/sqrt(2) and -1; sample 1: cos 24/25 and -1; the loss is minus their means
    expected = torch.tensor([-(2 ** -0.5 - 1) / 2, -(24 / 25 - 1) / 2])
    assert torch.allclose(alignment_loss(projected, target), expected, atol=1e-6)
    assert torch.allclose(alignment_loss(7 * projected, target / 3), expected, atol=1e-6)   # scale-free
    with pytest.raises(ValueError, match='differ'):
        alignment_loss(projected, target[:, :1])


def test_the_projector_is_three_linears_with_silu_and_xavier_weights():
    torch.manual_seed(0)
    p = projector_mlp(8, 32, 5)
    assert [type(m).__name__ for m in p] == ['Linear', 'SiLU', 'Linear', 'SiLU', 'Linear']
    assert [tuple(m.weight.shape) for m in p[::2]] == [(32, 8), (32, 32), (5, 32)]
    assert all(torch.count_nonzero(m.bias) == 0 for m in p[::2])
    bound = (6 / (32 + 32)) ** 0.5   # Xavier-uniform of the middle layer
    assert p[2].weight.abs().max() <= bound and p[2].weight.abs().max() > 0.9 * bound
    x = torch.randn(2, 3, 8)
    assert torch.allclose(p(x), p[4](F.silu(p[2](F.silu(p[0](x))))))


def execution_order(nnet):
    """The backbone's transformer blocks in execution order and how many leading non-image tokens they carry."""
    if hasattr(nnet, 'mid_block'):
        return list(nnet.in_blocks) + [nnet.mid_block] + list(nnet.out_blocks), nnet.extras
    return list(nnet.blocks), 1 if hasattr(nnet, 'cls_token') else 0


@pytest.mark.parametrize('cfg,cond', [
    (dict(name='uvit', img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=4, num_heads=2, num_classes=11),
     'y'),
    (dict(name='uvit_t2i', img_size=8, patch_size=2, in_chans=4, embed_dim=16, depth=2, num_heads=2, clip_dim=8,
          num_clip_token=3), 'context'),
    (dict(name='dit', input_size=8, patch_size=2, in_channels=1, hidden_size=16, depth=3, num_heads=2,
          num_classes=10, learn_sigma=False), 'y'),
    (dict(name='genvit', img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=3, num_heads=2), None),
], ids=['uvit', 'uvit_t2i', 'dit', 'genvit'])
def test_every_vit_gives_the_image_tokens_of_block_k_from_its_forward(cfg, cond, one_thread):
    torch.manual_seed(0)
    nnet = build_nnet(cfg).eval()
    x, t = torch.randn(2, nnet.in_chans, 8, 8), torch.tensor([3.0, 500.0])
    kwargs = {'y': torch.tensor([1, 2])} if cond == 'y' else {'context': torch.randn(2, 3, 8)} if cond else {}
    blocks, extras = execution_order(nnet)
    assert nnet.token_blocks() == len(blocks) and nnet.token_grid == (4, 4) and nnet.token_dim == 16
    outputs = []
    hooks = [blk.register_forward_hook(lambda m, i, out: outputs.append(out)) for blk in blocks]
    reference = nnet(x, t, **kwargs)
    for depth in range(1, len(blocks) + 1):
        output, tokens = nnet.forward_with_tokens(x, t, depth, **kwargs)
        assert torch.equal(output, reference)            # the same forward, one pass
        assert tokens.shape == (2, 16, 16)
        assert torch.equal(tokens, outputs[depth - 1][:, extras:])   # block `depth`, the image tokens alone
    for hook in hooks:
        hook.remove()
    assert check_token_depth(nnet, len(blocks)) == len(blocks)
    message = one_line_error(check_token_depth, nnet, len(blocks) + 1)
    assert message.startswith(f'config.repa.depth={len(blocks) + 1} is out of range') and f'1..{len(blocks)}' in message
    one_line_error(check_token_depth, nnet, 0)


def test_a_backbone_without_image_tokens_is_one_line():
    with torch.device('meta'):
        unet = build_nnet(dict(name='unet', image_shape=(1, 8, 8), n_channels=32, ch_mults=(1,), is_attn=(False,),
                               n_blocks=1))
    assert 'UNet gives no image tokens' in one_line_error(check_token_depth, unet, 1)


def tiny_uvit():
    torch.manual_seed(0)
    return build_nnet(dict(name='uvit', img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=4, num_heads=2,
                           num_classes=11))


def test_the_projector_and_the_blocks_up_to_depth_get_the_alignment_gradient(encoder_file, one_thread):
    encoder = load_encoder('digits', encoder_file)
    framework = GaussianFramework(VPSDE(), 'x0')
    repa = Repa(build_objective(d(name='diffusion'), framework), d(weight=0.5, depth=2, projector_dim=32), encoder, 1)
    nnet = tiny_uvit()
    module = repa.training_module(nnet)
    assert isinstance(module, AlignedNet) and repa.backbone(module) is nnet
    assert [n for n, _ in module.named_parameters()][-6:] == [f'projector.{i}.{w}' for i in (0, 2, 4)
                                                              for w in ('weight', 'bias')]
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    cond = {'y': torch.tensor([0, 1, 2, 3])}
    torch.manual_seed(1)
    loss, metrics = repa(module, images, cond, cond['y'], images)
    torch.manual_seed(1)
    diffusion = framework.loss(nnet, images, cond).mean()
    assert torch.allclose(metrics['diffusion_loss'], diffusion)   # the same draws as the plain objective
    assert torch.allclose(loss, diffusion + 0.5 * metrics['repa_loss'])
    # the alignment term alone: it reaches the projector and the blocks up to depth 2 (the in-blocks), not beyond
    module.zero_grad()
    module(images, torch.full((4,), 300.0), **cond)
    alignment_loss(module.recorded.pop(), encoder.tokens(images, (4, 4))).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.projector.parameters())
    assert nnet.in_blocks[1].mlp.fc2.weight.grad.abs().sum() > 0 and nnet.patch_embed.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in nnet.mid_block.parameters())
    assert all(p.grad is None for p in nnet.decoder_pred.parameters())


def test_repa_wraps_the_hybrid_objective_too(encoder_file, one_thread):
    framework = GaussianFramework(VPSDE(), 'noise')
    hybrid = build_objective(d(name='hybrid', alpha=3.0, augment='none'), framework)
    repa = Repa(hybrid, d(weight=0.25, depth=3, projector_dim=8), load_encoder('digits', encoder_file), 1)
    torch.manual_seed(0)
    nnet = build_nnet(dict(name='uvit', img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=2, num_heads=2,
                           clf_classes=10))
    module = repa.training_module(nnet)
    assert repa.backbone(module) is nnet and module.nnet.classifies
    images, labels = torch.rand(4, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 3])
    loss, metrics = repa(module, images, {}, labels, images)
    assert torch.allclose(metrics['diffusion_loss'], metrics['ce'] + 3.0 * metrics['mse'])
    assert torch.allclose(loss, metrics['diffusion_loss'] + 0.25 * metrics['repa_loss'])


def test_an_encoder_grid_that_cannot_be_matched_is_one_line(encoder_file):
    encoder = load_encoder('digits', encoder_file)
    repa = Repa(build_objective(d(name='diffusion'), None), d(weight=0.5, depth=1, projector_dim=8), encoder, 1)
    with torch.device('meta'):
        patch1 = build_nnet(dict(name='dit', input_size=8, patch_size=1, in_channels=1, hidden_size=16, depth=2,
                                 num_heads=2, learn_sigma=False))
    message = one_line_error(repa.training_module, patch1)
    assert "gives a 4x4 grid of patch tokens only" in message and 'form a 8x8 grid' in message


def test_the_digits_encoder_is_read_from_its_cache_and_gives_a_4x4_grid(encoder_file, monkeypatch):
    monkeypatch.setattr(digits_encoder, 'train_digits_encoder', lambda: pytest.fail('trained in a test'))
    encoder = load_encoder('digits', encoder_file)
    reference = digits_encoder.DigitsEncoder()
    reference.load_state_dict(torch.load(encoder_file, weights_only=True)['state_dict'])
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    tokens = encoder.tokens(images, (4, 4))
    assert tokens.shape == (3, 16, 64) and not tokens.requires_grad
    assert torch.allclose(tokens, reference.eval()(images), atol=1e-6)   # mean 0.5, std 0.5: [-1, 1] unchanged


def test_the_digits_encoder_is_another_network_than_the_digit_scorer():
    from libs.metrics.digits_score import DigitsClassifier
    encoder, scorer = digits_encoder.DigitsEncoder(), DigitsClassifier()
    assert not set(encoder.state_dict()) & set(scorer.state_dict())
    assert digits_encoder.RECIPE['objective'] != 'cross-entropy' and digits_encoder.RECIPE['split'] == 'train'


def test_tiny_dinov2_and_clip_load_from_folders_and_give_their_patch_tokens(tmp_path, one_thread):
    from transformers import (CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig,
                              Dinov2WithRegistersModel)
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(image_size=8, **TINY_VIT)).save_pretrained(tmp_path / 'dinov2')
    Dinov2WithRegistersModel(Dinov2WithRegistersConfig(image_size=8, num_register_tokens=2, **TINY_VIT)) \
        .save_pretrained(tmp_path / 'dinov2_reg')
    vision = dict(image_size=8, **{k: v for k, v in TINY_VIT.items()})
    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=40,
                max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(tmp_path / 'clip')

    images = torch.rand(2, 3, 12, 12) * 2 - 1      # resized to 4 tokens x 2 pixels = 8 per side
    for name, mean, std, prefix in (('dinov2', IMAGENET_MEAN, IMAGENET_STD, 1),
                                    ('dinov2_reg', IMAGENET_MEAN, IMAGENET_STD, 3), ('clip', CLIP_MEAN, CLIP_STD, 1)):
        encoder = load_encoder(name, str(tmp_path / name))
        pixels = F.interpolate((images + 1) / 2, size=(8, 8), mode='bicubic', align_corners=False)
        pixels = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        hidden = encoder.model(pixel_values=pixels).last_hidden_state
        assert hidden.shape[1] == prefix + 16
        tokens = encoder.tokens(images, (4, 4))
        assert torch.allclose(tokens, hidden[:, prefix:], atol=1e-5), name
        assert encoder.tokens(images, (3, 3)).shape == (2, 9, 16)   # positions resampled to another grid
    grey = torch.rand(2, 1, 8, 8) * 2 - 1                            # grey images are repeated to RGB
    assert torch.allclose(encoder.tokens(grey, (4, 4)), encoder.tokens(grey.expand(-1, 3, -1, -1), (4, 4)))


def test_a_missing_or_empty_encoder_folder_is_one_line_naming_it(tmp_path):
    message = one_line_error(load_encoder, 'dinov2', str(tmp_path / 'absent'))
    assert f'{tmp_path / "absent"}/ not found' in message and 'assets/dinov2-vit-b14/' in message
    (tmp_path / 'empty').mkdir()
    assert 'lacks config.json or the weights' in one_line_error(load_encoder, 'clip', str(tmp_path / 'empty'))
    assert "known: dinov2, dinov2_reg, clip, digits" in one_line_error(load_encoder, 'mae')


def test_a_repa_run_whose_encoder_folder_is_missing_stops_with_one_line(tmp_path, fresh_accelerate_state):
    from libs.training.loop import Trainer
    config = load_config_file(os.path.join(ROOT, 'configs', 'digits_uvit_repa.py'))
    config.repa.update(encoder='dinov2', encoder_path=str(tmp_path / 'dinov2'))
    config.log_with = 'none'
    message = one_line_error(Trainer, config, str(tmp_path / 'run'))
    assert message.startswith(f'REPA encoder folder {tmp_path / "dinov2"}/ not found')
    assert not (tmp_path / 'run' / 'ckpts').exists()

