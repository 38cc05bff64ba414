"""scripts/benchmark.py on a tiny digits U-ViT: every requested variant is measured, FLOPs match a closed form."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from forking import run_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'scripts', 'benchmark.py')
DIGITS_CONFIG = os.path.join(ROOT, 'configs', 'digits_uvit_tiny.py')
# configs/digits_uvit_tiny.py with the overrides below.
TINY = dict(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4, num_classes=10)
OVERRIDES = [f'--config.nnet.{key}={TINY[key]}' for key in ('embed_dim', 'depth', 'num_heads', 'mlp_ratio')]
BATCH = 4
NUMBERS = ('train_step_ms', 'train_img_per_s', 'peak_memory_mib', 'train_tflops', 'sample_forward_ms',
           'sample_img_per_s_per_nfe', 'sample_img_per_s_50nfe_derived', 'sample_tflops')


def run_benchmark(*args, fork=True):
    """benchmark.py on the tiny digits U-ViT: in a forked child of this process (tests/forking.py: the command line
    without the seconds of imports), or with ``fork=False`` in a fresh interpreter."""
    args = [f'--config={DIGITS_CONFIG}', *OVERRIDES, *args]
    if fork:
        return run_script(SCRIPT, args, cwd=ROOT, timeout=300)
    # One thread per process: the subprocesses must not fight over the cores of a busy CI machine.
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)


def uvit_forward_flops(img_size, patch_size, in_chans, embed_dim, depth, mlp_ratio, num_classes, **_):
    """Matmul and convolution FLOPs (2 per multiply-add) of one U-ViT forward pass for one image.

    N patches, L = N + extras tokens (time, and the label when class-conditional), width D:
    patch embedding N * 2 (p^2 C) D; per block qkv 2 L D 3D, attention scores and values 2 * 2 L^2 D,
    projection 2 L D^2, MLP 2 * 2 L D (r D); each of the depth // 2 deep blocks adds its skip fusion 2 L (2D) D;
    the decoder 2 L D (p^2 C) runs on all L tokens; the final 3x3 convolution 2 (9 C) C H W.
    """
    n = (img_size // patch_size) ** 2
    tokens = n + (2 if num_classes > 0 else 1)
    dim, patch_dim, hidden = embed_dim, patch_size ** 2 * in_chans, int(embed_dim * mlp_ratio)

    def linear(fan_in, fan_out, rows=tokens):
        return 2 * fan_in * fan_out * rows

    block = linear(dim, 3 * dim) + 2 * 2 * tokens ** 2 * dim + linear(dim, dim) + linear(dim, hidden) \
        + linear(hidden, dim)
    num_blocks = 2 * (depth // 2) + 1
    return (linear(patch_dim, dim, n) + num_blocks * block + (depth // 2) * linear(2 * dim, dim)
            + linear(dim, patch_dim) + 2 * 9 * in_chans * in_chans * img_size ** 2)


@pytest.fixture(scope='module')
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('benchmark') / 'results.json'
    # REPA is on for its own variant only; its encoder's weights are absent, so a random one of the same size stands in
    repa = ['--config.repa.weight=0.5', '--config.repa.encoder=digits', '--config.repa.depth=1',
            '--config.repa.projector_dim=16', f'--config.repa.encoder_path={out.parent / "absent.pt"}']
    # a fresh interpreter measuring the variants in itself (a fresh process per variant, benchmark.py's default, is
    # tested on the discrete config below)
    proc = run_benchmark(f'--batch_size={BATCH}', '--steps=2', '--warmup=1', *repa,
                         '--variants=baseline,attention,checkpointing,repa', '--in_process', f'--out={out}', fork=False)
    assert proc.returncode == 0, proc.stderr
    with open(out) as f:
        return json.load(f), proc.stdout


def test_every_variant_is_measured(bench_run):
    report, _ = bench_run
    assert list(report['variants']) == ['baseline', 'attention=math', 'attention=xformers', 'checkpointing', 'repa']
    assert report['variants']['repa']['note'] == 'digits encoder with random weights'
    assert report['variants']['baseline']['settings']['repa'] is False
    assert report['variants']['attention=xformers']['status'] in ('ok', 'unavailable')
    measured = [r for r in report['variants'].values() if r['status'] == 'ok']
    assert len(measured) >= 4
    for result in measured:
        for key in NUMBERS:
            assert math.isfinite(result[key]) and result[key] > 0, (key, result[key])
        assert len(result['train_step_ms_all']) == 2 and len(result['train_warmup_ms']) == 1
    assert report['variants']['checkpointing']['settings']['checkpointing'] is True
    assert report['variants']['attention=math']['settings']['attention'] == 'math'
    assert report['batch_size'] == BATCH and report['sample_batch'] == BATCH


def test_flops_match_the_closed_form(bench_run):
    report, _ = bench_run
    expected = uvit_forward_flops(**TINY)
    assert report['flops']['forward_per_image'] == pytest.approx(expected, rel=0.02)
    assert report['flops']['train_step'] == 3 * report['flops']['forward_per_image'] * BATCH
    baseline = report['variants']['baseline']
    tflops = report['flops']['train_step'] / (baseline['train_step_ms'] * 1e-3) / 1e12
    assert baseline['train_tflops'] == pytest.approx(tflops)


def test_markdown_table_lists_every_variant(bench_run):
    report, stdout = bench_run
    assert stdout.startswith('Device: ')
    assert 'digits_uvit_tiny.py' in stdout.splitlines()[0]
    rows = [line.split('|')[1].strip() for line in stdout.splitlines() if line.startswith('| ')]
    assert rows[0] == 'variant'
    assert rows[1:] == list(report['variants'])


def test_gpu_check_reads_repas_overhead_from_this_report(bench_run):
    """The GPU check's REPA section (scripts/gpu_check.py: repa_overhead_result) on this report's baseline and repa
    rows: the step-time ratio and the extra memory are theirs, the random encoder is said; a failed variant fails it."""
    report, _ = bench_run
    spec = importlib.util.spec_from_file_location('gpu_check', os.path.join(ROOT, 'scripts', 'gpu_check.py'))
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    pair = dict(report, variants={name: report['variants'][name] for name in ('baseline', 'repa')})
    status, note, details = gpu_check.repa_overhead_result(pair, gpu_check.REPA_SIZES[True])
    base, repa = pair['variants']['baseline'], pair['variants']['repa']
    assert status == 'ok' and details['step_ratio'] == pytest.approx(repa['train_step_ms'] / base['train_step_ms'])
    assert details['extra_memory_mib'] == pytest.approx(repa['peak_memory_mib'] - base['peak_memory_mib'])
    assert note.endswith('digits encoder with random weights') and f"x{details['step_ratio']:.3f}" in note
    table = '\n'.join(gpu_check.repa_overhead_markdown(details))
    assert table.count('\n| ') == 3 and '| repa | ' in table
    broken = dict(pair, variants=dict(pair['variants'], repa=dict(status='failed', note='OutOfMemoryError')))
    status, note, details = gpu_check.repa_overhead_result(broken, gpu_check.REPA_SIZES[True])
    assert (status, note) == ('failed', 'repa: OutOfMemoryError') and 'step_ratio' not in details


def test_unknown_variant_is_one_line():
    proc = run_benchmark('--variants=baseline,flash')
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert errors == ["error: unknown variant 'flash'; known: all, baseline, attention, sdpa, precision, "
                      'checkpointing, compile, fused_optimizer, default, decode, repa, latent, autoencoders, '
                      'attention=math, attention=xformers, attention=flash, attention=cudnn, attention=efficient, '
                      'precision=fp32, precision=bf16, precision=fp16, latent=sd-vae-f8/p2, latent=sd-vae-f8/p4, '
                      'latent=dc-ae-f32c32/p1, latent=dc-ae-f64c128/p1, decode=sd-vae-f8, decode=sd3-vae, '
                      'decode=dc-ae-f32c32, decode=dc-ae-f64c128, compile=full']


def test_text_to_image_latent_config_trains_on_contexts_times_the_decoders_and_other_latent_spaces(tmp_path):
    """mscoco_uvit_small, tiny: its own latents and decoder, and the same backbone on DC-AE-f64's latents at 128 px
    (2x2x128 at patch 1: 4 image tokens) and on SD-VAE-f8's at patch 2 (16x16x4: 64), DC-AE-f32's decoder at 1/16
    of its widths; then the GPU check's latent-space rows made from this report."""
    out = tmp_path / 'results.json'
    tiny = ['--config.nnet.img_size=4', '--config.nnet.embed_dim=32', '--config.nnet.depth=2',
            '--config.nnet.num_heads=2', '--config.nnet.clip_dim=16']
    variants = 'baseline,decode,latent=sd-vae-f8/p2,latent=dc-ae-f64c128/p1,decode=dc-ae-f32c32'
    proc = run_script(SCRIPT, [f'--config={os.path.join(ROOT, "configs", "mscoco_uvit_small.py")}', *tiny,
                               '--batch_size=2', '--sample_batch=1', '--steps=1', '--warmup=0',
                               f'--variants={variants}',
                               '--resolution=128', '--ae_width_divisor=16', '--in_process', f'--out={out}'], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = report['variants']
    assert rows['decode']['decode_img_per_s'] > 0 and '1 latents 4x4x4 -> 32 px' in rows['decode']['note']
    baseline = rows['baseline']
    assert baseline['status'] == 'ok' and baseline['train_img_per_s'] > 0 and report['tokens'] == 4  # 4x4, patch 2
    # the context embedding alone (77 tokens, 16 -> 32) is 2 * 77 * 16 * 32 FLOPs: the text tokens are counted
    assert report['flops']['forward_per_image'] > 2 * 77 * 16 * 32

    f8, f64 = rows['latent=sd-vae-f8/p2'], rows['latent=dc-ae-f64c128/p1']
    assert (f8['tokens'], f64['tokens']) == (64, 4) and f8['speedup_vs_first'] == 1.0
    assert '4x16x16 latents of 128 px' in f8['note'] and '128x2x2 latents of 128 px' in f64['note']
    assert f64['forward_flops'] < f8['forward_flops'] and f64['train_img_per_s'] > 0
    assert f64['train_tflops'] == pytest.approx(3 * f64['forward_flops'] * 2 / (f64['train_step_ms'] * 1e-3) / 1e12)
    assert '1 latents 32x4x4 -> 128 px' in rows['decode=dc-ae-f32c32']['note']
    assert [line.split('|')[2].strip() for line in proc.stdout.splitlines() if line.startswith('| l')] == ['64', '4']

    spec = importlib.util.spec_from_file_location('gpu_check', os.path.join(ROOT, 'scripts', 'gpu_check.py'))
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    status, note, details = gpu_check.latent_spaces_result(report, gpu_check.LATENT_SIZES[True])
    fastest = max(r['speedup_vs_first'] for r in rows.values() if 'speedup_vs_first' in r)  # timings, not asserted
    assert status == 'ok' and f'x{fastest:.1f} as fast' in note
    table = '\n'.join(gpu_check.latent_spaces_markdown(details))
    assert '| latent=dc-ae-f64c128/p1 | 4 |' in table and table.count('\n| ') == len(rows) + 1


def test_a_discrete_config_times_training_and_whole_tau_leaping_steps(tmp_path):
    """The absorbing digits config: two input channels for one of data, and sampling timed as tau-leaping steps;
    measured as benchmark.py measures by default, in a fresh process of its own (a forked run here starts it)."""
    out = tmp_path / 'results.json'
    tiny = ['--config.nnet.embed_dim=32', '--config.nnet.depth=2', '--config.nnet.num_heads=2']
    config = os.path.join(ROOT, 'configs', 'digits_discrete_uvit.py')
    proc = run_script(SCRIPT, [f'--config={config}', *tiny, '--batch_size=4', '--sample_batch=4', '--steps=2',
                               '--warmup=1', '--variants=baseline', f'--out={out}'], cwd=ROOT,
                      env=dict(os.environ, OMP_NUM_THREADS='1'), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    baseline = json.loads(out.read_text())['variants']['baseline']
    assert baseline['status'] == 'ok' and baseline['train_img_per_s'] > 0 and baseline['sample_img_per_s_per_nfe'] > 0


def fake_release(root, files: dict) -> str:
    """A folder laid out like a clone of a release, with ``files`` ({relative path: text})."""
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(root)


def test_against_a_release_times_three_networks_on_one_set_of_weights(tmp_path):
    """Our own U-ViT stands in for the release's libs/uvit.py (which, like the release's, imports a helper of its
    own package relatively): one set of weights and the same inputs give each network the same first loss."""
    clone = fake_release(tmp_path / 'U-ViT', {'libs/uvit.py': 'from .helpers import UViT  # noqa: F401\n',
                                             'libs/helpers.py': 'from libs.nets.uvit import UViT  # noqa: F401\n'})
    out = tmp_path / 'against.json'
    proc = run_benchmark(f'--against={clone}', f'--batch_size={BATCH}', '--steps=1', '--warmup=1', '--rounds=2',
                         f'--out={out}')
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    networks = report['networks']
    assert list(networks) == ['release (eager)', 'ours (eager)', 'ours (default path)']
    losses = [r['first_loss'] for r in networks.values()]
    assert math.isfinite(losses[0]) and losses == [losses[0]] * 3
    for r in networks.values():
        assert len(r['round_ms']) == 2 and len(r['warmup_ms']) == 1
        assert all(math.isfinite(ms) and ms > 0 for ms in r['round_ms'])
        assert r['step_ms'] == pytest.approx(sorted(r['round_ms'])[0] / 2 + sorted(r['round_ms'])[1] / 2)
    release = networks['release (eager)']['step_ms']
    assert report['ratios'] == pytest.approx({'ours_eager/release_eager': networks['ours (eager)']['step_ms'] / release,
                                              'ours_default/release_eager':
                                                  networks['ours (default path)']['step_ms'] / release})
    assert not any(report['default_path'].values())  # on a CPU train.py's default path is eager
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith('ours eager / release eager = ') and 'ours default path / release eager = ' in last
