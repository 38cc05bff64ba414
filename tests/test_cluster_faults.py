"""Several processes (gloo on the CPU): a SIGTERM that reaches one rank, a rank that cannot write its file, a rank
that vanishes, a rank that stalls. Every decision about a checkpoint is agreed, so the processes go on together or
stop together with the same error line, and none hangs."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from forking import fork_ranks, wait
from libs.training.checkpoint import Agreement, CheckpointManager, read_train_state, verify
from libs.training.loop import Trainer
from test_checkpoint_reliability import assert_same_state, quick_config
from test_training import DIGITS_CONFIG, ROOT, TINY

pytestmark = pytest.mark.usefixtures('fresh_accelerate_state', 'one_thread')

# the command-line form of quick_config(), with a learning rate that does not depend on train.n_steps
OVERRIDES = [f'--config.nnet.{k}={v}' for k, v in TINY.items()] + [
    '--config.log_with=none', '--config.train.num_workers=0', '--config.train.final_eval=False',
    '--config.train.log_interval=1', '--config.train.eval_interval=1000000000', '--config.train.batch_size=32',
    '--config.train.save_interval=1', '--config.optimizer.lr=0.002', '--config.lr_scheduler.warmup_steps=2',
    '--config.lr_scheduler.name=customized', '--config.eval.train_n_samples=10', '--config.eval.train_sample_steps=2']


def rank_pid(parent: int, rank: int) -> int:
    """The pid of the child of ``parent`` (torchrun) whose environment says RANK=<rank>."""
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/stat') as f:
                ppid = int(f.read().rsplit(')', 1)[1].split()[1])
            with open(f'/proc/{pid}/environ', 'rb') as f:
                environ = f.read().split(b'\0')
        except OSError:
            continue
        if ppid == parent and f'RANK={rank}'.encode() in environ:
            return int(pid)
    raise AssertionError(f'no rank {rank} among the children of {parent}')


def test_sigterm_to_one_rank_under_torchrun_saves_one_step_on_both_and_resumes_exactly(tmp_path):
    """Two processes under torchrun; SIGTERM reaches rank 1 only: both save the same step and exit 0. The same
    command resumes, and its next checkpoint equals an uninterrupted two-process run's (a forked one, for time). In
    that resumed run rank 1 then runs out of disk space writing its file of the checkpoint after: every rank stops
    with the same error line, within seconds, and the checkpoint before is kept."""
    work, ckpts = tmp_path / 'run', tmp_path / 'run' / 'ckpts'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           os.path.join(ROOT, 'train.py'), f'--config={DIGITS_CONFIG}', f'--workdir={work}',
           '--config.train.n_steps=100000'] + OVERRIDES
    env = dict(os.environ, ACCELERATE_USE_CPU='true', OMP_NUM_THREADS='1')
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics, deadline = work / 'metrics.jsonl', time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.05)
    os.kill(rank_pid(proc.pid, 1), signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out[-3000:]
    assert out.count('received signal 15') == 1, out[-3000:]           # one rank got it ...
    stopped = CheckpointManager(str(ckpts)).steps()[-1]
    assert out.count(f'stopped by signal at step {stopped};') == 2       # ... and both stopped after the same step
    state = read_train_state(str(ckpts / f'{stopped}.ckpt'))
    assert state['num_processes'] == 2 and state['replicas_equal'] is True
    manifest = json.loads((ckpts / f'{stopped}.ckpt' / 'manifest.json').read_text())
    assert {'rng_state_0.pth', 'rng_state_1.pth', 'nnet.pth'} <= set(manifest['files'])
    assert verify(str(ckpts / f'{stopped}.ckpt')) is None

    env['UVIT_FAULT'] = f'enospc:rng_state_1.pth@{stopped + 2}'
    start = time.time()
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode != 0 and time.time() - start < 120, out[-3000:]
    assert f'resumed from {ckpts}/{stopped}.ckpt (step {stopped})' in out
    error = (f'error: out of disk space while writing checkpoint to {ckpts}/{stopped + 2}.ckpt.tmp; the previous '
             f'checkpoint {ckpts}/{stopped + 1}.ckpt is kept (process 1)')
    assert [line for line in out.splitlines() if line.startswith('error:')] == [error], out[-3000:]
    assert out.count('exitcode  : 2') == 2, out[-3000:]                  # torchrun's summary: both ranks, status 2
    assert not (ckpts / f'{stopped + 2}.ckpt.tmp').exists()
    assert verify(str(ckpts / f'{stopped + 1}.ckpt')) is None

    config = quick_config(n_steps=stopped + 1, save_interval=1)
    config.lr_scheduler.name = 'customized'
    pids = fork_ranks(lambda: Trainer(config, str(tmp_path / 'straight')).fit(), 2, str(tmp_path))
    assert [wait(pid) for pid in pids] == [0, 0], (tmp_path / 'rank0.log').read_text()[-3000:]
    resolved = [json.loads((d / 'config.json').read_text()) for d in (work, tmp_path / 'straight')]
    for c in resolved:
        c['train'].pop('n_steps')
    assert resolved[0] == resolved[1]
    assert_same_state(str(ckpts / f'{stopped + 1}.ckpt'), str(tmp_path / 'straight' / 'ckpts' / f'{stopped + 1}.ckpt'))


def test_a_vanished_process_stops_the_other_without_a_save_even_on_sigterm(tmp_path):
    """Rank 1 is killed (kill -9), then rank 0 gets the SIGTERM a launcher sends: rank 0 exits with one error line
    and saves nothing, since a save needs every process."""
    work, ckpts = tmp_path / 'run', tmp_path / 'run' / 'ckpts'
    config = quick_config(n_steps=100000, save_interval=2)
    pids = fork_ranks(lambda: Trainer(config, str(work)).fit(), 2, str(tmp_path))
    deadline = time.time() + 60
    while time.time() < deadline and not CheckpointManager(str(ckpts)).steps():
        time.sleep(0.02)
    os.kill(pids[1], signal.SIGKILL)
    os.kill(pids[0], signal.SIGTERM)
    start = time.time()
    assert wait(pids[0], timeout=60) == 2 and time.time() - start < 30
    assert wait(pids[1]) == -signal.SIGKILL
    log = (tmp_path / 'rank0.log').read_text()
    errors = [line for line in log.splitlines() if line.startswith('ERROR error:')]
    # killed in a step ("step N failed ... another process exited"), in a save ("lost contact with another
    # process") or just after one ("saved by this process but not confirmed")
    assert len(errors) == 1 and 'another process' in errors[0], log[-3000:]
    assert 'is kept' in errors[0] or 'saved by this process' in errors[0], log[-3000:]
    assert 'stopped by signal' not in log
    assert all(verify(str(ckpts / f'{step}.ckpt')) is None for step in CheckpointManager(str(ckpts)).steps())


def test_a_process_that_stalls_at_a_save_is_one_error_line_within_the_timeout(tmp_path):
    """Rank 1 arrives 3 s late (a hung file system, say) at the exchange that ends a save, with a 1 s timeout: rank 0
    stops after the timeout, and rank 1, once it arrives, with the same line."""
    def agree():
        import torch.distributed as dist
        dist.init_process_group('gloo')
        agreement = Agreement(timeout_s=1.0)
        if agreement.rank == 1:
            time.sleep(3)
        start = time.time()
        try:
            agreement.outcome(None, 'checkpoint 8 not saved')
        finally:
            (tmp_path / f'waited{agreement.rank}.txt').write_text(f'{time.time() - start:.3f}')

    pids = fork_ranks(agree, 2, str(tmp_path))
    assert [wait(pid, timeout=30) for pid in pids] == [2, 2]
    line = ('ERROR error: checkpoint 8 not saved: lost contact with another process (it exited, or did not respond '
            'within train.checkpoint_timeout_s=1 s)')
    for rank in (0, 1):
        assert line in (tmp_path / f'rank{rank}.log').read_text().splitlines()
    waited = float((tmp_path / 'waited0.txt').read_text())
    assert 0.9 < waited < 2.5, waited
