"""scripts/gpu_check.sh --smoke (what CI can run of the GPU check): every section runs or says why not, and the table
and the JSON hold sane numbers; bad arguments are one line; the checks' helpers find what they are meant to find."""
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'scripts', 'gpu_check.sh')
CONFIGS = ['imagenet256_uvit_large', 'imagenet64_uvit_mid', 'cifar10_uvit_small']
VARIANTS = ['baseline', 'precision=fp16', 'attention=xformers', 'checkpointing']
SECTIONS = ['install', 'startup', 'matmul_peak', *[f'bench:{c}' for c in CONFIGS], 'fp16_training', 'inception',
            'ddp', 'gpu_path', 'attention', 'against', 'checkpoint_memory', 'fid_walltime']
GPU = torch.cuda.is_available()


def load_module():
    spec = importlib.util.spec_from_file_location('gpu_check', os.path.join(ROOT, 'scripts', 'gpu_check.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = load_module()


def run_check(*args, timeout=400):
    # one thread per process, as CI's other tests; a process group of its own, so a timeout ends the children too
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.Popen(['bash', SCRIPT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def table_rows(markdown: str, header: str) -> list:
    """The cells of each row of the markdown table whose header row starts with ``| header |``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f'| {header} |'))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith('|'):
            break
        rows.append([cell.strip() for cell in line.strip('|').split('|')])
    return rows


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp('gpu_check')
    proc = run_check(str(out), '--smoke')
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    with open(out / 'gpu_check.json') as f:
        report = json.load(f)
    return report, (out / 'gpu_check.md').read_text(), proc.stdout


def test_every_section_runs_or_says_why_not(smoke):
    report, _, stdout = smoke
    assert [s['name'] for s in report['sections']] == SECTIONS
    for section in report['sections']:
        assert section['status'] in ('ok', 'skipped'), section
        assert section['seconds'] >= 0 and (section['status'] == 'ok' or section['note'])
    assert not report['failed'] and report['failure_logs'] == []
    assert positive(report['total_s'])
    assert sum(s['seconds'] for s in report['sections']) <= report['total_s'] + 0.5
    statuses = {s['name']: s['status'] for s in report['sections']}
    assert statuses['ddp'] == ('ok' if torch.cuda.device_count() > 1 else 'skipped')
    assert statuses['gpu_path'] == statuses['attention'] == statuses['fid_walltime'] == 'ok'
    assert statuses['against'] == 'skipped'  # no clone of a release given
    assert statuses['checkpoint_memory'] == ('ok' if GPU else 'skipped')
    assert 'wrote ' in stdout.splitlines()[-1]


def test_benchmark_rows_have_sane_numbers_and_mfu(smoke):
    report, _, _ = smoke
    peak = report['matmul_peak']
    assert positive(peak['tflops']) and peak['dtype'] == ('bf16' if GPU else 'fp32')
    assert list(report['benchmarks']) == CONFIGS
    for config in CONFIGS:
        rows = report['benchmarks'][config]['rows']
        assert list(rows) == VARIANTS
        measured = ['baseline', 'checkpointing'] + (['precision=fp16'] if GPU else [])
        for name in measured:
            row = rows[name]
            assert row['status'] == 'ok', (config, name, row)
            for key in ('train_step_ms', 'train_img_per_s', 'peak_memory_mib', 'train_tflops', 'mfu',
                        'sample_img_per_s_per_nfe'):
                assert positive(row[key]), (config, name, key, row.get(key))
            assert row['mfu'] == pytest.approx(row['train_tflops'] / peak['tflops'])
        assert rows['precision=fp16']['status'] == ('ok' if GPU else 'skipped')
        assert rows['attention=xformers']['status'] in ('ok', 'unavailable')


def test_the_default_gpu_path_attention_kernels_and_fid_wall_time_are_measured(smoke):
    """Issue 22's sections: train.py's default path (on a CPU: eager, as the baseline), the SDPA kernel each
    attention backend runs, and a FID evaluation's wall time extrapolated from one timed mini-batch."""
    report, markdown, _ = smoke
    from libs.config import load_config_file
    from libs.training.loop import default_path
    row = report['gpu_path']['cifar10_uvit_small']
    path = default_path(load_config_file(os.path.join(ROOT, 'configs', 'cifar10_uvit_small.py')),
                        'cuda' if GPU else 'cpu')
    assert row['status'] == 'ok' and row['settings']['fused_optimizer'] == path['fused_optimizer']
    assert row['settings']['compile'] == (path['compile'] or False)
    for key in ('train_step_ms', 'train_tflops', 'mfu', 'first_step_ms', 'first_sample_ms',
                'sample_img_per_s_per_nfe'):
        assert positive(row[key]), (key, row.get(key))
    assert row['mfu'] == pytest.approx(row['train_tflops'] / report['matmul_peak']['tflops'])
    for entry in report['attention'].values():
        backends = entry['backends']
        assert set(backends) >= {'sdpa', 'flash'}
        for backend, r in backends.items():
            assert r['kernel'] in ('flash', 'cudnn', 'efficient', 'math') and positive(r['ms']), (backend, r)
        assert backends['flash']['kernel'] == 'flash'
    fid = report['fid_walltime']
    timed = fid['timed_s']
    assert timed['finite'] and all(positive(timed[k]) for k in ('sample', 'decode', 'inception'))
    assert fid['seconds_per_sample'] == pytest.approx((timed['sample'] + timed['decode'] + timed['inception'])
                                                      / fid['batch'])
    assert fid['extrapolated_s'] == pytest.approx(50_000 * fid['seconds_per_sample'])
    assert "## train.py's default GPU path" in markdown and '## Attention kernels' in markdown
    assert '## FID wall time' in markdown


def test_sections_are_selected_by_name_with_what_they_read():
    assert gpu_check.select_sections('gpu_path') == ['matmul_peak', 'gpu_path']
    assert gpu_check.select_sections('against,fid_walltime') == ['against', 'fid_walltime']
    assert gpu_check.select_sections('bench') == ['matmul_peak', *[f'bench:{c}' for c in CONFIGS]]
    # the whole check stays under 8 minutes without them
    by_name_only = ('compile_full', 'latent_spaces', 'repa_overhead', 'metrics')
    assert gpu_check.parse_args(['out'])['sections'] == [s for s in gpu_check.SECTIONS if s not in by_name_only]
    assert gpu_check.select_sections('compile_full') == ['matmul_peak', 'compile_full']
    assert gpu_check.select_sections('repa_overhead,metrics') == ['repa_overhead', 'metrics']
    with pytest.raises(gpu_check.BadArguments, match=r"unknown section 'speed'; known: matmul_peak, bench:"):
        gpu_check.select_sections('inception,speed')
    with pytest.raises(gpu_check.BadArguments, match=r'--uvit_clone=/no/such/clone: no such folder'):
        gpu_check.parse_args(['out', '--uvit_clone=/no/such/clone'])


def test_an_unknown_section_is_one_line_from_the_shell(tmp_path):
    proc = run_check(str(tmp_path), '--smoke', '--sections=speed', timeout=60)
    assert proc.returncode == 2 and proc.stdout == ''
    assert proc.stderr.count('\n') == 1 and proc.stderr.startswith("error: unknown section 'speed'; known: ")


def test_fp16_training_counts_skips_and_keeps_checkpoints_finite(smoke):
    report, _, _ = smoke
    fp16 = report['fp16_training']
    assert fp16['logged_steps'] == 50 and fp16['resumed_at'] == 25
    assert fp16['nonfinite_in_checkpoints'] == [] and fp16['nonfinite_losses'] == []
    assert fp16['skipped_in_metrics'] == fp16['skipped_total']
    if not fp16['grad_scaler']:  # a CPU: accelerate makes no grad scaler, and the run is fp32
        assert not GPU
        assert fp16['skip_check'] == 'not applicable' and fp16['skipped_total'] == 0
    else:
        assert fp16['skip_check'] == 'passed'
        assert fp16['skipped_total'] == len(fp16['skipped']) >= 1
        assert fp16['final_scale'] < fp16['init_scale']


def test_inception_pass_is_timed(smoke):
    report, _, _ = smoke
    inception = report['inception']
    assert inception['runs']
    for run in inception['runs'].values():
        assert run['images'] >= 4 and positive(run['seconds']) and positive(run['img_per_s'])
        assert run['features'] == 2048 and run['finite']


def test_markdown_has_every_section_and_variant(smoke):
    report, markdown, _ = smoke
    sections = table_rows(markdown, 'section')
    assert [row[0] for row in sections] == SECTIONS + ['total']
    assert float(sections[-1][2]) == pytest.approx(report['total_s'], abs=0.05)
    bench = table_rows(markdown, 'config')
    assert [(row[0], row[1]) for row in bench] == [(c, v) for c in CONFIGS for v in report['benchmarks'][c]['rows']]
    baseline = next(row for row in bench if row[1] == 'baseline')
    assert float(baseline[7].replace(',', '')) > 0  # MFU %
    assert 'Skip check: ' in markdown and 'random weights' in markdown


@pytest.mark.parametrize('args, message', [
    ([], 'expected an output folder'),
    (['OUT', '--fast'], "unknown option '--fast'"),
    (['--smoke'], 'the first argument is the output folder'),
    (['OUT', '--smoke', 'more'], 'expected an output folder'),
])
def test_bad_arguments_are_one_line(args, message):
    proc = run_check(*args, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count('\n') == 1 and proc.stderr.startswith('error: ') and message in proc.stderr
    assert proc.stdout == ''


def test_output_folder_that_is_a_file_is_one_line(tmp_path):
    path = tmp_path / 'report'
    path.write_text('')
    proc = run_check(str(path), '--smoke', timeout=60)
    assert proc.returncode == 2 and proc.stderr == f'error: {path} exists and is not a folder\n'


@pytest.mark.skipif(GPU, reason='the full check runs here')
def test_full_check_without_a_gpu_is_one_line(tmp_path):
    proc = run_check(str(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ['error: no CUDA GPU here; on a CPU, run the smoke mode: '
                                        'bash scripts/gpu_check.sh OUT_DIR --smoke']


def test_python_arguments_are_checked():
    with pytest.raises(gpu_check.BadArguments, match='--budget_s takes a number of seconds'):
        gpu_check.parse_args(['out', '--budget_s=soon'])
    with pytest.raises(gpu_check.BadArguments, match="unknown option '--fast'"):
        gpu_check.parse_args(['out', '--fast'])
    assert gpu_check.parse_args(['out', '--smoke', '--install_s=1.5'])['install_s'] == 1.5


def test_child_processes_report_their_status_output_and_timeout(tmp_path, monkeypatch):
    """run_process as the full check starts its children (fresh interpreters) and as the smoke mode on a CPU does
    (``python script.py``: forked children, libs/forked_script.py): the exit status, both outputs, a failure's end in the
    failure logs, and None for a child stopped at its timeout."""
    script = tmp_path / 'child.py'
    script.write_text('import os, sys, time\n'
                      'print(os.getcwd(), *sys.argv[1:])\n'
                      'if sys.argv[1] == "sleep":\n'
                      '    time.sleep(60)\n'
                      'print("error: it failed", file=sys.stderr)\n'
                      'sys.exit(int(sys.argv[1]))\n')
    for fork in (False, True):
        monkeypatch.setattr(gpu_check, 'FORK_SCRIPTS', fork)
        proc = gpu_check.run_process([sys.executable, str(script), '3'], timeout=60)
        assert (proc.returncode, proc.stdout, proc.stderr) == (3, f'{ROOT} 3\n', 'error: it failed\n'), fork
        failure = gpu_check.FAILURE_LOGS[-1]
        assert failure['returncode'] == 3 and 'it failed' in failure['output_tail']
        assert gpu_check.run_process([sys.executable, str(script), '0'], timeout=60).returncode == 0
        start = time.time()
        proc = gpu_check.run_process([sys.executable, str(script), 'sleep'], timeout=1)
        assert proc.returncode is None and time.time() - start < 30 and not gpu_check.RUNNING, fork
        assert gpu_check.process_failure(proc, 'child.py')[0] == 'timed out'


def test_the_metrics_section_times_every_metric_and_adds_up_the_whole_set(one_thread):
    """Issue 23's section, run only when named (so not in the smoke run above): in process at its smoke sizes, the
    whole set's seconds are the two network passes plus every metric's, and its rates follow from them."""
    sys.path.insert(0, os.path.join(ROOT, 'scripts'))
    try:
        from benchmark_metrics import SMOKE_SIZES, gpu_check_section
    finally:
        sys.path.remove(os.path.join(ROOT, 'scripts'))
    status, note, report = gpu_check_section(torch.device('cpu'), smoke=True)
    assert status == 'ok' and note.startswith('Inception ') and report['sizes'] == SMOKE_SIZES
    metrics, passes, n = report['metric_seconds'], report['pass_seconds'], SMOKE_SIZES['samples']
    assert set(metrics) == {'fid', 'sfid', 'inception_score', 'precision_recall', 'kid', 'fd_dinov2'}
    assert all(math.isfinite(v) and v >= 0 for v in (*metrics.values(), *passes.values()))
    assert passes['inception'] == pytest.approx(n / report['inception_img_per_s'])
    assert report['whole_seconds'] == pytest.approx(sum(passes.values()) + sum(metrics.values()))
    assert report['whole_img_per_s'] == pytest.approx(n / report['whole_seconds'])
    assert report['whole_img_per_s'] < report['inception_metrics_img_per_s']   # the DINOv2 pass and FD on top
    assert report['precision_recall_share'] == pytest.approx(metrics['precision_recall'] / report['whole_seconds'])


def test_nonfinite_entries_finds_nan_and_inf_anywhere():
    finite = {'w': torch.ones(3), 'state': {0: {'exp_avg': torch.zeros(2), 'step': torch.tensor(3)}}, 'lr': 0.1}
    assert gpu_check.nonfinite_entries(finite) == []
    broken = {'w': torch.tensor([1.0, float('nan')]),
              'state': {0: {'exp_avg_sq': torch.tensor([float('inf')])}},
              'groups': [{'scale': float('-inf')}]}
    assert gpu_check.nonfinite_entries(broken) == ['w', 'state.0.exp_avg_sq', 'groups[0].scale']


def test_check_checkpoint_names_the_file_with_a_nan(tmp_path):
    torch.save({'w': torch.ones(2)}, tmp_path / 'nnet.pth')
    torch.save({'w': torch.tensor([0.0, float('nan')])}, tmp_path / 'nnet_ema.pth')
    torch.save({'state': {}, 'param_groups': [{'lr': 1e-3}]}, tmp_path / 'optimizer.pth')
    assert gpu_check.check_checkpoint(str(tmp_path)) == ['nnet_ema.pth:w']


def test_skipped_steps_are_where_the_count_rises():
    counts = {24: 0, 25: 0, 26: 1, 27: 2, 28: 2, 29: 3, 30: 3}
    by_step = {s: {'skipped_steps': c} for s, c in counts.items()}
    assert gpu_check.skipped_steps(by_step, 26, 30) == [26, 27, 29]
    assert gpu_check.skipped_steps(by_step, 28, 28) == []
