"""Checkpoints that survive damage and kills (libs/training/checkpoint.py), one process: manifests and the walk back
to the newest checkpoint that verifies, --resume, kills at every point of a save, exact resume in a new process,
atomic re-save, and the checks of one training step (accumulation, non-finite gradients, a failing score).

Kills and the "new process" run in forked children of the test process (tests/forking.py)."""
import errno
import os
import random
import re
import signal
import time

import pytest
import torch

from conftest import reset_accelerate
from forking import fork, wait
from libs.errors import UserError
from libs.training import checkpoint as checkpoint_module
from libs.training.checkpoint import CheckpointManager, verify
from libs.training.loop import Trainer
from test_training import tiny_config

# one thread in the test process as in the forked children: results must be bit-identical between them
pytestmark = pytest.mark.usefixtures('fresh_accelerate_state', 'one_thread')


def quick_config(**train):
    """The tiny model with cheap per-checkpoint scores (10 samples, 2 sampler steps)."""
    config = tiny_config(**train)
    config.eval.update(train_n_samples=10, train_sample_steps=2)
    return config


def assert_same_state(a: str, b: str) -> None:
    """Two checkpoint directories hold bit-identical weights, EMA, optimizer and LR scheduler."""
    for name in ('nnet.pth', 'nnet_ema.pth', 'optimizer.pth', 'lr_scheduler.pth'):
        left, right = (torch.load(os.path.join(d, name), weights_only=True) for d in (a, b))
        assert_equal_nested(left, right, name)


def assert_equal_nested(left, right, where: str) -> None:
    if torch.is_tensor(left):
        assert torch.is_tensor(right) and torch.equal(left, right), where
    elif isinstance(left, dict):
        assert left.keys() == right.keys(), where
        for key in left:
            assert_equal_nested(left[key], right[key], f'{where}.{key}')
    elif isinstance(left, (list, tuple)):
        assert len(left) == len(right), where
        for i, (x, y) in enumerate(zip(left, right)):
            assert_equal_nested(x, y, f'{where}[{i}]')
    else:
        assert left == right, where


