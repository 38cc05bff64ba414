"""The training loop on the digits: loss falls, resume is exact, checkpoints are atomic, bad input is one line."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest
import torch

from conftest import reset_accelerate
from forking import fork_ranks, run_script, wait
from libs.config import load_config_file, resolve
from libs.errors import UserError
from libs.training import checkpoint as checkpoint_module
from libs.diffusion.gaussian import GaussianFramework
from libs.training import loop as loop_module
from libs.training.checkpoint import CheckpointManager, read_train_state
from libs.training.data_order import ResumableBatchSampler
from libs.training.loop import Trainer
from libs.training.optim import build_lr_scheduler, update_ema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS_CONFIG = os.path.join(ROOT, 'configs', 'digits_uvit_tiny.py')

# A model small enough that a step takes milliseconds on the CPU.
TINY = dict(embed_dim=32, depth=2, num_heads=2)


def tiny_config(**train):
    config = load_config_file(DIGITS_CONFIG)
    config.nnet.update(TINY)
    config.log_with = 'none'
    config.train.update(dict(n_steps=8, batch_size=32, log_interval=1, eval_interval=10 ** 9, save_interval=4,
                             final_eval=False, num_workers=0), **{})
    config.train.update(train)
    config.optimizer.lr = 2e-3
    config.lr_scheduler.warmup_steps = 2
    return config


pytestmark = pytest.mark.usefixtures('fresh_accelerate_state')


def losses(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return {row['step']: row['loss'] for row in map(json.loads, f)}


def test_loss_falls_over_30_digits_steps(tmp_path):
    config = tiny_config(n_steps=30, save_interval=30, batch_size=64)
    config.pred = 'noise_pred'  # its loss starts at 1 (E|eps|^2), so the fall is large and easy to see
    Trainer(config, str(tmp_path)).fit()
    history = losses(tmp_path)
    assert sorted(history) == list(range(1, 31))
    first = sum(history[s] for s in range(1, 6)) / 5
    last = sum(history[s] for s in range(26, 31)) / 5
    assert last < 0.8 * first, (first, last)  # measured: 0.95 -> 0.73; a net that does not learn stays near 1
    assert (tmp_path / 'ckpts' / '30.ckpt' / 'nnet_ema.pth').is_file()
    assert json.loads((tmp_path / 'config.json').read_text())['nnet']['embed_dim'] == 32


def edm_unet_config(**train):
    """EDM with a small DDAE UNet and EDM's augmentation (its labels reach the network), unconditional."""
    config = tiny_config(**train)
    config.framework = 'edm'
    config.edm.augment_prob = 0.5
    config.train.update(mode='uncond', p_uncond=0.0, grid_size=4)
    config.sample.scale = 0.0
    config.nnet = ml_collections.ConfigDict(dict(name='unet', image_shape=(1, 8, 8), n_channels=32, ch_mults=(1,),
                                                 is_attn=(False,), n_blocks=1, dropout=0.1, augment_dim=9))
    return config


def discrete_config(**train):
    """The discrete-state framework (libs/diffusion/ctmc.py) on the tiny U-ViT."""
    from test_ctmc_training import discrete_config as tiny_discrete
    return tiny_discrete(**train)


def repa_config(**train):
    """The tiny U-ViT with REPA (configs/digits_uvit_repa.py's settings) on its block 1; the encoder is a random one
    the test writes."""
    config = tiny_config(**train)
    config.repa = load_config_file(os.path.join(ROOT, 'configs', 'digits_uvit_repa.py')).repa
    config.repa.update(depth=1, projector_dim=16)
    config.eval.train_n_samples = 0   # no score at the last checkpoint: the other cases check that it resumes
    return config


@pytest.mark.parametrize('make_config', [tiny_config, edm_unet_config, discrete_config, repa_config],
                         ids=['uvit', 'edm_unet_augmented', 'ctmc_uvit', 'uvit_repa'])
