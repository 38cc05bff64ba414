"""eval.py end to end: samples split into rounds, in-process scores equal scores of the written PNGs, and every
score is stored as JSON with its settings beside the weights."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from libs.config import d
from libs.data import build_dataset
from libs.metrics import fid
from libs.nnets import build_nnet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS_CONFIG = os.path.join(ROOT, 'configs', 'digits_uvit_tiny.py')
TINY = dict(name='uvit', img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=2, num_classes=10)


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('weights') / 'tiny_ema.pth'
    torch.save(build_nnet(TINY).state_dict(), path)
    return str(path)


def run_eval(args):
    overrides = [f'--config.nnet.{k}={v}' for k, v in TINY.items() if k != 'name']
    cmd = [sys.executable, os.path.join(ROOT, 'eval.py'), f'--config={DIGITS_CONFIG}'] + overrides + args
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_fid_of_eval_equals_fid_of_its_pngs_and_is_stored_with_its_settings(tmp_path, weights, random_weights):
    real = torch.stack([build_dataset(d(name='digits'))[i][0] for i in range(30)])
    features = fid.InceptionFeatures(fid.load_inception(random_weights))
    ref = tmp_path / 'ref.npz'
    fid.save_stats(str(ref), *fid.activation_statistics(features(real)))
    pngs = tmp_path / 'pngs'
    result = run_eval([f'--nnet_path={weights}', '--config.eval.metric=fid', f'--config.eval.ref_stats={ref}',
                       f'--config.eval.inception_path={random_weights}', '--config.sample.n_samples=25',
                       '--config.sample.mini_batch_size=10', '--config.sample.sample_steps=4',
                       f'--config.sample.path={pngs}'])
    assert result.returncode == 0, result.stderr[-3000:]
    printed = float(result.stdout.strip().splitlines()[-1].split('fid=')[1])
    record_path = os.path.join(os.path.dirname(weights), 'eval_fid_dpm_solver++_nfe4_n25_scale0_ema.json')
    record = json.loads(open(record_path).read())
    assert record['fid'] == pytest.approx(printed, abs=1e-4)
    assert record['n_samples'] == 25 and record['nfe'] == 4 and record['algorithm'] == 'dpm_solver++'
    assert record['ema'] is True and record['guidance_scale'] == 0 and record['reference_statistics'] == str(ref)
    assert record['weights'] == weights
    files = sorted(os.listdir(pngs))
    assert files == [f'{i:06d}.png' for i in range(25)]      # 3 rounds of 10, the last one cut to 25
    from libs.images import load_png
    images = torch.from_numpy(np.stack([load_png(str(pngs / f)) for f in files])).permute(0, 3, 1, 2)
    from_pngs = fid.fid_from_activations(features(images), str(ref))
    assert from_pngs == pytest.approx(record['fid'], rel=1e-3)


def test_digits_score_of_a_checkpoint_directory(tmp_path, weights):
    ckpt = tmp_path / '7.ckpt'
    ckpt.mkdir()
    os.link(weights, ckpt / 'nnet_ema.pth')
    result = run_eval([f'--nnet_path={ckpt}', '--config.sample.n_samples=20', '--config.sample.mini_batch_size=20',
                       '--config.sample.sample_steps=3'])
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((ckpt / 'eval_digits_dpm_solver++_nfe3_n20_scale0_ema.json').read_text())
    assert record['weights'] == str(ckpt / 'nnet_ema.pth')
    assert 0.0 <= record['digits_accuracy'] <= 1.0 and record['digits_frechet_distance'] > 0
    assert f"digits_accuracy={record['digits_accuracy']:.4f}" in result.stdout


def test_gathered_samples_are_put_back_in_file_name_order():
    from libs.evaluation import gathered_order
    world, rounds, mb, n = 3, 2, 4, 21
    # what accelerate.gather returns: each process's rounds, one process after the other
    rows = [(r * world + rank) * mb + i for rank in range(world) for r in range(rounds) for i in range(mb)]
    assert torch.tensor(rows)[gathered_order(world, rounds, mb, n)].tolist() == list(range(n))
    assert gathered_order(1, 3, 5, 12).tolist() == list(range(12))


@pytest.mark.parametrize('args,message', [
    (['--config.eval.metric=fid', '--config.eval.ref_stats=/nowhere/ref.npz'],
     'error: FID reference statistics not found: /nowhere/ref.npz'),
    (['--config.eval.metric=fid', '--config.eval.ref_stats=/nowhere/ref.npz',
      '--config.eval.inception_path=/nowhere/inception.pth'], 'error: FID reference statistics not found'),
    (['--config.sample.algorithm=heun'], "error: unknown sample.algorithm 'heun'; known: dpm_solver, dpm_solver++"),
    (['--config.nnet.embed_dim=48'], "does not fit the model: 'pos_embed' has shape (1, 18, 32), the model "
                                     "expects (1, 18, 48)"),
])
def test_eval_errors_are_one_line(weights, args, message):
    result = run_eval([f'--nnet_path={weights}', '--config.sample.n_samples=4', '--config.sample.sample_steps=2']
                      + args)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert message in lines[-1] and 'Traceback' not in result.stderr, result.stderr
