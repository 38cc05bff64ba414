"""Training objectives: L_simple, and HybViT's hybrid loss trained through the shared Trainer."""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from libs.config import d, load_config_file
from libs.data import build_dataset
from libs.diffusion.gaussian import GaussianFramework
from libs.diffusion.schedules import VPSDE, build_schedule
from libs.errors import UserError
from libs.nets import load_nnet_weights
from libs.nets.genvit import GenViT
from libs.training.loop import Trainer
from libs.training.objectives import Hybrid, build_objective
from libs.uvit import UViT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures('fresh_accelerate_state')


def assert_close(actual, expected, rtol):
    """Elementwise |actual - expected| <= rtol (|expected| + max |expected|): relative, with an absolute floor that
    scales with the magnitudes compared, so float32 summation-order differences between CPUs (which are relative to
    the largest terms summed) pass while a real difference (a missing or extra term) does not."""
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * expected.detach().abs().max().item())


def hybvit_config(**train):
    config = load_config_file(os.path.join(ROOT, 'configs', 'digits_hybvit.py'))
    config.log_with = 'none'
    config.nnet.update(embed_dim=64, depth=4, num_heads=4)
    config.train.update(dict(batch_size=64, save_interval=10 ** 6, eval_interval=10 ** 6, final_eval=False), **train)
    config.optimizer.lr = 0.002
    # what these tests were measured with, whatever the digits run uses
    config.objective.update(alpha=1.0, augment='none')
    config.train.ema_rate = 0.99
    return config


def test_hybrid_loss_is_cross_entropy_plus_alpha_times_l_simple():
    torch.manual_seed(0)
    net = GenViT(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=2, num_classes=10)
    objective = build_objective(d(name='hybrid', alpha=7.0, augment='none'), GaussianFramework(VPSDE(), 'noise'))
    module = objective.training_module(net)
    x, labels = torch.rand(6, 1, 8, 8) * 2 - 1, torch.randint(0, 10, (6,))
    torch.manual_seed(1)
    loss, metrics = objective(module, x, {}, labels)
    torch.manual_seed(1)   # the same t and noise again, by hand
    t = VPSDE().sample_train_t(6, 'cpu')
    eps = torch.randn_like(x)
    x_t = VPSDE().alpha(t).view(-1, 1, 1, 1) * x + VPSDE().sigma(t).view(-1, 1, 1, 1) * eps
    mse = (net(x_t, 999 * t) - eps).square().flatten(1).mean(1).mean()
    ce = F.cross_entropy(net.classify(x), labels)
    assert_close(loss, ce + 7.0 * mse, rtol=1e-5)
    assert_close(metrics['ce'], ce.detach(), rtol=1e-5)
    assert objective.backbone(module) is net


def test_hybrid_objective_errors():
    framework = GaussianFramework(VPSDE(), 'noise')
    objective = build_objective(d(name='hybrid'), framework)
    with pytest.raises(UserError, match="needs a network with a classification head; UViT has none .*clf_classes"):
        objective.training_module(UViT(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=2))
    net = GenViT(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=2, num_classes=3)
    with pytest.raises(UserError, match='has a label 7 but the classification head has 3 classes'):
        objective(objective.training_module(net), torch.zeros(2, 1, 8, 8), {}, torch.tensor([0, 7]))
    with pytest.raises(UserError, match="unknown config.objective.name 'gan'; known: diffusion, hybrid"):
        build_objective(d(name='gan'), framework)
    with pytest.raises(UserError, match="unknown config.objective.augment 'cutmix'"):
        Hybrid(d(augment='cutmix'), framework)


def test_train_mode_must_fit_the_network(tmp_path):
    config = hybvit_config(n_steps=1)
    config.train.mode = 'cond'
    with pytest.raises(UserError, match=r"config.train.mode='cond' does not fit the network"):
        Trainer(config, str(tmp_path))


# ------------------------------------------------- GenViT and HybViT share every code path where the math is the same
def hybrid_backbones():
    torch.manual_seed(0)
    return {
        'genvit': GenViT(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=2, num_classes=10),
        'hybrid_uvit': UViT(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=3, num_heads=2,
                            clf_classes=10),
    }