def test_resume_after_sigterm_equals_uninterrupted(tmp_path, monkeypatch, make_config):
    from libs.nets import build_nnet
    from test_repa import write_digits_encoder
    config = make_config(n_steps=8, save_interval=100)
    if config.repa.weight:
        config.repa.encoder_path = write_digits_encoder(tmp_path / 'digits_encoder.pt')
    straight = Trainer(config, str(tmp_path / 'a'))
    straight.fit()

    original_step = Trainer.train_step

    def step_then_signal(self, data):
        out = original_step(self, data)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # what a cluster sends before preemption
        return out

    monkeypatch.setattr(Trainer, 'train_step', step_then_signal)
    interrupted = Trainer(config, str(tmp_path / 'b'))
    interrupted.fit()
    # the signal is agreed on in the next step's reduction, so the run stops (and saves) after step 4
    assert interrupted.step == 4
    assert CheckpointManager(str(tmp_path / 'b' / 'ckpts')).steps() == [4]
    monkeypatch.setattr(Trainer, 'train_step', original_step)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is removed after the run

    resumed = Trainer(config, str(tmp_path / 'b'))
    assert resumed.step == 4
    resumed.fit()
    assert losses(tmp_path / 'a') == losses(tmp_path / 'b')  # bit-for-bit, every step
    for name, a, b in (('nnet', straight.nnet, resumed.nnet), ('ema', straight.nnet_ema, resumed.nnet_ema)):
        for (key, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(pa, pb), f'{name}.{key}'
    assert straight.optimizer.state_dict()['state'][0]['step'] == resumed.optimizer.state_dict()['state'][0]['step']
    assert straight.lr_scheduler.last_epoch == resumed.lr_scheduler.last_epoch == 8
    # the weights files hold the backbone alone, with its own keys; REPA's projector has a file of its own
    ckpt = tmp_path / 'b' / 'ckpts' / '8.ckpt'
    keys = set(build_nnet(config.nnet).state_dict())
    assert set(torch.load(ckpt / 'nnet.pth', weights_only=True)) == keys
    assert set(torch.load(ckpt / 'nnet_ema.pth', weights_only=True)) == keys
    assert (ckpt / 'repa_projector.pth').is_file() == bool(config.repa.weight)
    if make_config in (tiny_config, repa_config):
        # switching REPA on or off in a resumed run is one line (the projector and its optimiser state would not fit)
        other = tiny_config() if config.repa.weight else repa_config()
        other.repa.encoder_path = write_digits_encoder(tmp_path / 'digits_encoder.pt')
        reset_accelerate()
        with pytest.raises(UserError, match=f'{"holds" if config.repa.weight else "has no"} repa_projector.pth, which'):
            Trainer(other, str(tmp_path / 'b'))
    if config.repa.weight:
        history = [json.loads(line) for line in open(tmp_path / 'b' / 'metrics.jsonl')]
        assert all(row['loss'] == pytest.approx(row['diffusion_loss'] + 0.5 * row['repa_loss'], rel=1e-5)
                   for row in history)
        projector = torch.load(ckpt / 'repa_projector.pth', weights_only=True)
        for key, value in straight.backbone().state_dict().items():
            assert torch.equal(value, resumed.backbone().state_dict()[key])
        assert all(torch.equal(value, resumed.objective.aligned.projector.state_dict()[key].cpu())
                   for key, value in projector.items())


def test_bf16_mixed_precision_keeps_the_loss_in_fp32(tmp_path, monkeypatch):
    loss_dtypes = []
    real_loss = GaussianFramework.loss

    def recording_loss(framework, nnet, x0, cond=None, generator=None):
        loss = real_loss(framework, nnet, x0, cond, generator)
        loss_dtypes.append(loss.dtype)
        return loss

    monkeypatch.setattr(GaussianFramework, 'loss', recording_loss)
    config = tiny_config(n_steps=3, save_interval=100)
    config.mixed_precision = 'bf16'
    trainer = Trainer(config, str(tmp_path))
    inner_dtypes = []
    qkv = trainer.accelerator.unwrap_model(trainer.nnet).in_blocks[0].attn.qkv
    qkv.register_forward_hook(lambda module, args, out: inner_dtypes.append(out.dtype))
    trainer.fit()
    assert trainer.accelerator.mixed_precision == 'bf16'
    assert inner_dtypes and set(inner_dtypes) == {torch.bfloat16}   # the network's matmuls run in bf16
    assert set(loss_dtypes) == {torch.float32}                       # the loss is computed in fp32
    assert all(v == v for v in losses(tmp_path).values())


def test_checkpoints_get_an_fid_json_when_statistics_and_weights_exist(tmp_path, random_weights):
    from libs.metrics import fid
    real = torch.stack([loop_module.build_dataset(tiny_config().dataset)[i][0] for i in range(12)])
    features = fid.InceptionFeatures(fid.load_inception(random_weights))
    fid.save_stats(str(tmp_path / 'ref.npz'), *fid.activation_statistics(features(real)))
    config = tiny_config(n_steps=2, save_interval=2)
    config.eval.update(metric='fid', ref_stats=str(tmp_path / 'ref.npz'), inception_path=random_weights,
                       train_n_samples=6, train_sample_steps=2)
    Trainer(config, str(tmp_path / 'run')).fit()
    ckpt = tmp_path / 'run' / 'ckpts' / '2.ckpt'
    record = json.loads((ckpt / 'eval_sample_digits_n6_fid_unipc_nfe2_scale0.5_ema.json').read_text())
    assert record['step'] == 2 and record['n'] == 6 and record['settings']['n_samples'] == 6
    assert record['settings']['reference_statistics'] == str(tmp_path / 'ref.npz')
    assert record['settings']['algorithm'] == 'unipc' and record['settings']['nfe'] == 2
    assert record['weights'] == str(ckpt / 'nnet_ema.pth') and record['ema'] is True
    # the score is the FID of these weights' samples: recomputed here from the same samples
    from libs.evaluation.harness import EvalRun
    run = EvalRun.load(config, str(ckpt))
    config.sample.update(n_samples=6, sample_steps=2, algorithm='unipc')
    assert run.generate(config.sample, run.scorer())['fid'] == pytest.approx(record['fid'], rel=1e-6)
    # a run's scorers share one set of networks (a sweep scores many points), each starting empty: the same score
    again = run.scorer()
    assert again.metric_set is run.scorer().metric_set and again.parts == []
    assert run.generate(config.sample, again)['fid'] == pytest.approx(record['fid'], rel=1e-6)
    assert set(record['provenance']) >= {'commit', 'torch', 'accelerate', 'device', 'num_processes'}


def test_training_without_fid_files_logs_why_and_goes_on(tmp_path, caplog):
    config = tiny_config(n_steps=2, save_interval=2)
    config.eval.update(metric='fid', ref_stats=str(tmp_path / 'absent.npz'))
    with caplog.at_level('WARNING'):
        Trainer(config, str(tmp_path / 'run')).fit()
    assert any('no fid scores during training: FID reference statistics not found' in r.getMessage()
               for r in caplog.records)
    assert CheckpointManager(str(tmp_path / 'run' / 'ckpts')).steps() == [2]


def test_gradient_accumulation_matches_one_big_batch(tmp_path, monkeypatch):
    def deterministic_loss(framework, nnet, x0, cond=None, generator=None):  # no random t or noise: both runs
        t = torch.full((x0.shape[0],), 0.5)                                  # see identical losses
        return (framework.denoiser(nnet).output(x0, t, **(cond or {})) - x0).square().flatten(1).mean(1)

    monkeypatch.setattr(GaussianFramework, 'loss', deterministic_loss)
    big = Trainer(tiny_config(n_steps=3, save_interval=100, batch_size=32), str(tmp_path / 'big'))
    big.fit()
    reset_accelerate()
    accum = Trainer(tiny_config(n_steps=3, save_interval=100, batch_size=32, gradient_accumulation_steps=2),
                    str(tmp_path / 'accum'))
    assert accum.micro_batch == 16
    accum.fit()
    for (name, pa), pb in zip(big.nnet.named_parameters(), accum.nnet.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6, msg=name)
    for a, b in zip(losses(tmp_path / 'big').values(), losses(tmp_path / 'accum').values()):
        assert abs(a - b) < 1e-5 * max(1.0, abs(a))


def test_leftover_temporary_and_incomplete_checkpoints_are_ignored(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep=2)
    for step in (2, 4):
        tmp = manager.begin(step, True)
        manager.write_json(tmp, 'train_state.json', {'step': step})
        manager.commit(tmp, step)
    os.makedirs(tmp_path / '6.ckpt.tmp')                 # a save killed half-way
    os.makedirs(tmp_path / '8.ckpt')                     # a folder without its train_state.json
    assert manager.latest() == str(tmp_path / '4.ckpt')
    tmp = manager.begin(10, True)
    manager.write_json(tmp, 'train_state.json', {'step': 10})
    manager.commit(tmp, 10)
    assert manager.steps() == [4, 10]                    # pruned to keep=2 only after 10 was complete
    assert not (tmp_path / '10.ckpt.tmp').exists()


def test_out_of_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    Trainer(tiny_config(n_steps=2, save_interval=2), str(tmp_path)).fit()
    reset_accelerate()

    def full_disk(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(checkpoint_module.torch, 'save', full_disk)
    trainer = Trainer(tiny_config(n_steps=4, save_interval=2), str(tmp_path))
    with pytest.raises(UserError, match=r'out of disk space while writing checkpoint to .*4\.ckpt\.tmp; '
                                        r'the previous checkpoint .*2\.ckpt is kept'):
        trainer.fit()
    assert CheckpointManager(str(tmp_path / 'ckpts')).steps() == [2]
    assert sorted(os.listdir(tmp_path / 'ckpts')) == ['2.ckpt']


def test_nan_loss_stops_before_the_update_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {'n': 0}
    real_loss = GaussianFramework.loss

    def loss_that_turns_nan(*args, **kwargs):
        calls['n'] += 1
        out = real_loss(*args, **kwargs)
        return out * float('nan') if calls['n'] >= 3 else out

    monkeypatch.setattr(GaussianFramework, 'loss', loss_that_turns_nan)
    trainer = Trainer(tiny_config(n_steps=6, save_interval=2), str(tmp_path))
    before = {k: v.clone() for k, v in trainer.nnet.state_dict().items()}
    with pytest.raises(UserError, match=r'loss is not finite at step 3; .* the last good checkpoint .*2\.ckpt '
                                        r'is kept'):
        trainer.fit()
    assert CheckpointManager(str(tmp_path / 'ckpts')).steps() == [2]
    saved = torch.load(tmp_path / 'ckpts' / '2.ckpt' / 'nnet.pth', weights_only=True)
    assert all(torch.isfinite(v).all() for v in saved.values())
    assert all(torch.isfinite(v).all() for v in trainer.nnet.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in trainer.nnet.state_dict().items())


def test_a_checkpoint_score_samples_in_the_runs_precision_and_scores_in_float32(tmp_path, monkeypatch):
    """generate(), as the per-checkpoint score and eval.py call it: the network samples under the run's autocast
    (bf16 here, on the CPU), as eval.py samples; the scorer gets float32 images outside it (an Inception pass under
    autocast would move the FID off pytorch-fid's)."""
    from libs.evaluation.scorers import DigitsScorer
    config = tiny_config()
    config.mixed_precision = 'bf16'
    trainer = Trainer(config, str(tmp_path))
    seen = {'network': [], 'scorer': []}
    trainer.nnet_ema.register_forward_pre_hook(
        lambda module, args: seen['network'].append(torch.is_autocast_enabled('cpu')))

    class Spy(DigitsScorer):
        def add(self, images, labels):
            seen['scorer'].append((torch.is_autocast_enabled('cpu'), images.dtype))
            super().add(images, labels)

    monkeypatch.setattr(loop_module, 'build_scorer', lambda *args, **kwargs: Spy())
    sample_cfg = config.sample.copy_and_resolve_references()
    sample_cfg.sample_steps = 2
    result = trainer.evaluate(sample_cfg, 8, str(tmp_path))
    assert 'digits_frechet_distance' in result
    assert seen['network'] and all(seen['network'])
    assert seen['scorer'] and all(entry == (False, torch.float32) for entry in seen['scorer'])


def test_batch_size_must_divide_into_processes_and_accumulation(tmp_path):
    with pytest.raises(UserError, match=r'batch_size=32 is not divisible by the number of processes \(1\) x '
                                        r'gradient_accumulation_steps \(3\)'):
        Trainer(tiny_config(gradient_accumulation_steps=3), str(tmp_path))


def test_resume_into_a_different_model_names_the_key(tmp_path):
    Trainer(tiny_config(n_steps=2, save_interval=2), str(tmp_path)).fit()
    reset_accelerate()
    config = tiny_config(n_steps=4)
    config.nnet.embed_dim = 48
    # config.json is compared first
    with pytest.raises(UserError, match=r'another network or another noise process \(nnet\.embed_dim: 32 -> 48\)'):
        Trainer(config, str(tmp_path))
    reset_accelerate()
    with pytest.raises(UserError, match=r"2\.ckpt/nnet\.pth does not fit the model: 'pos_embed' has shape "
                                        r"\(1, 18, 32\), the model expects \(1, 18, 48\)"):
        Trainer(config, str(tmp_path), resume_anyway=True)


def test_unknown_config_keys_are_rejected_with_a_suggestion():
    config = tiny_config()
    config.train.n_step = 3
    with pytest.raises(UserError, match=r'unknown config key train\.n_step; did you mean train\.n_steps\?'):
        resolve(config)


def test_data_order_resumes_and_does_not_depend_on_the_process_count():
    one = ResumableBatchSampler(100, 8, seed=3)
    batches = [b for _, b in zip(range(30), iter(one))]
    later = ResumableBatchSampler(100, 8, seed=3, start=17)
    assert [b for _, b in zip(range(13), iter(later))] == batches[17:]
    epoch = [i for b in batches[:12] for i in b]          # 12 batches of 8 per epoch of 100 (4 dropped)
    assert len(set(epoch)) == 96
    halves = [ResumableBatchSampler(100, 4, seed=3, rank=r, num_processes=2) for r in range(2)]
    iters = [iter(h) for h in halves]
    for step in range(20):
        assert next(iters[0]) + next(iters[1]) == batches[step]
    with pytest.raises(UserError, match='fewer than one global batch'):
        ResumableBatchSampler(10, 8, seed=0, num_processes=2)


def test_repeated_augmentation_tiles_distinct_images_across_processes():
    halves = [ResumableBatchSampler(100, 6, seed=3, rank=r, num_processes=2, repeats=3) for r in range(2)]
    iters = [iter(h) for h in halves]
    seen = []
    for _ in range(25):                                   # one epoch: 100 // 4 distinct images per batch
        batch = next(iters[0]) + next(iters[1])
        distinct = batch[:4]
        assert batch == distinct * 3 and len(set(distinct)) == 4
        seen += distinct
    assert sorted(seen) == list(range(100))               # every image once per epoch, each seen 3 times
    with pytest.raises(UserError, match='repeated_aug=5 must be a positive divisor'):
        ResumableBatchSampler(100, 6, seed=0, num_processes=2, repeats=5)


def test_ema_and_warmup_schedule_math():
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    expected = {k: 0.9 * e + 0.1 * m for (k, e), m in zip(ema.state_dict().items(), model.state_dict().values())}
    update_ema(ema, model, 0.9)
    for k, v in ema.state_dict().items():
        torch.testing.assert_close(v, expected[k])
    from libs.config import d
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = build_lr_scheduler(d(name='customized', warmup_steps=4), opt, total_steps=10)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]['lr'])
        opt.step()
        sched.step()
    assert lrs == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


