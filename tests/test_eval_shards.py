"""Resumable sample scores (libs/evaluation/shards.py): a killed eval.py continues where it stopped, samples only the
missing chunks and gives the score of an uninterrupted run; chunks of other settings are never mixed in."""
import dataclasses
import json
import logging
import os
import re
import subprocess
import sys

import pytest
import torch

from forking import run_script
from libs.config import load_config_file
from libs.errors import UserError
from libs.evaluation.harness import EvalRun
from libs.evaluation.shards import ShardStore
from libs.nets import build_nnet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS_CONFIG = os.path.join(ROOT, 'configs', 'digits_uvit_tiny.py')
TINY = dict(embed_dim=32, depth=2, num_heads=2)
RESULT = 'eval_sample_digits_n60_digits_unipc_nfe3_scale0.5_ema'

# eval.py, with every chunk written reported on stderr and, when KILL_AFTER_CHUNKS is set, SIGKILL after that many
WRAPPER = '''import os, runpy, signal, sys
sys.path.insert(0, {root!r})
from libs.evaluation import shards
write, written = shards.ShardStore.write, []

def reporting_write(self, chunk, rows, labels):
    write(self, chunk, rows, labels)
    written.append(chunk)
    print(f'chunk written: {{chunk}}', file=sys.stderr, flush=True)
    if len(written) == int(os.environ.get('KILL_AFTER_CHUNKS', 0)):
        os.kill(os.getpid(), signal.SIGKILL)

shards.ShardStore.write = reporting_write
sys.argv[0] = os.path.join({root!r}, 'eval.py')
runpy.run_path(sys.argv[0], run_name='__main__')
'''


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    torch.manual_seed(0)
    config = load_config_file(DIGITS_CONFIG)
    config.nnet.update(TINY)
    path = tmp_path_factory.mktemp('weights') / 'nnet_ema.pth'
    torch.save(build_nnet(config.nnet).state_dict(), path)
    return str(path)


def test_a_store_keeps_its_chunks_and_ignores_those_of_other_settings(tmp_path, caplog):
    directory = str(tmp_path / 'shards')
    rows = torch.randn(25, 3)
    labels = torch.arange(25)
    store = ShardStore(directory, 25, 10, {'seed': 1, 'sampler': 'a'})
    assert store.prepare() == [0, 1, 2] and [store.bounds(j) for j in range(3)] == [(0, 10), (10, 20), (20, 25)]
    store.write(0, rows[:10], labels[:10])
    store.write(2, rows[20:], labels[20:])
    with pytest.raises(ValueError, match=r'samples \[10, 20\)'):
        store.write(1, rows[10:19], labels[10:19])
    with pytest.raises(UserError, match='1 of 3 chunks of samples are missing'):
        store.read(visible_within_s=0)
    leftover = os.path.join(directory, '.0000010-0000020.pt.x1y2.tmp')  # a write cut short by a kill
    open(leftover, 'w').close()
    again = ShardStore(directory, 25, 10, {'seed': 1, 'sampler': 'a'})
    assert again.prepare() == [1] and not os.path.exists(leftover)
    again.write(1, rows[10:20], labels[10:20])
    read_rows, read_labels = again.read()
    assert torch.equal(read_rows, rows) and torch.equal(read_labels, labels)

    caplog.set_level(logging.WARNING)
    other = ShardStore(directory, 25, 10, {'seed': 2, 'sampler': 'a'})
    assert other.prepare() == [0, 1, 2] and other.done() == []
    assert 'settings.seed: 1 -> 2' in caplog.text and 'sampler' not in caplog.text
    smaller_batches = ShardStore(directory, 25, 5, {'seed': 2, 'sampler': 'a'})
    assert smaller_batches.prepare() == list(range(5)) and 'chunk_size: 10 -> 5' in caplog.text

    for j in range(5):
        smaller_batches.write(j, rows[5 * j:5 * j + 5], None)
    assert smaller_batches.read()[1] is None  # unconditional samples have no labels
    with open(smaller_batches.path(0), 'wb') as f:
        f.write(b'not a tensor file')
    with pytest.raises(UserError, match='cannot read .*0000000-0000005.pt'):
        smaller_batches.read(visible_within_s=0)