@pytest.mark.parametrize('name', ['genvit', 'hybrid_uvit'])
@pytest.mark.parametrize('prediction', ['noise', 'x0'])
def test_the_hybrid_l_simple_term_is_the_diffusion_objective_on_the_same_noise(name, prediction):
    net = hybrid_backbones()[name]
    framework = GaussianFramework(build_schedule(d(name='cosine')), prediction)
    alpha = 1000.0
    diffusion = build_objective(d(name='diffusion'), framework)
    hybrid = build_objective(d(name='hybrid', alpha=alpha, augment='randaugment'), framework)
    generator = torch.Generator().manual_seed(0)
    x, labels = torch.rand(8, 1, 8, 8, generator=generator) * 2 - 1, torch.randint(0, 10, (8,), generator=generator)

    torch.manual_seed(5)
    l_simple, _ = diffusion(diffusion.training_module(net), x, {}, labels)
    l_simple.backward()
    simple_grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
    assert ('head.weight' if name == 'genvit' else 'classifier.head.weight') not in simple_grads   # untouched
    net.zero_grad()
    torch.manual_seed(5)
    module = hybrid.training_module(net)
    loss, metrics = hybrid(module, x, {}, labels)
    assert torch.equal(metrics['mse'], l_simple.detach())      # the same t, noise and network call, bit for bit
    assert_close(loss, metrics['ce'] + alpha * l_simple.detach(), rtol=1e-6)
    loss.backward()
    # the denoising output layer gets no gradient from the classifier: alpha times the diffusion gradient, up to
    # float32 summation order (which differs between CPUs: up to 2e-5 relative on an element measured on an EPYC,
    # within 1e-5 of the largest element); a classifier gradient leaking in would be O(1) relative
    assert_close(net.decoder_pred.weight.grad, alpha * simple_grads['decoder_pred.weight'], rtol=1e-5)
    assert hybrid.backbone(module) is net and diffusion.backbone(net) is net


def test_genvit_and_hybvit_runs_share_trainer_checkpoints_and_resume(tmp_path):
    """A HybViT checkpoint resumes as a GenViT (diffusion only) run and back: one network, one checkpoint format."""
    config = hybvit_config(n_steps=2, save_interval=2, log_interval=1)
    Trainer(config, str(tmp_path)).fit()
    hybvit_keys = set(torch.load(tmp_path / 'ckpts' / '2.ckpt' / 'nnet.pth', weights_only=True))
    config.objective.name = 'diffusion'
    config.train.n_steps = 4
    genvit = Trainer(config, str(tmp_path))
    assert genvit.step == 2                                    # resumed weights, EMA, optimizer state
    genvit.fit()
    assert set(torch.load(tmp_path / 'ckpts' / '4.ckpt' / 'nnet.pth', weights_only=True)) == hybvit_keys
    with open(tmp_path / 'metrics.jsonl') as f:
        rows = [json.loads(line) for line in f]
    assert [r['step'] for r in rows] == [1, 2, 3, 4]
    assert 'ce' in rows[1] and 'ce' not in rows[2]             # the objective changed, nothing else did


def test_the_hybrid_uvit_trains_through_the_same_trainer(tmp_path):
    config = load_config_file(os.path.join(ROOT, 'configs', 'digits_hybrid_uvit.py'))
    config.log_with = 'none'
    config.nnet.update(embed_dim=32, depth=2, num_heads=2)
    config.train.update(n_steps=3, batch_size=32, log_interval=1, save_interval=3, eval_interval=10 ** 6,
                        final_eval=False)
    trainer = Trainer(config, str(tmp_path))
    trainer.fit()
    with open(tmp_path / 'metrics.jsonl') as f:
        rows = [json.loads(line) for line in f]
    assert [r['step'] for r in rows] == [1, 2, 3]
    for r in rows:
        # the logged terms make up the logged loss, with the config's alpha; the untrained 10-way head is close
        # to uniform (measured: ce within 0.04 of ln 10)
        assert r['loss'] == pytest.approx(r['ce'] + config.objective.alpha * r['mse'], rel=1e-6)
        assert abs(r['ce'] - math.log(10)) < 0.1
    net = UViT(**{k: v for k, v in config.nnet.items() if k != 'name'})
    load_nnet_weights(net, str(tmp_path / 'ckpts' / '3.ckpt'))          # strict: the head is in the checkpoint
    x = build_dataset(d(name='digits'), 'test').images[:4]
    with torch.no_grad():
        assert_close(net.classify(x), trainer.nnet_ema.classify(x), rtol=1e-5)


def test_a_resumed_hybvit_run_with_randaugment_repeats_the_uninterrupted_one(tmp_path):
    """The augmentation draws from the global RNG, which checkpoints restore: resume is exact, step for step."""
    config = hybvit_config(n_steps=4, save_interval=2, log_interval=1)
    config.objective.augment = 'crop_flip_randaugment'
    # a digit score at the step-2 checkpoint (regression: building the digit classifier drew from the training
    # run's RNG, so the uninterrupted run, which scores at step 2 and goes on, diverged from the resumed one)
    config.eval.update(train_n_samples=20, train_sample_steps=2)
    Trainer(config, str(tmp_path / 'straight')).fit()
    config.train.n_steps = 2                   # inside the 50 warm-up steps the learning rates do not depend on it
    Trainer(config, str(tmp_path / 'resumed')).fit()
    config.train.n_steps = 4
    resumed = Trainer(config, str(tmp_path / 'resumed'))
    assert resumed.step == 2
    resumed.fit()
    runs = {}
    for name in ('straight', 'resumed'):
        with open(tmp_path / name / 'metrics.jsonl') as f:
            runs[name] = [(r['step'], r['loss'], r['ce']) for r in map(json.loads, f)]
    assert [step for step, _, _ in runs['straight']] == [1, 2, 3, 4]
    assert runs['straight'] == runs['resumed']
    assert list((tmp_path / 'straight' / 'ckpts' / '2.ckpt').glob('eval_sample_digits_n20_digits_*.json'))