# ------------------------------------------------------------------------------------------- real processes
# train.py as a fresh interpreter runs it: a subprocess in the README's own-data command, the SIGTERM test and the
# two-process runs; a forked child of this process (tests/forking.py: the same command line without the imports)
# everywhere else.
def run_train(args):
    overrides = [f'--config.nnet.{k}={v}' for k, v in TINY.items()] + [
        '--config.log_with=none', '--config.train.num_workers=0', '--config.train.final_eval=False',
        '--config.train.log_interval=1', '--config.train.eval_interval=1000000', '--config.train.batch_size=32']
    return run_script(os.path.join(ROOT, 'train.py'), [f'--config={DIGITS_CONFIG}'] + overrides + args, cwd=ROOT)


@pytest.mark.parametrize('override,message', [
    ('--config.train.n_stepz=3', 'error: unknown config key train.n_stepz; did you mean train.n_steps?'),
    ('--config.train.batch_size=abc', 'error: flag --config.train.batch_size=abc: invalid literal for int()'),
    ('--config.dataset.name=cifar10', 'error: CIFAR-10 not found at assets/datasets/cifar10'),
    ('--config.train.batch_size=30000', 'error: the dataset has 1438 images, fewer than one global batch'),
])
def test_bad_input_is_one_line_on_stderr(tmp_path, override, message):
    result = run_train([override, f'--workdir={tmp_path}'])
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(message), result.stderr
    assert 'Traceback' not in result.stderr


