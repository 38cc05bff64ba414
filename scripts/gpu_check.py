"""The GPU check: what scripts/gpu_check.sh runs once it has installed what the machine lacks.

    python scripts/gpu_check.py OUT_DIR [--smoke] [--sections=NAME,...] [--uvit_clone=PATH] [--dit_clone=PATH]
        [--budget_s=S] [--install_s=S] [--install_note=TEXT]

Writes OUT_DIR/gpu_check.md (the tables) and OUT_DIR/gpu_check.json (every number), rewritten after each section, so
that a run stopped by a time limit still leaves what it measured. The sections (``SECTIONS``, in this order; adding
one is one entry there):

- ``matmul_peak``: the bf16 rate of an 8192^3 matmul on this GPU, the denominator of MFU.
- ``bench:<config>``: scripts/benchmark.py on imagenet256_uvit_large, imagenet64_uvit_mid and cifar10_uvit_small
  (random data): the eager bf16 + SDPA baseline and one switch at a time (fp16, xformers, gradient checkpointing).
- ``fp16_training``: 50 fp16 steps of train.py on a tiny digits U-ViT, resumed at step 25, with the grad scaler
  starting at 2^30 (``train.grad_scaler_init_scale``), so that the first steps overflow: each skip must be counted
  (metrics.jsonl and train_state.json agree) and no NaN or infinity may reach a checkpoint.
- ``inception``: the FID feature pass (the suite's InceptionFeatures on pytorch-fid's InceptionV3, random weights)
  on 10,000 images.
- ``ddp``: a two-process train.py run, when two GPUs are present.
- ``gpu_path`` (issue 22): train.py's default GPU path (regional compilation, fused AdamW; benchmark.py's
  ``default`` variant) on U-ViT-L/2 and DiT-XL/2 at batch 256 and U-ViT-S/2 (CIFAR-10) at 128: MFU, the first
  step (the compilation) and the compiled sampling forward.
- ``attention``: which SDPA kernel PyTorch runs for U-ViT-L/2's and DiT-XL/2's attention (read off the profiler),
  and the time of each kernel (flash, cuDNN, memory-efficient), forward and backward.
- ``against``: scripts/benchmark.py --against the releases' own networks (``--uvit_clone``, ``--dit_clone``: clones
  of github.com/baofff/U-ViT and github.com/facebookresearch/DiT; skipped with one line without them): the step
  time ratios ours eager / release eager and ours default path / release eager at batch 256.
- ``checkpoint_memory``: peak memory of U-ViT-H/2 at batch 128 with gradient checkpointing, ours against the
  release's (ours alone without ``--uvit_clone``).
- ``fid_walltime``: a 50,000-sample FID of U-ViT-H/2 (DPM-Solver, 50 steps, guidance 0.4, the Stable Diffusion
  decoder, Inception; random weights, as the real ones cannot reach the GPU machine): one mini-batch timed, the
  rest extrapolated.

- ``compile_full`` (only when named): ``gpu_path`` on U-ViT-L/2 with ``train.compile=full`` (the whole network
  compiled), to set against the regional compilation.
- ``latent_spaces`` (issue 24, only when named): U-ViT-H at 512 px on each latent space, and the autoencoders'
  decoders (``latent_spaces``).
- ``repa_overhead`` (issue 21, only when named): REPA's step-time and memory overhead on SiT-XL/2 at batch 256 in
  bf16, with a randomly initialised DINOv2-B-sized encoder where the real one is absent.
- ``metrics`` (issue 23, only when named): the metric set in ADM's ImageNet 256 setting (scripts/benchmark_metrics.py):
  Inception and DINOv2 throughput, precision and recall of 50,000 samples against 10,000 reference images, KID;
  failed when precision and recall take longer than the Inception pass.

``--sections`` runs only those named (a name, or ``bench`` for every ``bench:<config>``), with the sections whose
results they read (``matmul_peak`` for MFU); by default all but ``compile_full``, ``latent_spaces``,
``repa_overhead`` and ``metrics``. The full check needs a CUDA GPU and stays within
``--budget_s`` (470 s from the shell script's start, under 8 minutes): a section that needs more than is left is
skipped, and a process still running when the budget ends is stopped ("timed out"). ``--smoke`` runs the same
sections with tiny sizes on whatever device is here (a CPU in CI, where the scripts it starts run in forked children
of this process: ``FORK_SCRIPTS``), so the script cannot rot.
Exit status: 0 if no section failed, 1 if one did, 2 for bad arguments.
"""
import importlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BENCHMARK = os.path.join(ROOT, 'scripts', 'benchmark.py')
TRAIN = os.path.join(ROOT, 'train.py')
DIGITS = os.path.join(ROOT, 'configs', 'digits_uvit_tiny.py')

BENCH_VARIANTS = ('baseline', 'precision=fp16', 'attention=xformers', 'checkpointing')
TRAIN_STEPS, RESUME_AT = 50, 25
# 2^14 times the fp16 default (2^16). A tiny U-ViT's fp16 gradients overflow above a scale of about 2^19, so about the
# first ten steps are skipped (the scaler halves the scale at each) and the rest train.
INIT_SCALE_LOG2 = 30
REPORT_MD, REPORT_JSON = 'gpu_check.md', 'gpu_check.json'
TINY_NNET = ['--config.nnet.embed_dim=32', '--config.nnet.depth=2', '--config.nnet.num_heads=2']

# Sizes shared by the sections, per mode (a section's own sizes are in its entry of SECTIONS). ``budget_s``: the
# whole check, from the shell script's start; the estimates (SECTIONS) add up to about 440 s on one H100/H200.
FULL = dict(
    batch=128, steps=10, warmup=3, nnet=[], in_process=False,
    matmul_n=8192, matmul_reps=10, matmul_dtype='bf16',
    train_batch=64, train_nnet=['--config.nnet.embed_dim=64', '--config.nnet.depth=4', '--config.nnet.num_heads=2'],
    inception_images=10_000, inception_chunk=500, inception_size=256,
    budget_s=470.0,
)
SMOKE = dict(
    batch=2, steps=1, warmup=1, nnet=TINY_NNET,
    in_process=True,  # starting a process per variant costs more than measuring a tiny one
    matmul_n=256, matmul_reps=3, matmul_dtype=None,
    train_batch=16, train_nnet=TINY_NNET,
    inception_images=4, inception_chunk=4, inception_size=32,
    budget_s=600.0,
)

# The end of the output of each process that failed or timed out, for the JSON: on a lent GPU machine nothing else
# of the scratch folder comes back.
FAILURE_LOGS = []
RUNNING = set()  # process group ids of the running child processes
# The smoke mode on a CPU (main sets it) runs the Python scripts it starts in forked children of this process
# (libs/forked_script.py), with what they import imported here once (PRELOAD): a fresh interpreter's imports (torch, its
# compiler's modules that AdamW loads, scikit-learn for the digits) cost CI more than the tiny runs themselves. A GPU
# (CUDA does not survive a fork) and the full check start fresh processes.
FORK_SCRIPTS = False
PRELOAD = ('torch._dynamo', 'sklearn.datasets', 'libs.training.loop', 'libs.nets', 'libs.diffusion')


class BadArguments(Exception):
    pass


def parse_args(argv: list) -> dict:
    """OUT_DIR [--smoke] [--sections=A,B] [--uvit_clone=PATH] [--dit_clone=PATH] [--budget_s=S] [--install_s=S]
    [--install_note=TEXT]; BadArguments says what is wrong."""
    args = dict(out=None, smoke=False, budget_s=None, install_s=0.0, install_note=None,
                sections=[name for name, entry in SECTIONS.items() if entry.by_default],
                uvit_clone=None, dit_clone=None)
    for arg in argv:
        key, eq, value = arg.partition('=')
        if arg == '--smoke':
            args['smoke'] = True
        elif key == '--sections' and eq:
            args['sections'] = select_sections(value)
        elif key in ('--uvit_clone', '--dit_clone') and eq:
            if not os.path.isdir(value):
                raise BadArguments(f'{key}={value}: no such folder')
            args[key[2:]] = value
        elif key in ('--budget_s', '--install_s') and eq:
            try:
                args[key[2:]] = float(value)
            except ValueError:
                raise BadArguments(f'{key} takes a number of seconds, got {value!r}') from None
            if not math.isfinite(args[key[2:]]) or args[key[2:]] < 0:
                raise BadArguments(f'{key} takes a number of seconds, got {value!r}')
        elif key == '--install_note' and eq:
            args['install_note'] = value
        elif arg.startswith('-'):
            raise BadArguments(f'unknown option {arg!r}')
        elif args['out'] is None:
            args['out'] = arg
        else:
            raise BadArguments(f'one output folder expected, got {args["out"]!r} and {arg!r}')
    if not args['out']:
        raise BadArguments('no output folder given')
    if os.path.exists(args['out']) and not os.path.isdir(args['out']):
        raise BadArguments(f'{args["out"]} exists and is not a folder')
    return args