def test_the_settings_change_with_what_changes_the_samples(tmp_path, weights):
    config = load_config_file(DIGITS_CONFIG)
    config.nnet.update(TINY)
    config.sample.update(n_samples=20, mini_batch_size=10, sample_steps=3)
    run = EvalRun.load(config, weights)
    settings = run.shard_settings(config.sample)
    assert settings == run.shard_settings(config.sample.copy_and_resolve_references())
    fewer_steps = config.sample.copy_and_resolve_references()
    fewer_steps.sample_steps = 2
    assert settings['config']['sample'] != run.shard_settings(fewer_steps)['config']['sample']
    other = tmp_path / 'other.pth'
    state = torch.load(weights, weights_only=True)
    state['pos_embed'] += 1e-3
    torch.save(state, other)
    assert dataclasses.replace(run, weights=str(other)).shard_settings(config.sample)['weights_sha256'] \
        != settings['weights_sha256']
    run.config.seed += 1
    assert run.shard_settings(config.sample)['config']['seed'] != settings['config']['seed']
    store = run.shard_store(RESULT, config.sample)
    assert store.directory == os.path.join(os.path.dirname(weights), RESULT + '_shards') and store.num_chunks == 2


def run_eval(wrapper, out, processes: int = 1, kill_after: int = 0):
    """eval.py on the weights in ``out``: 60 samples in chunks of 10 (n_samples and mini_batch_size). One process:
    a forked child of this one (tests/forking.py: the command line without the seconds of imports); more: torchrun."""
    args = [f'--config={DIGITS_CONFIG}', f'--nnet_path={out}', '--config.sample.n_samples=60',
            '--config.sample.mini_batch_size=10', '--config.sample.sample_steps=3']
    args += [f'--config.nnet.{k}={v}' for k, v in TINY.items()]
    env = dict(os.environ, ACCELERATE_USE_CPU='true', OMP_NUM_THREADS='1', KILL_AFTER_CHUNKS=str(kill_after))
    if processes == 1:
        result = run_script(str(wrapper), args, cwd=ROOT, env=env, timeout=300)
    else:
        launcher = ['-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={processes}']
        result = subprocess.run([sys.executable, *launcher, str(wrapper), *args], cwd=ROOT, capture_output=True,
                                text=True, env=env, timeout=300)
    written = sorted(int(chunk) for chunk in re.findall(r'chunk written: (\d+)', result.stderr))  # tqdm shares lines
    return result, written


def test_a_killed_evaluation_resumes_with_the_missing_chunks_and_scores_as_an_uninterrupted_one(tmp_path, weights):
    wrapper = tmp_path / 'eval_reporting_chunks.py'
    wrapper.write_text(WRAPPER.format(root=ROOT))
    whole, cut = tmp_path / 'whole', tmp_path / 'cut'
    for out in (whole, cut):
        out.mkdir()
        os.link(weights, out / 'nnet_ema.pth')

    result, written = run_eval(wrapper, whole)
    assert result.returncode == 0, result.stderr[-3000:]
    assert written == list(range(6))
    uninterrupted = json.loads((whole / (RESULT + '.json')).read_text())
    assert not (whole / (RESULT + '_shards')).exists()  # removed once the JSON holds the score

    result, written = run_eval(wrapper, cut, kill_after=2)
    assert result.returncode == -9, result.stderr[-3000:]
    shards = cut / (RESULT + '_shards')
    assert sorted(os.listdir(shards)) == ['0000000-0000010.pt', '0000010-0000020.pt', 'manifest.json']
    assert not (cut / (RESULT + '.json')).exists()

    # the same command on two processes: they share the four missing chunks
    result, written = run_eval(wrapper, cut, processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert written == [2, 3, 4, 5], result.stderr[-3000:]
    assert 'already sampled' in result.stdout and '2 of 6 chunks' in result.stdout, result.stdout
    resumed = json.loads((cut / (RESULT + '.json')).read_text())
    assert resumed['provenance']['num_processes'] == 2
    for key in ('digits_accuracy', 'digits_frechet_distance'):
        assert resumed[key] == uninterrupted[key], key
    assert not shards.exists()