def write_folder(root, seed: int) -> str:
    """Two class subfolders of 4 RGB images each, 40x48 (not square: the resolution crops and resizes them)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for name in ('cat', 'dog'):
        os.makedirs(os.path.join(root, name))
        for i in range(4):
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, name, f'{i}.png'))
    return str(root)


OWN_DATA_TINY = dict(nnet=dict(embed_dim=16, depth=2, num_heads=2),
                     train=dict(n_steps=2, batch_size=4, log_interval=1, grid_size=4),
                     eval=dict(train_n_samples=0, train_sample_steps=5))


def test_the_readmes_own_data_command_trains_and_another_folder_never_resumes_its_run(tmp_path):
    """README, "Your own data": the command as written (its dataset keys added on the command line to a config
    that lacks them), with labels from subfolders and a tiny network. Another folder gets another work directory,
    and resuming a work directory on another folder is refused in one line unless asked for."""
    from libs.cli import hparams
    from libs.config import d
    first, second = write_folder(tmp_path / 'a' / 'images', 0), write_folder(tmp_path / 'b' / 'images', 1)
    os.symlink(os.path.join(ROOT, 'configs'), tmp_path / 'configs')  # run from a folder of its own, as from the root
    stats = str(tmp_path / 'mine.npz')
    readme = ['--config=configs/cifar10_uvit_small.py', '--config.dataset.name=image_folder',
              f'--config.dataset.path={first}', '--config.dataset.resolution=32', f'--config.dataset.fid_stats={stats}',
              '--config.dataset.labels_from_subfolders=True', '--config.train.mode=cond', '--config.nnet.num_classes=2']
    tiny = [f'--config.{section}.{k}={v}' for section, values in OWN_DATA_TINY.items() for k, v in values.items()]
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), *readme, *tiny,
                             '--config.log_with=none'], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr[-3000:]
    workdir = tmp_path / 'workdir' / 'cifar10_uvit_small' / hparams(['', *readme, *tiny, '--config.log_with=none'])
    saved = json.loads((workdir / 'config.json').read_text())
    assert saved['dataset'] == dict(name='image_folder', path=first, resolution=32, fid_stats=stats,
                                    labels_from_subfolders=True, random_flip=True)
    assert (workdir / 'ckpts' / '2.ckpt').is_dir() and (workdir / 'samples' / '2.png').is_file()
    assert 'DPM-Solver' in result.stderr  # the end-of-run sample grid's progress bar
    assert 'no fid scores during training: ' in result.stdout  # no statistics at fid_stats yet: one line
    assert 'worker processes in total' not in result.stderr  # workers no more than the CPUs

    other = [a.replace(first, second) for a in readme]
    assert hparams(['', *other]) != hparams(['', *readme])
    config = load_config_file(os.path.join(ROOT, 'configs', 'cifar10_uvit_small.py'))
    config.dataset = d(**{**saved['dataset'], 'path': second})
    config.train.mode, config.nnet.num_classes, config.log_with = 'cond', 2, 'none'
    for section, values in OWN_DATA_TINY.items():
        config[section].update(values)
    with pytest.raises(UserError, match=rf"^{workdir} holds a run on other data, another network or another noise "
                                        rf"process \(dataset.path: "
                                        rf"'{first}' -> '{second}'\): resuming its checkpoint .*2\.ckpt would train "
                                        rf"it on this; give another --workdir, or --resume_anyway"):
        Trainer(config, str(workdir))
    reset_accelerate()
    same_data = config.copy_and_resolve_references()
    same_data.dataset.path, same_data.schedule.name = first, 'stable_diffusion'  # the noise process counts too
    with pytest.raises(UserError, match=r"another noise process \(schedule.name: 'vpsde' -> 'stable_diffusion'\)"):
        Trainer(same_data, str(workdir))
    reset_accelerate()
    assert Trainer(config, str(workdir), resume_anyway=True).step == 2


def test_sigterm_to_a_real_run_saves_and_exits_cleanly(tmp_path):
    cmd_args = ['--config.train.n_steps=100000', '--config.train.save_interval=100000', f'--workdir={tmp_path}']
    overrides = [f'--config.nnet.{k}={v}' for k, v in TINY.items()] + [
        '--config.log_with=none', '--config.train.num_workers=0', '--config.train.log_interval=1',
        '--config.train.eval_interval=1000000', '--config.train.batch_size=32']
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'train.py'), f'--config={DIGITS_CONFIG}']
                            + overrides + cmd_args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    metrics = tmp_path / 'metrics.jsonl'
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    steps = CheckpointManager(str(tmp_path / 'ckpts')).steps()
    assert len(steps) == 1 and steps[0] >= 3, out
    assert 'stopped by signal at step' in out
    assert read_train_state(str(tmp_path / 'ckpts' / f'{steps[0]}.ckpt'))['step'] == steps[0]


def test_two_cpu_processes_keep_identical_replicas(tmp_path):
    """Two ranks in one gloo group, forked from this process (tests/forking.py; train.py under torchrun, the same
    Trainer, in tests/test_cluster_faults.py): every checkpoint records equal replicas and each rank's random state."""
    config = tiny_config(n_steps=6, save_interval=3)
    pids = fork_ranks(lambda: Trainer(config, str(tmp_path)).fit(), 2, str(tmp_path))
    assert [wait(pid) for pid in pids] == [0, 0], (tmp_path / 'rank0.log').read_text()[-3000:]
    for step in (3, 6):
        state = read_train_state(str(tmp_path / 'ckpts' / f'{step}.ckpt'))
        assert state['num_processes'] == 2
        assert len(state['replica_checksums']) == 2
        assert state['replicas_equal'] is True
        assert state['replica_checksums'][0] == state['replica_checksums'][1]
        assert (tmp_path / 'ckpts' / f'{step}.ckpt' / 'rng_state_1.pth').is_file()
    assert 'with 2 process(es)' in (tmp_path / 'rank0.log').read_text()
    assert sorted(losses(tmp_path)) == list(range(1, 7))