def select_sections(spec: str) -> list:
    """The sections ``--sections`` names (a name, or 'bench' for every 'bench:<config>'), with those whose results
    they read, in SECTIONS order; BadArguments naming an unknown one."""
    wanted = set()
    for item in [item.strip() for item in spec.split(',') if item.strip()]:
        matches = [name for name in SECTIONS if name == item or name.split(':')[0] == item]
        if not matches:
            raise BadArguments(f"unknown section {item!r}; known: {', '.join(SECTIONS)} (or 'bench')")
        wanted.update(matches)
    if not wanted:
        raise BadArguments('--sections names no section')
    for name in list(wanted):
        wanted.update(SECTIONS[name].needs)
    return [name for name in SECTIONS if name in wanted]


# ----------------------------------------------------------------------------------------------------- helpers

def one_line(text: str, limit: int = 300) -> str:
    """The last non-empty line of a process's output (where Python puts its error), shortened."""
    lines = [line.strip() for line in (text or '').splitlines() if line.strip()]
    return (lines[-1] if lines else 'no output')[:limit]


def run_process(cmd: list, timeout: float, env: dict = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group, so that a timeout also ends the children it started (benchmark.py
    measures each variant in a child, and a left-over child would hold the GPU). returncode None: timed out.
    ``python script.py ...`` runs in a forked child when FORK_SCRIPTS is set (libs/forked_script.py)."""
    if FORK_SCRIPTS and cmd[0] == sys.executable and cmd[1].endswith('.py'):
        from libs.forked_script import run_forked
        code, out, err = run_forked(cmd[1:], ROOT, env, timeout, own_group=True, running=RUNNING)
    else:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                env=env, start_new_session=True)
        RUNNING.add(proc.pid)
        try:
            out, err = proc.communicate(timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            code = None
        finally:
            RUNNING.discard(proc.pid)
    if code != 0:
        shown = ' '.join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd[1:])
        FAILURE_LOGS.append(dict(command=shown, returncode=code, output_tail=((out or '') + (err or ''))[-4000:]))
    return subprocess.CompletedProcess(cmd, code, out, err)


def stop_running(signum, frame) -> None:
    """SIGTERM / SIGINT (a time limit around the whole check): end the running process groups with this process,
    since a process group of its own outlives its parent."""
    for pid in list(RUNNING):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    sys.exit(128 + signum)


def process_failure(proc, what: str) -> tuple:
    """(status, note) of a process that did not succeed: 'timed out' when the budget stopped it."""
    if proc.returncode is None:
        return 'timed out', f'{what}: stopped at the end of the time budget'
    return 'failed', f'{what}: exit status {proc.returncode}: {one_line(proc.stderr or proc.stdout)}'


def nonfinite_entries(obj, prefix: str = '') -> list:
    """Names of the floating-point tensors (and floats) in nested dicts/lists that hold a NaN or an infinity."""
    import torch
    bad = []
    if torch.is_tensor(obj):
        if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
            bad.append(prefix or 'tensor')
    elif isinstance(obj, dict):
        for key, value in obj.items():
            bad.extend(nonfinite_entries(value, f'{prefix}.{key}' if prefix else str(key)))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            bad.extend(nonfinite_entries(value, f'{prefix}[{i}]'))
    elif isinstance(obj, float) and not math.isfinite(obj):
        bad.append(prefix or 'float')
    return bad


def sync(device) -> None:
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------- matmul, benchmarks

def matmul_peak(device, n: int, reps: int, dtype_name: str) -> dict:
    """The rate of an n^3 matmul: the best of 3 blocks of ``reps`` back-to-back products, after 3 warm-ups."""
    import torch
    dtype = {'bf16': torch.bfloat16, 'fp32': torch.float32}[dtype_name]
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b, out=c)
    rates = []
    for _ in range(3):
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b, out=c)
        sync(device)
        rates.append(2 * n ** 3 * reps / (time.perf_counter() - start) / 1e12)
    return dict(n=n, reps=reps, dtype=dtype_name, tflops=max(rates), tflops_blocks=rates)


def benchmark_rows(report: dict, peak_tflops: float) -> dict:
    """What the table shows of a benchmark.py report, with MFU against the measured matmul peak."""
    rows = {}
    for name, r in report['variants'].items():
        row = dict(status=r.get('status'), note=r.get('note', ''))
        for key in ('train_step_ms', 'train_img_per_s', 'peak_memory_mib', 'train_tflops',
                    'sample_img_per_s_per_nfe', 'sample_tflops', 'train_warmup_ms'):
            if key in r:
                row[key] = r[key]
        if 'train_tflops' in r and peak_tflops:
            row['mfu'] = r['train_tflops'] / peak_tflops
        rows[name] = row
    return rows


def run_benchmark(config_name: str, variants: list, sizes: dict, work: str, timeout: float, extra=(),
                  against: str = None) -> tuple:
    """scripts/benchmark.py on one config (``--against`` a release's clone, instead of the variants, when given):
    (report, None) or (None, (status, note)). ``extra``: more flags (config overrides)."""
    what = f'against-{os.path.basename(os.path.normpath(against))}' if against else '_'.join(
        v.replace('=', '-').replace('/', '-') for v in variants)
    out = os.path.join(work, f'bench_{config_name}_{sizes["batch"]}_{what}_{len(os.listdir(work))}.json')
    cmd = [sys.executable, BENCHMARK, f'--config={os.path.join(ROOT, "configs", config_name + ".py")}',
           *sizes['nnet'], *extra, f'--batch_size={sizes["batch"]}', f'--steps={sizes["steps"]}',
           f'--warmup={sizes["warmup"]}', f'--out={out}']
    if against:
        cmd += [f'--against={against}', f'--rounds={sizes["rounds"]}']
    else:
        cmd.append(f'--variants={",".join(variants)}')
        if sizes['in_process']:
            cmd.append('--in_process')
    proc = run_process(cmd, timeout)
    # benchmark.py exits with 1 when a variant failed, after writing every variant's result
    if proc.returncode in (0, 1) and os.path.isfile(out):
        with open(out) as f:
            return json.load(f), None
    return None, process_failure(proc, 'benchmark.py --against' if against else 'benchmark.py')


# ------------------------------------------------------------------------------------------------ latent spaces

# U-ViT-H at 512 px on each latent space (scripts/benchmark.py's groups 'latent' and 'autoencoders'): the model itself
# and the published autoencoders on a GPU (about 120 s on one H100/H200: 8 processes of about 15 s), tiny widths at
# 128 px in the smoke mode.
LATENT_CONFIG = 'imagenet512_uvit_huge'
LATENT_SIZES = {
    False: dict(batch=32, sample_batch=8, steps=5, warmup=2, nnet=[], in_process=False, resolution=512,
                ae_width_divisor=1, estimate_s=120),
    True: dict(batch=2, sample_batch=1, steps=1, warmup=0, nnet=TINY_NNET, in_process=True, resolution=128,
               ae_width_divisor=16, estimate_s=0),
}


def latent_spaces(smoke: bool, work: str, timeout: float) -> tuple:
    """(status, note, details) of the latent-space comparison: U-ViT-H's training step per image on SD-VAE-f8
    latents at patch 2 and the release's patch 4 against DC-AE-f32 (16x16x32) and f64 (8x8x128) at patch 1, and the
    decode throughput of SD-VAE-f8, SD3's 16-channel VAE, DC-AE f32c32 and f64c128 (random weights). ``details``:
    one row per variant (tokens, train img/s, speed-up over SD-VAE-f8 at patch 2, decode img/s, note) and the
    benchmark's report."""
    sizes = LATENT_SIZES[smoke]
    extra = [f'--sample_batch={sizes["sample_batch"]}', f'--resolution={sizes["resolution"]}',
             f'--ae_width_divisor={sizes["ae_width_divisor"]}']
    report, failure = run_benchmark(LATENT_CONFIG, ['latent', 'autoencoders'], sizes, work, timeout, extra)
    if report is None:
        return (*failure, {})
    return latent_spaces_result(report, sizes)


def latent_spaces_result(report: dict, sizes: dict) -> tuple:
    """(status, note, details) of the section from benchmark.py's report."""
    rows = {name: dict(status=r['status'], note=r.get('note', ''), tokens=r.get('tokens'),
                       train_img_per_s=r.get('train_img_per_s'), speedup=r.get('speedup_vs_first'),
                       train_tflops=r.get('train_tflops'), decode_img_per_s=r.get('decode_img_per_s'),
                       peak_memory_mib=r.get('peak_memory_mib'))
            for name, r in report['variants'].items()}
    details = dict(rows=rows, report=report, resolution=sizes['resolution'], batch=sizes['batch'],
                   sample_batch=sizes['sample_batch'])
    failed = [n for n, r in rows.items() if r['status'] != 'ok']
    if failed:
        return 'failed', '; '.join(f'{n}: {rows[n]["note"]}' for n in failed), details
    speedups = [r['speedup'] for r in rows.values() if r['speedup']]
    if not speedups:
        return 'failed', 'no latent=... row was measured', details
    return 'ok', (f'{len(rows)} rows; the fastest latent space trains x{max(speedups):.1f} as fast as the first '
                  f'(SD-VAE-f8 at patch 2)'), details


def latent_spaces_markdown(details: dict) -> list:
    """The section's table for gpu_check.md."""
    lines = ['', f"## Latent spaces: U-ViT-H at {details['resolution']} px (batch {details['batch']}), and the "
                 f"decoders (batch {details['sample_batch']})", '',
             '| variant | tokens | train img/s | x SD-VAE-f8 p2 | TFLOP/s | decode img/s | peak memory MiB | note |',
             '|---|---:|---:|---:|---:|---:|---:|---|']
    for name, r in details['rows'].items():
        lines.append('| ' + ' | '.join([name, fmt(r['tokens']), fmt(r['train_img_per_s']), fmt(r['speedup']),
                                        fmt(r['train_tflops']), fmt(r['decode_img_per_s']),
                                        fmt(r['peak_memory_mib']), r['note']]) + ' |')
    return lines


# ------------------------------------------------------------------------------------------------ REPA overhead

# REPA's step time on SiT-XL/2 (issue 21): scripts/benchmark.py's baseline (the diffusion loss alone) and 'repa'
# variant (the alignment term: DINOv2-B/14's forward on the batch's 224-pixel images, the projector and the loss)
# of configs/imagenet256_sit_xl2_repa.py at batch 256 in bf16. SiT-XL/2 needs about DiT-XL/2's 105 GiB there, so an
# H200. The GPU machine has no DINOv2 weights: the benchmark times a randomly initialised DINOv2-B/14 of the released
# architecture (transformers' Dinov2Model), which costs the same time. Two processes of about 30 s on one H200. The
# smoke mode shrinks SiT to width 32 on 8 x 8 latents (a 4 x 4 token grid: 56-pixel encoder input).
REPA_CONFIG = 'imagenet256_sit_xl2_repa'
REPA_SIZES = {
    False: dict(batch=256, steps=5, warmup=2, nnet=[], in_process=False, estimate_s=70),
    True: dict(batch=2, steps=1, warmup=0, in_process=True, estimate_s=0,
               nnet=['--config.nnet.hidden_size=32', '--config.nnet.depth=2', '--config.nnet.num_heads=2',
                     '--config.nnet.input_size=8', '--config.repa.depth=1', '--config.repa.projector_dim=32']),
}


def repa_overhead(smoke: bool, work: str, timeout: float) -> tuple:
    """(status, note, details) of REPA's step-time overhead on SiT-XL/2 (``REPA_SIZES``): the training step with and
    without the alignment term, their ratio and peak memory. ``details``: the rows and the benchmark's report."""
    sizes = REPA_SIZES[smoke]
    report, failure = run_benchmark(REPA_CONFIG, ['baseline', 'repa'], sizes, work, timeout)
    if report is None:
        return (*failure, {})
    return repa_overhead_result(report, sizes)


def repa_overhead_result(report: dict, sizes: dict) -> tuple:
    """(status, note, details) of the section from benchmark.py's report of the variants 'baseline' and 'repa'."""
    rows = {name: dict(status=r['status'], note=r.get('note', ''), train_step_ms=r.get('train_step_ms'),
                       train_img_per_s=r.get('train_img_per_s'), peak_memory_mib=r.get('peak_memory_mib'))
            for name, r in report['variants'].items()}
    details = dict(rows=rows, report=report, batch=sizes['batch'], config=REPA_CONFIG,
                   precision=report['baseline_settings']['precision'], parameters=report['parameters'])
    failed = [n for n, r in rows.items() if r['status'] != 'ok']
    if failed:
        return 'failed', '; '.join(f'{n}: {rows[n]["note"]}' for n in failed), details
    base, repa = rows['baseline'], rows['repa']
    details.update(step_ratio=repa['train_step_ms'] / base['train_step_ms'],
                   extra_memory_mib=repa['peak_memory_mib'] - base['peak_memory_mib'])
    return 'ok', (f"REPA's step takes x{details['step_ratio']:.3f} the plain step ({repa['train_step_ms']:,.0f} vs "
                  f"{base['train_step_ms']:,.0f} ms at batch {sizes['batch']}), {details['extra_memory_mib']:+,.0f} "
                  f"MiB peak memory; {repa['note'] or 'the real encoder'}"), details


def repa_overhead_markdown(details: dict) -> list:
    """The section's table for gpu_check.md."""
    lines = ['', f"## REPA's step-time overhead: {details['config']} ({details['parameters'] / 1e6:.1f}M parameters "
                 f"without the projector), batch {details['batch']}, {details['precision']}", '',
             '| variant | train step ms | train img/s | peak memory MiB | note |', '|---|---:|---:|---:|---|']
    for name, r in details['rows'].items():
        lines.append('| ' + ' | '.join([name, fmt(r['train_step_ms']), fmt(r['train_img_per_s']),
                                        fmt(r['peak_memory_mib']), r['note'] or r['status']]) + ' |')
    if 'step_ratio' in details:
        lines += ['', f"REPA / plain step time: x{details['step_ratio']:.3f}; peak memory "
                      f"{details['extra_memory_mib']:+,.0f} MiB."]
    return lines


# ------------------------------------------------------------------------------------------------ fp16 training

def train_command(workdir: str, sizes: dict, n_steps: int, precision: str) -> list:
    """train.py on the digits config shrunk to a tiny U-ViT: a checkpoint every 25 steps, a metrics line every step,
    no sample grid and no final score. The FID metric has no reference statistics for digits, so the score at each
    checkpoint is skipped with one log line instead of sampling."""
    return [TRAIN, f'--config={DIGITS}', f'--workdir={workdir}', f'--config.mixed_precision={precision}',
            f'--config.train.n_steps={n_steps}', f'--config.train.batch_size={sizes["train_batch"]}',
            f'--config.train.save_interval={RESUME_AT}', '--config.train.log_interval=1',
            '--config.train.eval_interval=1000000', '--config.train.final_eval=False',
            '--config.train.num_workers=0', '--config.log_with=none', '--config.eval.metric=fid',
            f'--config.train.grad_scaler_init_scale={2.0 ** INIT_SCALE_LOG2}', *sizes['train_nnet']]


def read_metrics(workdir: str) -> dict:
    """metrics.jsonl as {step: line}; a resumed run appends to the same file."""
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return {m['step']: m for m in (json.loads(line) for line in f if line.strip())}


def skipped_steps(by_step: dict, first: int, last: int) -> list:
    """The steps in first..last at which the logged skipped-step count went up (the grad scaler skipped them)."""
    return [s for s in range(first, last + 1)
            if s in by_step and by_step[s]['skipped_steps'] > by_step.get(s - 1, {}).get('skipped_steps', 0)]


def check_checkpoint(ckpt: str) -> list:
    """Names of the non-finite entries of a checkpoint's weights, EMA weights, optimizer state and grad scaler."""
    from libs.training.checkpoint import load_object
    bad = []
    for name in ('nnet.pth', 'nnet_ema.pth', 'optimizer.pth', 'grad_scaler.pth'):
        if name == 'grad_scaler.pth' and not os.path.isfile(os.path.join(ckpt, name)):
            continue
        bad.extend(f'{name}:{entry}' for entry in nonfinite_entries(load_object(ckpt, name)))
    return bad


def fp16_training(sizes: dict, work: str, deadline: float) -> tuple:
    """(status, note, details) of 50 fp16 steps of train.py from a grad-scaler scale of 2^30, resumed at step 25."""
    from libs.training.checkpoint import load_object
    workdir = os.path.join(work, 'fp16_training')
    details = dict(steps=TRAIN_STEPS, resumed_at=RESUME_AT, init_scale=2.0 ** INIT_SCALE_LOG2)
    for n_steps in (RESUME_AT, TRAIN_STEPS):
        proc = run_process([sys.executable, *train_command(workdir, sizes, n_steps, 'fp16')],
                           max(1.0, deadline - time.time()))
        if proc.returncode != 0:
            return (*process_failure(proc, f'train.py to step {n_steps}'), details)

    by_step = read_metrics(workdir)
    final_ckpt = os.path.join(workdir, 'ckpts', f'{TRAIN_STEPS}.ckpt')
    with open(os.path.join(final_ckpt, 'train_state.json')) as f:
        state = json.load(f)
    skipped = skipped_steps(by_step, 1, TRAIN_STEPS)
    bad = check_checkpoint(os.path.join(workdir, 'ckpts', f'{RESUME_AT}.ckpt')) + check_checkpoint(final_ckpt)
    scaler_file = os.path.join(final_ckpt, 'grad_scaler.pth')
    details.update(grad_scaler=os.path.isfile(scaler_file), logged_steps=len(by_step),
                   skipped_total=state.get('skipped_steps'),
                   skipped_in_metrics=by_step.get(TRAIN_STEPS, {}).get('skipped_steps'),
                   skipped=skipped, nonfinite_in_checkpoints=bad,
                   nonfinite_losses=[s for s, m in sorted(by_step.items()) if not math.isfinite(m['loss'])])
    problems = []
    if sorted(by_step) != list(range(1, TRAIN_STEPS + 1)):
        problems.append(f'metrics.jsonl logs {len(by_step)} of steps 1..{TRAIN_STEPS}')
    if bad:
        problems.append(f'non-finite values in a checkpoint: {", ".join(bad[:3])}')
    if details['nonfinite_losses']:
        problems.append(f'non-finite loss logged at steps {details["nonfinite_losses"][:5]}')
    if details['skipped_in_metrics'] != details['skipped_total']:
        problems.append(f'skipped steps: metrics.jsonl says {details["skipped_in_metrics"]}, train_state.json '
                        f'{details["skipped_total"]}')
    if not details['grad_scaler']:
        details['skip_check'] = 'not applicable'
        note = ('no grad scaler: accelerate runs fp16 (autocast and grad scaler) only on an accelerator, so here the '
                'run was fp32 and there is no skip to count; the checkpoints are finite')
    else:
        details['final_scale'] = float(load_object(final_ckpt, 'grad_scaler.pth')['scale'])
        details['skip_check'] = 'passed' if skipped else 'failed'
        if not skipped:
            problems.append(f'no skipped step counted from a scale of 2^{INIT_SCALE_LOG2}')
        span = f' (steps {skipped[0]}-{skipped[-1]})' if skipped else ''
        note = (f'from a scale of 2^{INIT_SCALE_LOG2}: {len(skipped)} of {TRAIN_STEPS} steps skipped{span}, '
                f'{details["skipped_total"]} counted, final scale {details["final_scale"]:g}, resumed at step '
                f'{RESUME_AT}; checkpoints finite')
    if problems:
        return 'failed', '; '.join(problems), details
    return 'ok', note, details


# ----------------------------------------------------------------------------------------------- inception, ddp

def random_fid_inception(path: str) -> None:
    """pytorch-fid's FID InceptionV3 with random weights, saved as a weights file the suite loads: the real file
    cannot be fetched on these machines, and weights do not change the time of a forward pass."""
    from unittest import mock

    import torch
    import torchvision
    from pytorch_fid import inception as fid_inception
    torch.manual_seed(0)
    with mock.patch.object(fid_inception, 'load_state_dict_from_url', lambda *a, **k: {}), \
            mock.patch.object(torchvision.models.Inception3, 'load_state_dict', lambda self, *a, **k: None):
        net = fid_inception.fid_inception_v3()
    torch.save(net.state_dict(), path)


def inception_throughput(device, sizes: dict, work: str) -> dict:
    """Images/s of the suite's FID feature pass on float samples in [-1, 1] handed over in chunks, as the sampler
    hands them to the FID scorer: once at the scorer's batch (50), once at the chunk's size."""
    import torch

    from libs.cli import enable_tf32
    from libs.metrics.fid import InceptionFeatures, load_inception
    enable_tf32(device)  # as the evaluation harness does
    path = os.path.join(work, 'random_fid_inception.pth')
    random_fid_inception(path)
    model = load_inception(path, device=device)
    n, chunk, size = sizes['inception_images'], sizes['inception_chunk'], sizes['inception_size']
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.rand(chunk, 3, size, size, device=device, generator=generator) * 2 - 1
    runs = {}
    for batch in sorted({min(50, chunk), chunk}):
        features = InceptionFeatures(model, batch_size=batch)
        features(images[:batch])  # warm-up: cuDNN picks its kernels for this shape
        sync(device)
        start = time.perf_counter()
        done, finite = 0, True
        while done < n:
            acts = features(images[:min(chunk, n - done)])
            finite = finite and bool(math.isfinite(float(acts.sum())))
            done += acts.shape[0]
        sync(device)
        seconds = time.perf_counter() - start
        runs[str(batch)] = dict(batch=batch, images=done, seconds=seconds, img_per_s=done / seconds,
                                features=int(acts.shape[1]), finite=finite)
    return dict(image_size=size, chunk=chunk, runs=runs)


def ddp_check(sizes: dict, work: str, timeout: float, gpus: int) -> tuple:
    """(status, note, details) of 25 bf16 steps of train.py in two processes (torchrun); the replicas must agree."""
    if gpus < 2:
        return 'skipped', f'{gpus} GPU{"" if gpus == 1 else "s"} here: the two-process DDP check needs two', {}
    workdir = os.path.join(work, 'ddp')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           *train_command(workdir, sizes, RESUME_AT, 'bf16')]
    proc = run_process(cmd, timeout)
    if proc.returncode != 0:
        return (*process_failure(proc, 'torchrun train.py'), {})
    ckpt = os.path.join(workdir, 'ckpts', f'{RESUME_AT}.ckpt')
    with open(os.path.join(ckpt, 'train_state.json')) as f:
        state = json.load(f)
    bad = check_checkpoint(ckpt)
    details = dict(steps=RESUME_AT, num_processes=state['num_processes'], replicas_equal=state['replicas_equal'],
                   nonfinite_in_checkpoint=bad)
    if state['num_processes'] != 2 or not state['replicas_equal'] or bad:
        return ('failed', f'{state["num_processes"]} processes, replicas equal: {state["replicas_equal"]}, '
                          f'non-finite: {bad[:3]}', details)
    return 'ok', f'{RESUME_AT} bf16 steps in 2 processes: replicas equal, checkpoint finite', details


# ------------------------------------------------------------------------------------------------------ report

def fmt(value) -> str:
    if value is None:
        return '-'
    return f'{value:,.0f}' if abs(value) >= 100 else f'{value:.3g}'


def markdown(data: dict) -> str:
    env, peak = data['environment'], data.get('matmul_peak')
    gpus = env['gpus']
    lines = [
        f"# GPU check ({'smoke: tiny sizes' if data['smoke'] else 'full'})",
        '',
        f"{env['device_name']} ({gpus} GPU{'' if gpus == 1 else 's'}) | torch {env['torch']} | CUDA "
        f"{env['cuda'] or '-'} | Python {env['python']} | xformers {env['xformers'] or 'not installed'} | "
        f"started {data['started']}",
        f"Matmul peak: {fmt(peak['tflops'])} TFLOP/s ({peak['dtype']}, {peak['n']}^3, best of 3 x {peak['reps']} "
        'products): the denominator of MFU' if peak else 'Matmul peak: not measured',
        '',
        '## Sections',
        '',
        '| section | status | seconds | note |',
        '|---|---|---:|---|',
    ]
    for s in data['sections']:
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {s['note']} |")
    budget = f"budget {data['budget_s']:.0f} s" if data['budget_s'] else ''
    lines.append(f"| total | {'failed' if data['failed'] else 'ok'} | {data['total_s']:.1f} | {budget} |")

    lines += ['', '## Training and sampling speed (scripts/benchmark.py, random data)', '',
              'A training step counts as 3 forward passes of model FLOPs (recomputation under checkpointing is not '
              'counted); MFU = training TFLOP/s / matmul peak. Peak memory: '
              + ('torch.cuda.max_memory_allocated.' if env['device'] == 'cuda'
                 else "the variant's process's peak RSS (one process for all variants in the smoke mode).")
              + ' First step: the first warm-up step (with torch.compile, the compilation).', '',
              '| config | variant | batch | train step ms | train img/s | peak memory MiB | TFLOP/s | MFU % '
              '| sample img/s per NFE | first step ms | note |',
              '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|']
    for config, bench in data['benchmarks'].items():
        for name, r in bench['rows'].items():
            note = r['note'] if r['status'] == 'ok' else f"{r['status']}: {r['note']}".rstrip(': ')
            lines.append('| ' + ' | '.join([
                config, name, str(bench['batch']), fmt(r.get('train_step_ms')), fmt(r.get('train_img_per_s')),
                fmt(r.get('peak_memory_mib')), fmt(r.get('train_tflops')),
                fmt(100 * r['mfu'] if 'mfu' in r else None), fmt(r.get('sample_img_per_s_per_nfe')),
                fmt((r.get('train_warmup_ms') or [None])[0]), note]) + ' |')

    fp16 = data.get('fp16_training')
    if fp16:
        lines += ['', f'## fp16 training: {TRAIN_STEPS} steps of train.py on a tiny digits U-ViT', '',
                  f"Skip check: {fp16.get('skip_check', 'not reached')}. {fp16['note']}"]
    lines += issue22_markdown(data)
    if data.get('latent_spaces'):
        lines += latent_spaces_markdown(data['latent_spaces'])
    if data.get('repa_overhead'):
        lines += repa_overhead_markdown(data['repa_overhead'])
    inc = data.get('inception')
    if inc:
        lines += ['', "## FID feature pass (pytorch-fid's InceptionV3, random weights)", '',
                  'The FID weights file cannot be fetched here; random weights take the same time. Input: '
                  f"{inc['image_size']}x{inc['image_size']} float images in [-1, 1], handed over {inc['chunk']} at a "
                  "time and resized to 299x299 inside; batch 50 is the FID scorer's.", '',
                  '| batch | images | seconds | img/s |', '|---:|---:|---:|---:|']
        for run in inc['runs'].values():
            lines.append(f"| {run['batch']} | {run['images']:,} | {run['seconds']:.2f} | {fmt(run['img_per_s'])} |")
    return '\n'.join(lines) + '\n'


def issue22_markdown(data: dict) -> list:
    """The tables of the sections gpu_path, attention, against, checkpoint_memory and fid_walltime."""
    lines = []
    path = {**{f'{config} (compile=full)': row for config, row in data.get('compile_full', {}).items()},
            **data.get('gpu_path', {})}
    if path:
        lines += ['', "## train.py's default GPU path (benchmark.py's default variant, random data)", '',
                  'Regional compilation and fused AdamW where they are on (the settings column); first step: the '
                  'first training step, with its compilation; first sample: the first no-grad forward, with its '
                  'compilation.', '',
                  '| config | batch | settings | train step ms | img/s | TFLOP/s | MFU % | first step s '
                  '| first sample s | sample img/s per NFE | peak memory MiB | note |',
                  '|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|']
        for config, r in path.items():
            settings = ', '.join(f'{k}={v}' for k, v in (r.get('settings') or {}).items()
                                 if k in ('compile', 'fused_optimizer', 'precision'))
            seconds = [None if r.get(k) is None else r[k] / 1e3 for k in ('first_step_ms', 'first_sample_ms')]
            note = r.get('note', '') if r.get('status') == 'ok' else f"{r.get('status')}: {r.get('note', '')}"
            lines.append(f"| {config} | {r['batch']} | {settings} | {fmt(r.get('train_step_ms'))} | "
                         f"{fmt(r.get('train_img_per_s'))} | {fmt(r.get('train_tflops'))} | "
                         f"{fmt(100 * r['mfu'] if r.get('mfu') else None)} | {fmt(seconds[0])} | {fmt(seconds[1])} | "
                         f"{fmt(r.get('sample_img_per_s_per_nfe'))} | {fmt(r.get('peak_memory_mib'))} | {note} |")
    attention = data.get('attention')
    if attention:
        lines += ['', '## Attention kernels (forward + backward; the kernel read off the profiler)', '',
                  '| shape | backend | kernel run | ms | GPU kernels seen |', '|---|---|---|---:|---|']
        for label, entry in attention.items():
            for backend, r in entry['backends'].items():
                seen = ', '.join(r.get('gpu_kernels', [])) or r.get('note', '')
                lines.append(f"| {label} {tuple(entry['shape'])} {entry['dtype']} | {backend} | "
                             f"{r['kernel'] or '-'} | {fmt(r['ms'])} | {seen} |")
    rows = dict(data.get('against') or {})
    memory = data.get('checkpoint_memory', {})
    if memory.get('networks'):
        rows[f"{memory['config']}, checkpointing"] = memory
    if rows:
        lines += ['', "## Side by side with the releases' networks (benchmark.py --against)", '',
                  'One set of weights, the same inputs, precision, AdamW and EMA; the median of rotating rounds. Peak '
                  'memory: the weights, Adam and EMA of one network plus its step\'s peak above them.', '',
                  '| config | batch | network | step ms | img/s | TFLOP/s | peak GiB | first step s '
                  '| / release eager |',
                  '|---|---:|---|---:|---:|---:|---:|---:|---:|']
        for config, row in rows.items():
            if 'networks' not in row:
                lines.append(f"| {config} | {row.get('batch')} | {row.get('status')}: {row.get('note')} | | | | | | |")
                continue
            release = row['networks']['release (eager)']['step_ms']
            for net, r in row['networks'].items():
                first = None if r.get('first_step_ms') is None else r['first_step_ms'] / 1e3
                lines.append(f"| {config} | {row['batch']} | {net} | {fmt(r['step_ms'])} | {fmt(r['img_per_s'])} | "
                             f"{fmt(r['tflops'])} | {fmt(r['peak_gib'])} | {fmt(first)} | "
                             f"{r['step_ms'] / release:.3f} |")
    ours_only = memory.get('ours_only')
    if ours_only:
        lines += ['', f"Checkpointing, {memory['config']} batch {memory['batch']}, ours alone: peak "
                      f"{fmt(ours_only.get('peak_memory_mib'))} MiB, {fmt(ours_only.get('train_step_ms'))} ms per step"]
    fid = data.get('fid_walltime')
    if fid:
        t = fid['timed_s']
        lines += ['', f"## FID wall time: {fid['config']}, {fid['nfe']} DPM-Solver NFE, guidance {fid['scale']}, "
                      f"{fid['precision']}, sampling network {'compiled' if fid['compiled'] else 'eager'}", '',
                  'Random weights (network, autoencoder, Inception); one mini-batch timed after a warm-up batch, '
                  '50,000 samples extrapolated.', '',
                  '| batch | sampling s | decode s | Inception s | samples/s | 50,000 samples |',
                  '|---:|---:|---:|---:|---:|---:|',
                  f"| {fid['batch']} | {t['sample']:.2f} | {t['decode']:.2f} | {t['inception']:.2f} | "
                  f"{1 / fid['seconds_per_sample']:.2f} | {fid['extrapolated_s'] / 60:.1f} min |"]
    return lines


class Check:
    """Runs the selected sections in order within the time budget and rewrites the report after each. Sections
    read ``device``, ``smoke``, ``sizes`` (the mode's, with their own merged in), ``work`` (a scratch folder),
    ``args`` (the clones) and ``data`` (the report so far)."""

    def __init__(self, out: str, smoke: bool, budget_s: float, sizes: dict, install_s: float, device=None,
                 args: dict = None, work: str = None):
        self.out, self.smoke, self.sizes, self.budget_s = out, smoke, sizes, budget_s
        self.device, self.args, self.work = device, args or {}, work
        self.start = time.time() - install_s  # the budget counts from the shell script's start
        self.data = dict(smoke=smoke, started=time.strftime('%Y-%m-%d %H:%M:%S %Z'), budget_s=budget_s,
                         estimate_s={} if smoke else {name: entry.estimate_s for name, entry in SECTIONS.items()},
                         sections=[], benchmarks={}, failed=False, total_s=0.0, failure_logs=FAILURE_LOGS,
                         sizes={k: v for k, v in sizes.items() if k != 'budget_s'})

    def elapsed(self) -> float:
        return time.time() - self.start

    def timeout(self, name: str) -> float:
        """Seconds the section's processes may take: what is left of the budget, and at most three times the
        section's estimate, so that one hung process leaves time for the sections after it."""
        left = self.start + self.budget_s - time.time()
        estimate = self.data['estimate_s'].get(name)
        return max(1.0, min(left, 3 * estimate) if estimate else left)

    def record(self, name: str, status: str, seconds: float, note: str) -> None:
        self.data['sections'].append(dict(name=name, status=status, seconds=seconds, note=note))
        self.data['failed'] = self.data['failed'] or status == 'failed'
        print(f"[{self.elapsed():6.1f} s] {name}: {status} ({seconds:.1f} s){': ' + note if note else ''}",
              flush=True)
        self.write()

    def section(self, name: str, fn) -> None:
        """Run ``fn() -> (status, note)`` unless less than the section's ``min_s`` is left of the budget."""
        left, need = self.budget_s - self.elapsed(), 0 if self.smoke else SECTIONS[name].min_s
        if left < max(need, 1):
            self.record(name, 'skipped', 0.0, f'time budget: {left:.0f} s left, needs about {max(need, 1):.0f} s')
            return
        print(f"[{self.elapsed():6.1f} s] {name} ...", flush=True)
        start = time.time()
        try:
            status, note = fn()
        except Exception as exc:  # reported in the section's row; the other sections still run
            status, note = 'failed', f'{type(exc).__name__}: {one_line(str(exc))}'
        self.record(name, status, time.time() - start, note)

    def run(self, name: str) -> None:
        """Run section ``name`` of SECTIONS with the mode's sizes and its own."""
        entry = SECTIONS[name]
        sizes = dict(self.sizes, **(entry.smoke if self.smoke else entry.full))
        self.section(name, lambda: entry.run(self, name, sizes))

    def write(self) -> None:
        self.data['total_s'] = self.elapsed()
        os.makedirs(self.out, exist_ok=True)
        for name, text in ((REPORT_JSON, json.dumps(self.data, indent=2, default=str)),
                           (REPORT_MD, markdown(self.data))):
            path = os.path.join(self.out, name)
            with open(path + '.tmp', 'w') as f:
                f.write(text)
            os.replace(path + '.tmp', path)


def cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        return platform.processor() or 'unknown CPU'


def environment(device) -> dict:
    import torch
    try:
        import xformers
        xformers_version = xformers.__version__
    except Exception:  # not installed, or a build that does not load against this torch
        xformers_version = None
    return dict(device=device.type, gpus=torch.cuda.device_count() if device.type == 'cuda' else 0,
                device_name=torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu_name(),
                torch=torch.__version__, cuda=torch.version.cuda if device.type == 'cuda' else None,
                python=platform.python_version(), xformers=xformers_version, cpus=os.cpu_count())


# ------------------------------------------------------------------------------------------------------ sections

def matmul_section(check, name: str, sizes: dict) -> tuple:
    import torch
    dtype = sizes['matmul_dtype'] or ('bf16' if check.device.type == 'cuda' else 'fp32')
    peak = matmul_peak(check.device, sizes['matmul_n'], sizes['matmul_reps'], dtype)
    check.data['matmul_peak'] = peak
    if check.device.type == 'cuda':
        torch.cuda.empty_cache()  # the benchmarks' processes get the whole GPU
    return 'ok', f"{peak['tflops']:.4g} TFLOP/s {dtype}"


def peak_tflops(check):
    return (check.data.get('matmul_peak') or {}).get('tflops')


def bench_section(config_name: str):
    """The section that measures BENCH_VARIANTS on one config."""
    def run(check, name: str, sizes: dict) -> tuple:
        entry = check.data['benchmarks'].setdefault(config_name, dict(batch=sizes['batch'], rows={}, reports=[]))
        variants = list(BENCH_VARIANTS)
        report, failure = run_benchmark(config_name, variants, sizes, check.work, check.timeout(name))
        if report is None:
            entry['rows'].update({v: dict(status=failure[0], note=failure[1]) for v in variants})
            return failure
        entry['reports'].append(report)
        rows = benchmark_rows(report, peak_tflops(check))
        entry['rows'].update(rows)
        failed = [n for n, r in rows.items() if r['status'] == 'failed']
        if failed:
            return 'failed', '; '.join(f'{n}: {rows[n]["note"]}' for n in failed)
        return 'ok', f"{sum(r['status'] == 'ok' for r in rows.values())} of {len(rows)} variants measured"
    return run


def fp16_section(check, name: str, sizes: dict) -> tuple:
    status, note, details = fp16_training(sizes, check.work, time.time() + check.timeout(name))
    check.data['fp16_training'] = dict(details, note=note)
    return status, note


def inception_section(check, name: str, sizes: dict) -> tuple:
    result = inception_throughput(check.device, sizes, check.work)
    check.data['inception'] = result
    if not all(r['finite'] for r in result['runs'].values()):
        return 'failed', 'non-finite Inception features'
    best = max(result['runs'].values(), key=lambda r: r['img_per_s'])
    return 'ok', f"{best['images']:,} images at {best['img_per_s']:,.0f} img/s (batch {best['batch']})"


def ddp_section(check, name: str, sizes: dict) -> tuple:
    status, note, details = ddp_check(sizes, check.work, check.timeout(name), check.data['environment']['gpus'])
    check.data['ddp'] = dict(details, status=status, note=note)
    return status, note


def gpu_path_section(check, name: str, sizes: dict) -> tuple:
    """benchmark.py's ``default`` variant (train.py's default path here) on each of ``sizes['path_configs']``
    (config, batch, more flags)."""
    rows, notes = check.data.setdefault(name, {}), []
    for config_name, batch, flags in sizes['path_configs']:
        report, failure = run_benchmark(config_name, ['default'], dict(sizes, batch=batch, nnet=flags), check.work,
                                        check.timeout(name))
        if report is None:
            rows[config_name] = dict(batch=batch, status=failure[0], note=failure[1])
            notes.append(f'{config_name}: {failure[0]}')
            continue
        row = benchmark_rows(report, peak_tflops(check))['default']
        row.update(batch=batch, settings=report['variants']['default'].get('settings'),
                   first_step_ms=(row.get('train_warmup_ms') or [None])[0],
                   first_sample_ms=(report['variants']['default'].get('sample_warmup_ms') or [None])[0])
        rows[config_name] = row
        notes.append(f"{config_name}: {100 * row['mfu']:.1f}% MFU" if row.get('mfu') else
                     f"{config_name}: {row['status']}")
    failed = any(r['status'] == 'failed' for r in rows.values())
    return ('failed' if failed else 'ok'), '; '.join(notes)


def operator_names():
    """A dispatch mode that records the name of each aten operator run under it (``.names``)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Names(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))
    return Names()


def attention_kernels(device, shapes: dict, reps: int) -> dict:
    """For each named (B, H, L, D) shape: which SDPA kernel each attention backend runs (the aten operator
    dispatched, and on a GPU the kernels the profiler records) and its forward + backward time in ms."""
    import torch

    from libs.nets.attention import ATTENTION_BACKENDS, attention, sdpa_op
    dtype = torch.bfloat16 if device.type == 'cuda' else torch.float32
    result = {}
    for label, shape in shapes.items():
        q, k, v = (torch.randn(*shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        grad = torch.randn(*shape, device=device, dtype=dtype)
        rows = {}
        for backend in [b for b in ('sdpa', 'flash', 'cudnn', 'efficient') if b in ATTENTION_BACKENDS]:
            def call():
                attention(q, k, v, backend).backward(grad)
            try:
                with operator_names() as operators:
                    call()  # also the warm-up: the kernel's set-up, cuDNN's plan
                kernels = []
                if device.type == 'cuda':  # the profiler (seconds to start on a CPU) for the kernels' names
                    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                        call()
                        sync(device)
                    kernels = [e.key for e in prof.key_averages() if str(e.device_type).endswith('CUDA')]
                names = operators.names
                sync(device)
                start = time.perf_counter()
                for _ in range(reps):
                    call()
                sync(device)
                rows[backend] = dict(kernel=sdpa_op(names), ms=(time.perf_counter() - start) / reps * 1e3,
                                     gpu_kernels=[n for n in kernels if any(w in n.lower() for w in
                                                                            ('flash', 'fmha', 'cudnn', 'attn'))][:6])
            except RuntimeError as exc:  # a kernel this GPU or torch cannot run
                rows[backend] = dict(kernel='', ms=None, note=one_line(str(exc)))
        result[label] = dict(shape=list(shape), dtype=str(dtype).replace('torch.', ''), backends=rows)
    return result


def attention_section(check, name: str, sizes: dict) -> tuple:
    result = attention_kernels(check.device, sizes['attention_shapes'], sizes['attention_reps'])
    check.data['attention'] = result
    notes = []
    for label, entry in result.items():
        rows = entry['backends']
        timed = {b: r for b, r in rows.items() if r.get('ms')}
        fastest = min(timed, key=lambda b: timed[b]['ms']) if timed else '-'
        notes.append(f"{label}: sdpa runs {rows['sdpa']['kernel'] or '?'}, fastest {fastest}")
    return 'ok', '; '.join(notes)


def against_row(report: dict) -> dict:
    """What the table shows of one benchmark.py --against report."""
    nets = report['networks']
    return dict(batch=report['batch_size'], checkpointing=report['checkpointing'], ratios=report['ratios'],
                release_commit=report['release_commit'],
                networks={n: {k: r.get(k) for k in ('step_ms', 'img_per_s', 'tflops', 'peak_gib', 'first_loss')}
                          | dict(first_step_ms=(r.get('warmup_ms') or [None])[0]) for n, r in nets.items()})


def against_section(check, name: str, sizes: dict) -> tuple:
    """benchmark.py --against each release whose clone was given, on ``sizes['against']``."""
    rows, notes, failed = check.data.setdefault('against', {}), [], False
    for clone_key, config_name, batch, nnet in sizes['against']:
        clone = check.args.get(clone_key)
        if not clone:
            notes.append(f'{config_name}: no --{clone_key}, skipped')
            continue
        report, failure = run_benchmark(config_name, [], dict(sizes, batch=batch, nnet=nnet), check.work,
                                        check.timeout(name), against=clone)
        if report is None:
            rows[config_name] = dict(batch=batch, status=failure[0], note=failure[1])
            notes.append(f'{config_name}: {failure[1]}')
            failed = True
            continue
        rows[config_name] = dict(against_row(report), status='ok', clone=clone)
        ratios = report['ratios']
        notes.append(f"{config_name}: {ratios['ours_eager/release_eager']:.3f} eager, "
                     f"{ratios['ours_default/release_eager']:.3f} default")
    if not rows and not failed:
        return 'skipped', ('no clone of a release given (--uvit_clone=PATH of github.com/baofff/U-ViT, '
                           '--dit_clone=PATH of github.com/facebookresearch/DiT)')
    return ('failed' if failed else 'ok'), '; '.join(notes)


def checkpoint_memory_section(check, name: str, sizes: dict) -> tuple:
    """U-ViT-H/2 with gradient checkpointing: --against the release's when its clone is given, else ours alone."""
    config_name, batch = sizes['memory_config'], sizes['memory_batch']
    clone = check.args.get('uvit_clone')
    if clone:
        report, failure = run_benchmark(config_name, [], dict(sizes, batch=batch), check.work, check.timeout(name),
                                        ['--checkpointing'], against=clone)
        if report is None:
            return failure
        row = check.data['checkpoint_memory'] = dict(against_row(report), clone=clone, config=config_name)
        nets = row['networks']
        if check.device.type != 'cuda':
            return 'ok', 'peak memory is measured on CUDA only; the step times are in the table'
        ours, release = nets['ours (eager)']['peak_gib'], nets['release (eager)']['peak_gib']
        return 'ok', f'peak {ours:.2f} GiB ours, {release:.2f} GiB the release ({ours / release:.3f})'
    if check.device.type != 'cuda':
        return 'skipped', 'no --uvit_clone, and peak memory alone is measured on CUDA only'
    report, failure = run_benchmark(config_name, ['checkpointing'], dict(sizes, batch=batch), check.work,
                                    check.timeout(name))
    if report is None:
        return failure
    row = benchmark_rows(report, peak_tflops(check))['checkpointing']
    check.data['checkpoint_memory'] = dict(batch=batch, ours_only=row, config=config_name)
    if row['status'] != 'ok':
        return 'failed', row['note']
    return 'ok', (f"peak {row['peak_memory_mib'] / 1024:.2f} GiB ours (torch.cuda.max_memory_allocated of the "
                  f'process); no --uvit_clone for the release\'s')


def fid_walltime(device, sizes: dict, work: str) -> dict:
    """Seconds per sample of a FID evaluation of ``sizes['fid_config']`` as eval.py runs it (bf16 autocast on a
    GPU, the sampling network compiled by default): guided DPM-Solver sampling, the Stable Diffusion decoder and
    the Inception features, all with random weights, one mini-batch timed after one warm-up batch; and the 50,000
    samples' wall time extrapolated from it."""
    import torch

    from libs.cli import enable_tf32
    from libs.config import load_config_file
    from libs.data import data_spec, is_latent
    from libs.diffusion import build_framework
    from libs.diffusion.conditioning import build_conditioning
    from libs.evaluation.harness import draw_samples
    from libs.latent.spaces import build_space
    from libs.metrics.fid import InceptionFeatures, load_inception
    from libs.nets import build_nnet
    from libs.nets.compile import compile_regions
    from libs.rng import SampleRandom
    from libs.training.loop import default_path

    enable_tf32(device)
    config = load_config_file(os.path.join(ROOT, 'configs', sizes['fid_config'] + '.py'))
    config.nnet.update(sizes['fid_nnet'])
    config.sample.update(algorithm='dpm_solver', sample_steps=sizes['fid_nfe'], scale=0.4)
    torch.manual_seed(0)
    nnet = build_nnet(config.nnet).to(device).eval().requires_grad_(False)
    compiled = default_path(config, device)['sample_compile']
    if compiled:
        compile_regions(nnet)
    framework = build_framework(config)
    if is_latent(config.dataset):  # the Stable Diffusion decoder, random weights
        from diffusers import AutoencoderKL

        from libs.latent.autoencoder import SD_CONFIG, FrozenAutoencoder, config_format
        fmt = config_format('AutoencoderKL', SD_CONFIG)
        autoencoder = FrozenAutoencoder(AutoencoderKL(**SD_CONFIG).to(device), fmt)
        spec = data_spec(config.dataset, framework.data_shape(nnet), fmt)

        def decode(samples):
            return autoencoder.decode(samples, batch_size=config.autoencoder.decode_batch_size).float().clamp(-1, 1)
    else:
        spec = data_spec(config.dataset, framework.data_shape(nnet))
        decode = build_space(config, spec, device).decode
    conditioning = build_conditioning(config, nnet, spec.num_classes)
    path = os.path.join(work, 'random_fid_inception.pth')
    if not os.path.isfile(path):
        random_fid_inception(path)
    inception = InceptionFeatures(load_inception(path, device=device))
    batch, denoiser = sizes['fid_batch'], framework.denoiser(nnet)
    precision = torch.bfloat16 if device.type == 'cuda' else torch.float32

    def one_batch(start: int, nfe: int) -> dict:
        cfg = config.sample.copy_and_resolve_references()
        cfg.sample_steps = nfe
        seconds = {}
        with torch.autocast(device.type, dtype=precision, enabled=device.type == 'cuda'):
            sync(device)
            clock = time.perf_counter()
            random = SampleRandom(config.seed, range(start, start + batch), device)
            samples, _ = draw_samples(framework, denoiser, framework.build_sampler(cfg), spec.data_shape,
                                      conditioning, random, cfg.scale)
            sync(device)
            seconds['sample'] = time.perf_counter() - clock
            clock = time.perf_counter()
            images = decode(samples)
            sync(device)
            seconds['decode'] = time.perf_counter() - clock
        clock = time.perf_counter()
        features = inception(images)
        sync(device)
        seconds['inception'] = time.perf_counter() - clock
        seconds['finite'] = bool(math.isfinite(float(features.sum())))
        return seconds

    warm = one_batch(0, sizes['fid_warmup_nfe'])  # the compilation (sampling shapes) and kernel choices
    timed = one_batch(batch, sizes['fid_nfe'])
    per_sample = (timed['sample'] + timed['decode'] + timed['inception']) / batch
    return dict(config=sizes['fid_config'], batch=batch, nfe=sizes['fid_nfe'], scale=0.4, compiled=compiled,
                precision=str(precision).replace('torch.', ''), warmup_s=warm, timed_s=timed,
                seconds_per_sample=per_sample, n_samples=50_000, extrapolated_s=per_sample * 50_000)


def latent_spaces_section(check, name: str, sizes: dict) -> tuple:
    status, note, details = latent_spaces(check.smoke, check.work, check.timeout(name))
    check.data['latent_spaces'] = details
    return status, note


def repa_overhead_section(check, name: str, sizes: dict) -> tuple:
    status, note, details = repa_overhead(check.smoke, check.work, check.timeout(name))
    check.data['repa_overhead'] = details
    return status, note


def metrics_section(check, name: str, sizes: dict) -> tuple:
    # scripts/benchmark_metrics.py: the metric set in ADM's ImageNet 256 setting, in this process
    from benchmark_metrics import gpu_check_section
    status, note, details = gpu_check_section(check.device, check.smoke)
    check.data['metrics'] = details
    return status, note


def fid_walltime_section(check, name: str, sizes: dict) -> tuple:
    result = fid_walltime(check.device, sizes, check.work)
    check.data['fid_walltime'] = result
    if not result['timed_s']['finite']:
        return 'failed', 'non-finite Inception features'
    return 'ok', (f"{result['extrapolated_s'] / 60:.1f} min for 50,000 samples ({1 / result['seconds_per_sample']:.1f} "
                  f"samples/s at batch {result['batch']}, {result['nfe']} NFE with guidance)")


class Section(NamedTuple):
    """One part of the check: ``run(check, name, sizes) -> (status, note)``; its estimate in seconds on one H100 /
    H200 with the full sizes; the budget it needs left to start (``min_s``); the sections whose results it reads
    (``needs``: run first when it is selected); its own sizes, added to the mode's (``full``, ``smoke``); whether
    the whole check runs it (``by_default``; else only when --sections names it)."""
    run: object
    estimate_s: float = 0.0
    min_s: float = 0.0
    needs: tuple = ()
    full: dict = {}
    smoke: dict = {}
    by_default: bool = True


# U-ViT-L/2 and U-ViT-H/2 take 32x32 latents (256 patch tokens), DiT-XL/2 too; the smoke mode shrinks the networks
TINY_DIT = ['--config.nnet.hidden_size=32', '--config.nnet.depth=2', '--config.nnet.num_heads=2']
SECTIONS = {
    'matmul_peak': Section(matmul_section, 2),
    # each benchmark variant starts a process: about 5 s of imports and CUDA start-up, building the network, 13 steps
    'bench:imagenet256_uvit_large': Section(bench_section('imagenet256_uvit_large'), 50, needs=('matmul_peak',)),
    'bench:imagenet64_uvit_mid': Section(bench_section('imagenet64_uvit_mid'), 40, needs=('matmul_peak',)),
    'bench:cifar10_uvit_small': Section(bench_section('cifar10_uvit_small'), 33, needs=('matmul_peak',)),
    'fp16_training': Section(fp16_section, 25),
    'inception': Section(inception_section, 10),
    'ddp': Section(ddp_section, 0, min_s=40),
    # issue 22: the default GPU path. Regional compilation compiles two block graphs (U-ViT: with and without the
    # long skip) for training and two for sampling, about 10 s each way; then 7 steps and 7 sampling forwards
    'gpu_path': Section(gpu_path_section, 110, min_s=40, needs=('matmul_peak',), full=dict(
        steps=5, warmup=2, path_configs=[('imagenet256_uvit_large', 256, []), ('imagenet256_dit_xl2', 256, []),
                      ('cifar10_uvit_small', 128, [])]),
        smoke=dict(path_configs=[('cifar10_uvit_small', 2, TINY_NNET)])),
    # train.compile=full on U-ViT-L/2, against gpu_path's regional compilation; only when named (the whole check
    # stays under 8 minutes)
    'compile_full': Section(gpu_path_section, 60, min_s=40, needs=('matmul_peak',), by_default=False, full=dict(
        steps=5, warmup=2, path_configs=[('imagenet256_uvit_large', 256, ['--config.train.compile=full'])]),
        smoke=dict(path_configs=[('cifar10_uvit_small', 2, [*TINY_NNET, '--config.train.compile=full'])])),
    'attention': Section(attention_section, 10, full=dict(
        attention_shapes={'U-ViT-L/2 batch 256': (256, 16, 258, 64), 'DiT-XL/2 batch 256': (256, 16, 256, 72)},
        attention_reps=20), smoke=dict(attention_shapes={'tiny': (2, 2, 18, 16)}, attention_reps=2)),
    # three networks, 2 warm-up steps and 3 rounds of 3 steps each: 33 steps, and the default path's compilation
    'against': Section(against_section, 80, min_s=30, full=dict(rounds=3, steps=3, warmup=2, against=[
        ('uvit_clone', 'imagenet256_uvit_large', 256, []), ('dit_clone', 'imagenet256_dit_xl2', 256, [])]),
        smoke=dict(rounds=1, against=[('uvit_clone', 'cifar10_uvit_small', 2, TINY_NNET),
                                      ('dit_clone', 'digits_dit', 2, TINY_DIT)])),
    'checkpoint_memory': Section(checkpoint_memory_section, 45, min_s=30, full=dict(
        rounds=2, steps=2, warmup=2, memory_config='imagenet256_uvit_huge', memory_batch=128),
        smoke=dict(rounds=1, memory_config='cifar10_uvit_small', memory_batch=2)),
    # issue 24: U-ViT-H at 512 px on each latent space and the decoders (LATENT_SIZES); only when named
    'latent_spaces': Section(latent_spaces_section, LATENT_SIZES[False]['estimate_s'], min_s=60, by_default=False),
    # issue 21: REPA's step-time overhead on SiT-XL/2 at batch 256 (about 105 GiB: an H200); only when named
    'repa_overhead': Section(repa_overhead_section, REPA_SIZES[False]['estimate_s'], min_s=60, by_default=False),
    # issue 23: Inception, DINOv2, precision and recall of 50,000 x 10,000, KID (about 40 s); only when named
    'metrics': Section(metrics_section, 40, min_s=40, by_default=False),
    # U-ViT-H/2 at 250 samples, guided (500 per call): about 0.3 s per NFE, 15 s for 50, the decoder and the
    # compilation besides. The smoke mode samples the pixel-space digits (importing diffusers alone takes seconds)
    'fid_walltime': Section(fid_walltime_section, 35, min_s=30, full=dict(
        fid_config='imagenet256_uvit_huge', fid_nnet={}, fid_batch=250, fid_nfe=50, fid_warmup_nfe=3),
        smoke=dict(fid_config='digits_uvit_tiny', fid_nnet=dict(embed_dim=32, depth=2, num_heads=2), fid_batch=2,
                   fid_nfe=3, fid_warmup_nfe=3)),
}


def main(argv: list) -> int:
    try:
        args = parse_args(argv)
    except BadArguments as exc:
        print(f'error: {exc} (usage: bash scripts/gpu_check.sh OUT_DIR [--smoke] [--sections=NAME,...] '
              f'[--uvit_clone=PATH] [--dit_clone=PATH])', file=sys.stderr)
        return 2
    started = time.time()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop_running)
    import torch
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if not args['smoke'] and device.type != 'cuda':
        print('error: no CUDA GPU here; on a CPU, run the smoke mode: bash scripts/gpu_check.sh OUT_DIR --smoke',
              file=sys.stderr)
        return 2
    if args['smoke'] and device.type == 'cpu':
        global FORK_SCRIPTS
        FORK_SCRIPTS = True
        for name in PRELOAD:
            importlib.import_module(name)
    sizes = SMOKE if args['smoke'] else FULL
    budget = args['budget_s'] if args['budget_s'] is not None else sizes['budget_s']
    work = tempfile.mkdtemp(prefix='gpu_check_')
    check = Check(args['out'], args['smoke'], budget, sizes, args['install_s'] + (time.time() - started), device,
                  args, work)
    check.data['environment'] = environment(device)
    check.data['selected'] = args['sections']
    if args['install_note'] is not None:  # the shell script's install step, timed there
        check.data['sections'].append(dict(name='install', status='ok', seconds=args['install_s'],
                                           note=args['install_note']))
    check.record('startup', 'ok', time.time() - started, f'torch imported, {device.type} device')
    if not args['smoke']:
        estimate = sum(SECTIONS[name].estimate_s for name in args['sections'])
        print(f'estimate {estimate:.0f} s for the sections; budget {budget:.0f} s', flush=True)
    try:
        for name in args['sections']:
            check.run(name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    check.write()
    print(f"wrote {os.path.join(args['out'], REPORT_MD)} and {REPORT_JSON}: total {check.data['total_s']:.1f} s"
          f"{', a section failed' if check.data['failed'] else ''}", flush=True)
    return 1 if check.data['failed'] else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