def test_damaged_newest_checkpoints_fall_back_to_the_previous_one_with_one_warning(tmp_path, caplog):
    Trainer(quick_config(n_steps=5, save_interval=1, keep_ckpts=0), str(tmp_path)).fit()
    ckpts = tmp_path / 'ckpts'
    nnet = ckpts / '5.ckpt' / 'nnet.pth'
    nnet.write_bytes(nnet.read_bytes()[:nnet.stat().st_size // 2])                # truncated
    rng = ckpts / '4.ckpt' / 'rng_state_0.pth'
    rng.write_bytes(bytes(random.Random(0).getrandbits(8) for _ in range(rng.stat().st_size)))  # garbage, same size
    os.remove(ckpts / '3.ckpt' / 'optimizer.pth')                                    # missing
    os.remove(ckpts / '2.ckpt' / 'manifest.json')                                    # an older checkpoint's layout,
    (ckpts / '2.ckpt' / 'train_state.json').write_text('{"step": 2, "num_pro')      # verified by loading
    os.makedirs(ckpts / '1.ckpt.tmp')                                                # a crashed re-save of step 1
    os.makedirs(ckpts / '7.ckpt.tmp')                                                # a crashed later save

    for resume, why in (('5.ckpt', r'nnet\.pth has \d+ bytes, the manifest says \d+'), ('9.ckpt', 'no such directory')):
        reset_accelerate()
        with pytest.raises(UserError, match=rf'^--resume=.*{resume} does not verify: {why}$'):
            Trainer(quick_config(n_steps=5), str(tmp_path), resume=str(ckpts / resume))

    reset_accelerate()
    with caplog.at_level('INFO'):
        trainer = Trainer(quick_config(n_steps=5, save_interval=1, keep_ckpts=2), str(tmp_path))
    assert trainer.step == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING' and 'skipped' in r.getMessage()]
    assert len(warnings) == 1, warnings
    for step, why in ((5, r'nnet\.pth has \d+ bytes, the manifest says \d+'),
                      (4, r'rng_state_0\.pth does not match its checksum'),
                      (3, r'optimizer\.pth is missing'),
                      (2, r'train_state\.json: JSONDecodeError: ')):
        assert len(re.findall(rf'{re.escape(str(ckpts))}/{step}\.ckpt \({why}', warnings[0])) == 1, (step, warnings)
    assert f'resuming from {ckpts}/1.ckpt' in warnings[0]
    assert "removed 1 temporary directory of interrupted saves" in caplog.text and '1.ckpt.tmp' in caplog.text
    assert not (ckpts / '1.ckpt.tmp').exists() and (ckpts / '7.ckpt.tmp').exists()

    trainer.fit()
    # re-saving steps 2..5 keeps each damaged directory aside; pruning (keep 2) deleted only verified ones
    names = sorted(os.listdir(ckpts))
    assert [n for n in names if n.endswith('.ckpt')] == ['4.ckpt', '5.ckpt'], names
    assert sorted(n.split('.')[0] for n in names if '.damaged-' in n) == ['2', '3', '4', '5'], names
    assert all(verify(str(ckpts / n)) is None for n in ('4.ckpt', '5.ckpt'))


def test_kills_at_every_point_of_a_save_always_resume_from_a_complete_checkpoint(tmp_path, monkeypatch):
    """One forked run per fault point, each the same run continued: killed inside the save of step latest + 2
    (after it saved latest + 1), it must leave a directory the next run resumes from. Then one kill -9 at a random
    moment, and a run to the end, which must equal an uninterrupted run bit for bit."""
    n_steps = 16
    config = quick_config(n_steps=n_steps, save_interval=1, keep_ckpts=2, gradient_accumulation_steps=2)
    work, ckpts = tmp_path / 'run', tmp_path / 'run' / 'ckpts'
    starts = tmp_path / 'starts.txt'

    def run(resume=''):
        trainer = Trainer(config, str(work), resume=resume)
        with open(starts, 'a') as f:
            f.write(f'{trainer.step}\n')
        trainer.fit()

    def last_start():
        return int(starts.read_text().split()[-1])

    def complete():
        return CheckpointManager(str(ckpts)).steps()

    faults = ['after_file:rng_state_0.pth', 'after_file:nnet.pth', 'after_file:nnet_ema.pth',
              'after_file:optimizer.pth', 'after_file:lr_scheduler.pth', 'after_file:train_state.json',
              'before_rename']
    latest = 0
    for point in faults:
        monkeypatch.setenv('UVIT_FAULT', f'{point}@{latest + 2}')
        status = wait(fork(run, str(tmp_path / 'log.txt')))
        assert status == -signal.SIGKILL, (point, status, (tmp_path / 'log.txt').read_text()[-2000:])
        assert last_start() == latest, point                       # resumed from the previous run's checkpoint
        assert complete()[-1] == latest + 1, (point, os.listdir(ckpts))
        assert (ckpts / f'{latest + 2}.ckpt.tmp').is_dir(), point  # the killed save's leftovers, never a checkpoint
        latest += 1

    monkeypatch.setenv('UVIT_FAULT', f'between_rename_and_prune@{latest + 2}')
    assert wait(fork(run, str(tmp_path / 'log.txt'))) == -signal.SIGKILL
    assert complete() == [latest, latest + 1, latest + 2]          # published, not yet pruned
    latest += 2

    # a re-save of the newest step, from the one before it, killed with the old directory moved aside
    monkeypatch.setenv('UVIT_FAULT', f'between_renames@{latest}')
    assert wait(fork(lambda: run(resume=str(ckpts / f'{latest - 1}.ckpt')), str(tmp_path / 'log.txt'))) \
        == -signal.SIGKILL
    assert not (ckpts / f'{latest}.ckpt').exists() and (ckpts / f'{latest}.ckpt.old').is_dir()

    monkeypatch.delenv('UVIT_FAULT')
    log = tmp_path / 'random.txt'
    pid = fork(run, str(log))
    while not log.exists() or 'training uvit' not in log.read_text():
        time.sleep(0.01)
    delay = random.uniform(0.0, 0.5)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    assert wait(pid) == -signal.SIGKILL, f'killed after {delay:.3f} s'
    assert f'restored {ckpts}/{latest}.ckpt from' in log.read_text()
    assert last_start() == latest

    final = tmp_path / 'final.txt'
    assert wait(fork(run, str(final))) == 0, final.read_text()[-2000:]
    assert 'resumed from' in final.read_text()
    assert not [n for n in os.listdir(ckpts) if not n.endswith('.ckpt')], os.listdir(ckpts)

    Trainer(quick_config(n_steps=n_steps, save_interval=n_steps, gradient_accumulation_steps=2),
            str(tmp_path / 'straight')).fit()
    assert_same_state(str(ckpts / f'{n_steps}.ckpt'), str(tmp_path / 'straight' / 'ckpts' / f'{n_steps}.ckpt'))


def test_a_child_killed_inside_a_progress_bar_leaves_the_parents_bars_working(tmp_path):
    """tqdm's default lock holds a multiprocessing semaphore that a forked child shares with its parent; the kill
    tests above SIGKILL training children that draw progress bars, which once left a test worker waiting forever at
    its next bar. Forked children take a lock of their own (libs.cli.own_progress_lock). In a fresh interpreter, so
    that a regression stalls that process (and fails here) and not this worker."""
    import subprocess
    import sys
    code = (
        'import os, signal, sys, threading, time\n'
        f'sys.path[:0] = [{os.path.dirname(os.path.abspath(__file__))!r}]\n'
        'from tqdm.auto import tqdm\n'
        'from forking import fork\n'
        'tqdm.get_lock()\n'
        'def hold_the_lock():\n'
        '    tqdm.get_lock().acquire()\n'
        '    time.sleep(60)\n'
        f'pid = fork(hold_the_lock, {str(tmp_path / "child.log")!r})\n'
        'time.sleep(1.0)\n'
        'os.kill(pid, signal.SIGKILL)\n'
        'os.waitpid(pid, 0)\n'
        'done = threading.Event()\n'
        'def bar():\n'
        '    with tqdm(total=1, file=open(os.devnull, "w")):\n'
        '        pass\n'
        '    done.set()\n'
        'threading.Thread(target=bar, daemon=True).start()\n'
        'print("bar made:", done.wait(10))\n'
        'os._exit(0)\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1:] == ['bar made: True'], result.stdout + result.stderr[-2000:]


def test_16_steps_equal_8_then_a_new_process_and_8_more_with_accumulation(tmp_path):
    config = quick_config(n_steps=16, save_interval=100, gradient_accumulation_steps=2)
    straight = Trainer(config, str(tmp_path / 'straight'))
    straight.fit()

    def eight_steps_then_preempted():
        trainer = Trainer(config, str(tmp_path / 'split'))
        train_step = trainer.train_step

        def step_then_signal(data):
            out = train_step(data)
            if trainer.step == 7:
                os.kill(os.getpid(), signal.SIGTERM)  # agreed in the next step: the run saves step 8 and exits
            return out

        trainer.train_step = step_then_signal
        trainer.fit()

    # the first 8 steps run in a child, so that the resumed run below inherits nothing from them but the checkpoint
    assert wait(fork(eight_steps_then_preempted, str(tmp_path / 'log.txt'))) == 0, \
        (tmp_path / 'log.txt').read_text()[-2000:]
    assert CheckpointManager(str(tmp_path / 'split' / 'ckpts')).steps() == [8]
    reset_accelerate()
    resumed = Trainer(config, str(tmp_path / 'split'))
    assert resumed.step == 8
    resumed.fit()
    assert_same_state(str(tmp_path / 'straight' / 'ckpts' / '16.ckpt'), str(tmp_path / 'split' / 'ckpts' / '16.ckpt'))
    for (key, a), b in zip(straight.backbone().state_dict().items(), resumed.backbone().state_dict().values()):
        assert torch.equal(a, b), key
    assert straight.lr_scheduler.get_last_lr() == resumed.lr_scheduler.get_last_lr()


def test_an_accumulation_set_by_the_launcher_that_differs_from_the_config_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv('ACCELERATE_GRADIENT_ACCUMULATION_STEPS', '4')
    with pytest.raises(UserError) as error:
        Trainer(quick_config(gradient_accumulation_steps=2), str(tmp_path))
    assert str(error.value) == ('gradient accumulation is set twice: accelerate launch --gradient_accumulation_steps=4 '
                                '(ACCELERATE_GRADIENT_ACCUMULATION_STEPS) and config.train.gradient_accumulation_steps=2; '
                                'set it in the config only')


def test_infinite_gradients_with_a_finite_loss_stop_before_the_update(tmp_path):
    trainer = Trainer(quick_config(n_steps=6, save_interval=2), str(tmp_path))
    backwards = {'n': 0}

    def infinite_from_step_3(grad):
        backwards['n'] += 1
        return grad * float('inf') if backwards['n'] >= 3 else grad

    trainer.backbone().pos_embed.register_hook(infinite_from_step_3)
    with pytest.raises(UserError, match=r'^gradients are not finite \(the loss is\) at step 3; training stopped before '
                                        r'updating the weights, the last good checkpoint .*2\.ckpt is kept'):
        trainer.fit()
    assert CheckpointManager(str(tmp_path / 'ckpts')).steps() == [2]
    for model in (trainer.backbone(), trainer.nnet_ema):
        assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    for name in ('nnet.pth', 'nnet_ema.pth', 'optimizer.pth'):
        saved = torch.load(tmp_path / 'ckpts' / '2.ckpt' / name, weights_only=True)
        tensors = saved.values() if name != 'optimizer.pth' else [t for s in saved['state'].values() for t in s.values()]
        assert all(torch.isfinite(t).all() for t in tensors), name


def test_a_score_that_raises_is_logged_on_one_line_and_training_goes_on(tmp_path, monkeypatch, caplog):
    import libs.metrics.digits_score

    def imaginary(*args, **kwargs):
        raise ValueError('Imaginary component 0.25')  # what pytorch-fid's sqrtm raised on too few samples

    monkeypatch.setattr(libs.metrics.digits_score, 'frechet_distance', imaginary)
    config = quick_config(n_steps=2, save_interval=1, final_eval=True)
    config.sample.update(n_samples=10, mini_batch_size=10, sample_steps=2)
    with caplog.at_level('ERROR'):
        result = Trainer(config, str(tmp_path)).fit()
    assert result == {}
    lines = [r.getMessage() for r in caplog.records if r.levelname == 'ERROR']
    assert lines == ['digits score of step 1 (10 samples) failed, training goes on: ValueError: Imaginary component 0.25',
                     'digits score of step 2 (10 samples) failed, training goes on: ValueError: Imaginary component 0.25']
    assert CheckpointManager(str(tmp_path / 'ckpts')).steps() == [1, 2]


def test_directory_fsync_errors_propagate_and_pruning_keeps_damaged_checkpoints(tmp_path, monkeypatch):
    manager = CheckpointManager(str(tmp_path), keep=2)
    for step in (1, 2, 3, 4):
        tmp = manager.begin(step, True)
        manager.write_json(tmp, 'train_state.json', {'step': step})
        manager.commit(tmp, step)
    assert manager.steps() == [3, 4]
    (tmp_path / '4.ckpt' / 'train_state.json').write_text('{}')   # damaged after it was written
    manager = CheckpointManager(str(tmp_path), keep=2)              # a new process: nothing verified yet
    for step in (5, 6):
        tmp = manager.begin(step, True)
        manager.write_json(tmp, 'train_state.json', {'step': step})
        manager.commit(tmp, step)
    assert manager.steps() == [4, 5, 6]                              # 4 does not count and is not deleted

    real_fsync = os.fsync

    def failing_directory_fsync(fd):
        if os.path.isdir(f'/proc/self/fd/{fd}'):
            raise OSError(errno.EIO, 'Input/output error')
        real_fsync(fd)

    monkeypatch.setattr(checkpoint_module.os, 'fsync', failing_directory_fsync)
    tmp = manager.begin(7, True)
    manager.write_json(tmp, 'train_state.json', {'step': 7})
    with pytest.raises(UserError, match=r'cannot publish checkpoint .*7\.ckpt: \[Errno 5\] Input/output error'):
        manager.commit(tmp, 7)
    assert manager.steps() == [4, 5, 6]


class ScriptedPeers:
    """An Agreement stand-in for one process of a multi-node run: each exchange returns the other processes' values
    from a script, with this process's own value in its slot."""

    def __init__(self, rank: int, world: int, script: list):
        self.rank, self.world, self.script = rank, world, list(script)

    def exchange(self, value, what: str) -> list:
        values = list(self.script.pop(0))
        values[self.rank] = value
        return values


def test_storage_detection_tells_shared_from_node_local_directories(tmp_path):
    """Two nodes of one process each (first processes 0 and 1): rank 0 writes a marker with a fresh token, each
    node's first process looks for it."""
    root = tmp_path / 'ckpts'
    # rank 1 on a node with its own disk: rank 0's token is not in its directory -> it writes its node's checkpoints
    peers = ScriptedPeers(1, 2, [[0, None], [('token-of-rank-0', None), None], [True, None]])
    assert checkpoint_module.detect_storage(str(root), peers, local_rank=0) == \
        checkpoint_module.Storage(shared=False, writer=True, ranks=(1,))
    # the same, with the directory shared: rank 0's marker is there -> rank 0 alone writes, for both processes
    root.mkdir()
    (root / checkpoint_module.STORAGE_MARKER).write_text('token-of-rank-0')
    peers = ScriptedPeers(1, 2, [[0, None], [('token-of-rank-0', None), None], [True, None]])
    assert checkpoint_module.detect_storage(str(root), peers, local_rank=0) == \
        checkpoint_module.Storage(shared=True, writer=False, ranks=(0, 1))
    # rank 0, whose peer node does not see the marker: node-local, and the marker is removed again
    peers = ScriptedPeers(0, 2, [[None, 1], [None, (None, None)], [None, False]])
    assert checkpoint_module.detect_storage(str(root), peers, local_rank=0) == \
        checkpoint_module.Storage(shared=False, writer=True, ranks=(0,))
    assert not (root / checkpoint_module.STORAGE_MARKER).exists()
    # three nodes, of which only the second shares rank 0's directory: one line, not a run that half works
    peers = ScriptedPeers(0, 3, [[None, 1, 2], [None, (None, None), (None, None)], [None, True, False]])
    with pytest.raises(UserError, match=r'is shared by some nodes \(first processes \[0, 1\]\) but not by others'):
        checkpoint_module.detect_storage(str(root), peers, local_rank=0)
    # one node: shared without a marker
    assert checkpoint_module.detect_storage(str(root), ScriptedPeers(1, 2, [[0, None]]), local_rank=1) == \
        checkpoint_module.Storage(shared=True, writer=False, ranks=(0, 1))


class Planted:
    """A pickle that runs code when loaded unsafely: unpickling it calls os.makedirs(path)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return os.makedirs, (self.path,)


@pytest.fixture(scope='module')
def two_checkpoints(tmp_path_factory):
    """A run with verified checkpoints at steps 2 and 4, written once for the module."""
    reset_accelerate()
    work = tmp_path_factory.mktemp('planted') / 'run'
    config = quick_config(n_steps=4, save_interval=2, keep_ckpts=0)
    config.eval.train_n_samples = 0
    Trainer(config, str(work)).fit()
    reset_accelerate()
    return config, work


def test_a_planted_pickle_in_any_checkpoint_file_is_refused_and_the_run_resumes_from_the_previous_one(
        two_checkpoints, tmp_path, caplog):
    """Each .pth file of checkpoint 4 in turn holds a pickle that would run code, with the manifest re-signed so
    that it verifies: loading refuses it in one line, the run resumes from checkpoint 2, and the code never runs."""
    import pickle
    import shutil
    config, work = two_checkpoints
    names = sorted(n for n in os.listdir(work / 'ckpts' / '4.ckpt') if n.endswith('.pth'))
    assert names == ['lr_scheduler.pth', 'nnet.pth', 'nnet_ema.pth', 'optimizer.pth', 'rng_state_0.pth']
    for name in names:  # what the run writes is plain data: torch reads it without any allowance
        torch.load(work / 'ckpts' / '4.ckpt' / name, weights_only=True)
    marker = tmp_path / 'code_ran'
    pickle.loads(pickle.dumps(Planted(str(marker))))  # the plant is live: unpickled unsafely, it runs
    assert marker.is_dir()
    marker.rmdir()
    for name in names:
        copy = tmp_path / name
        shutil.copytree(work, copy)
        ckpt = str(copy / 'ckpts' / '4.ckpt')
        checkpoint_module.replace_file(ckpt, name, {'state': Planted(str(marker))})
        assert verify(ckpt) is None  # re-signed: the manifest no longer stops it before torch.load
        reset_accelerate()
        caplog.clear()
        with caplog.at_level('WARNING'):
            trainer = Trainer(config, str(copy))
        assert trainer.step == 2, name
        refusal = (f'{ckpt} ({name}: refused, it holds a pickled os.makedirs, which could run code if loaded); '
                   f'resuming from {copy}/ckpts/2.ckpt')
        assert [r.getMessage() for r in caplog.records if refusal in r.getMessage()], (name, caplog.text)
        assert not marker.exists(), name
    os.remove(os.path.join(ckpt, 'manifest.json'))  # a checkpoint of the layout before manifests verifies by loading
    assert verify(ckpt) == f'{names[-1]}: refused, it holds a pickled os.makedirs, which could run code if loaded'
    assert not marker.exists()