def test_the_default_runs_code_path_gives_the_losses_recorded_before_the_refactor(tmp_path):
    """The first steps of the default run's config, frozen as it was before the architecture refactor (issue 9),
    give the per-step losses recorded then (bit-identical on the machine that recorded them; 1e-5 relative here,
    which holds across CPUs while any change of the random streams, the model or the loss moves them by far more).
    4 of the 20 recorded steps: the first already depends on every stream, and each step of this 4.3M-parameter
    network at batch 128 costs over a second on a 2-core CPU."""
    recorded = json.loads(open(os.path.join(ROOT, 'tests', 'data', 'digits_uvit_tiny_frozen_losses.json')).read())
    steps = 4
    config = os.path.join(ROOT, 'tests', 'data', 'configs', 'digits_uvit_tiny_frozen.py')
    result = run_script('train.py', [f'--config={config}', f'--workdir={tmp_path}', f'--config.train.n_steps={steps}',
                                     '--config.train.log_interval=1', '--config.train.final_eval=False',
                                     '--config.train.save_interval=1000', '--config.train.eval_interval=1000',
                                     '--config.eval.train_n_samples=10', '--config.log_with=none'], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    history = losses(tmp_path)
    assert sorted(history) == list(range(1, steps + 1))
    for step, expected in enumerate(recorded['losses'][:steps], start=1):
        assert history[step] == pytest.approx(expected, rel=1e-5), step


def test_a_checkpoint_written_before_the_refactor_resumes_exactly(tmp_path):
    """A checkpoint written by main before issue 9 (tests/data/old_checkpoint) loads and resumes with the losses the
    old code gave when it resumed from it."""
    import shutil
    recorded = json.loads(open(os.path.join(ROOT, 'tests', 'data', 'old_checkpoint', 'resume.json')).read())
    shutil.copytree(os.path.join(ROOT, 'tests', 'data', 'old_checkpoint', '2.ckpt'), tmp_path / 'ckpts' / '2.ckpt')
    result = run_script('train.py', [f'--config={os.path.join(ROOT, recorded["config"])}', f'--workdir={tmp_path}',
                                     *recorded['overrides']], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'resumed from' in result.stdout + result.stderr and '(step 2)' in result.stdout + result.stderr
    history = losses(tmp_path)
    assert sorted(history) == [3, 4]
    for step, expected in recorded['losses_after_resume'].items():
        assert history[int(step)] == pytest.approx(expected, rel=1e-5), step


def test_time_budget_ends_the_run_with_a_checkpoint_and_its_score(tmp_path, caplog):
    # a budget of 6 ms is spent within the first step: the run saves step 1 and scores it as a finished run would
    config = tiny_config(n_steps=50, max_minutes=1e-4, final_eval=True)
    config.sample.update(n_samples=20, mini_batch_size=20, sample_steps=3)
    with caplog.at_level('WARNING'):
        result = Trainer(config, str(tmp_path)).fit()
    assert sorted(os.listdir(tmp_path / 'ckpts')) == ['1.ckpt']
    assert read_train_state(str(tmp_path / 'ckpts' / '1.ckpt'))['step'] == 1
    scores = [name for name in os.listdir(tmp_path / 'ckpts' / '1.ckpt') if name.startswith('eval_sample_digits_n20_')]
    assert len(scores) == 1, os.listdir(tmp_path / 'ckpts' / '1.ckpt')
    assert 0.0 <= result['digits_accuracy'] <= 1.0 and result['digits_frechet_distance'] > 0
    assert 'train.max_minutes=0.0001 spent at step 1 of 50' in caplog.text


def test_zero_training_samples_switch_the_checkpoint_score_off(tmp_path, caplog):
    config = tiny_config(n_steps=4, save_interval=2)
    config.eval.train_n_samples = 0
    with caplog.at_level('WARNING'):
        Trainer(config, str(tmp_path)).fit()
    assert sorted(os.listdir(tmp_path / 'ckpts')) == ['2.ckpt', '4.ckpt']
    assert not [n for n in os.listdir(tmp_path / 'ckpts' / '2.ckpt') if n.startswith('eval_')]
    assert 'failed' not in caplog.text


def test_the_grad_scaler_starts_at_the_configured_scale(tmp_path):
    """fp16 runs (on an accelerator) get their grad scaler from these kwargs; scripts/gpu_check.py starts at 2^30 to
    force overflow skips."""
    reset_accelerate()
    config = load_config_file('configs/digits_uvit_tiny.py')
    config.train.grad_scaler_init_scale = 1024.0
    accelerator = loop_module.make_accelerator(config, str(tmp_path))
    assert accelerator.scaler_handler.to_kwargs() == {'init_scale': 1024.0}


class HostReads(torch.overrides.TorchFunctionMode):
    """Counts the tensor reads to the host (item, tolist, bool, float, ...) made by the suite's own code, but for the
    batch sampler, whose indices are host tensors from the start."""
    READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__,
             torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.numpy, torch.Tensor.cpu}

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(os.path.join(ROOT, 'libs')) and not caller.endswith('data_order.py'):
                self.calls.append(f'{func.__name__} in {os.path.relpath(caller, ROOT)}')
        return func(*args, **(kwargs or {}))


def test_a_step_reads_the_device_once_and_a_log_line_once(tmp_path):
    """Every per-step decision (non-finite loss or gradients, SIGTERM, time budget) comes from one read of one
    all-reduced flag vector; the logged losses and norms are read only at the log interval, together."""
    trainer = Trainer(tiny_config(n_steps=4, log_interval=100, grad_clip=1.0), str(tmp_path))
    data = trainer.batches()
    for _ in range(2):
        with HostReads() as reads:
            metrics = trainer.train_step(data)
        assert reads.calls == ['tolist in libs/training/loop.py']
    with HostReads() as reads:
        values = trainer.log(metrics, images_per_sec=1.0)
    assert reads.calls == ['tolist in libs/training/loop.py']
    assert set(values) >= {'loss', 'grad_norm'} and values['loss'] == pytest.approx(metrics['loss'].item())
