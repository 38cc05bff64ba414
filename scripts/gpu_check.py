"""The GPU check: what scripts/gpu_check.sh runs once it has installed what the machine lacks.

    python scripts/gpu_check.py OUT_DIR [--smoke] [--budget_s=S] [--install_s=S] [--install_note=TEXT]

Writes OUT_DIR/gpu_check.md (the tables) and OUT_DIR/gpu_check.json (every number), rewritten after each section, so
that a run stopped by a time limit still leaves what it measured. The sections, most wanted first:

1. ``matmul_peak``: the bf16 rate of an 8192^3 matmul on this GPU, the denominator of MFU.
2. ``bench:<config>``: scripts/benchmark.py on imagenet256_uvit_large, imagenet64_uvit_mid and cifar10_uvit_small
   (random data): the bf16 + SDPA baseline and one switch at a time (fp16, xformers, gradient checkpointing).
3. ``fp16_training``: 50 fp16 steps of train.py on a tiny digits U-ViT, resumed at step 25, with the grad scaler
   starting at 2^30 (``train.grad_scaler_init_scale``), so that the first steps overflow: each skip must be counted
   (metrics.jsonl and train_state.json agree) and no NaN or infinity may reach a checkpoint.
4. ``inception``: the FID feature pass (the suite's InceptionFeatures on pytorch-fid's InceptionV3, random weights)
   on 10,000 images.
5. ``compile``: torch.compile on one config; last, as the slowest, and skipped when the budget is short.
6. ``ddp``: a two-process train.py run, when two GPUs are present.

The full check needs a CUDA GPU and stays within ``--budget_s`` (290 s from the shell script's start): a section that
needs more than is left is skipped, and a process still running when the budget ends is stopped ("timed out").
``--smoke`` runs the same sections with tiny sizes on whatever device is here (a CPU in CI), so the script cannot rot.
Exit status: 0 if no section failed, 1 if one did, 2 for bad arguments.
"""
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BENCHMARK = os.path.join(ROOT, 'scripts', 'benchmark.py')
TRAIN = os.path.join(ROOT, 'train.py')
DIGITS = os.path.join(ROOT, 'configs', 'digits_uvit_tiny.py')

BENCH_CONFIGS = ('imagenet256_uvit_large', 'imagenet64_uvit_mid', 'cifar10_uvit_small')  # most wanted first
BENCH_VARIANTS = ('baseline', 'precision=fp16', 'attention=xformers', 'checkpointing')
TRAIN_STEPS, RESUME_AT = 50, 25
# 2^14 times the fp16 default (2^16). A tiny U-ViT's fp16 gradients overflow above a scale of about 2^19, so about the
# first ten steps are skipped (the scaler halves the scale at each) and the rest train.
INIT_SCALE_LOG2 = 30
REPORT_MD, REPORT_JSON = 'gpu_check.md', 'gpu_check.json'
TINY_NNET = ['--config.nnet.embed_dim=32', '--config.nnet.depth=2', '--config.nnet.num_heads=2']

# Sizes per mode. ``estimate_s``: seconds per section on one H100/H200, read off the sizes (each benchmark variant
# starts a process: about 5 s of imports and CUDA start-up, plus building the network and 13 steps; compiling
# U-ViT-S/2's training step and its sampling forward about a minute), 240 s in all, install included. A section
# starts only if ``min_s`` is left of the budget, and none of its processes outlives the budget.
FULL = dict(
    batch=128, steps=10, warmup=3, nnet=[], in_process=False, compile_config='cifar10_uvit_small',
    matmul_n=8192, matmul_reps=10, matmul_dtype='bf16',
    train_batch=64, train_nnet=['--config.nnet.embed_dim=64', '--config.nnet.depth=4', '--config.nnet.num_heads=2'],
    inception_images=10_000, inception_chunk=500, inception_size=256,
    budget_s=290.0,
    estimate_s={'install': 5, 'startup': 10, 'matmul_peak': 2, 'bench:imagenet256_uvit_large': 50,
                'bench:imagenet64_uvit_mid': 40, 'bench:cifar10_uvit_small': 33, 'fp16_training': 25,
                'inception': 10, 'compile': 70, 'ddp': 0},
    min_s={'compile': 80, 'ddp': 40},
)
SMOKE = dict(
    batch=2, steps=1, warmup=1, nnet=TINY_NNET,
    in_process=True,  # starting a process per variant costs more than measuring a tiny one
    compile_config='cifar10_uvit_small', matmul_n=256, matmul_reps=3, matmul_dtype=None,
    train_batch=16, train_nnet=TINY_NNET,
    inception_images=4, inception_chunk=4, inception_size=32,
    budget_s=600.0, estimate_s={}, min_s={},
)

# The end of the output of each process that failed or timed out, for the JSON: on a lent GPU machine nothing else
# of the scratch folder comes back.
FAILURE_LOGS = []
RUNNING = set()  # process group ids of the running child processes


class BadArguments(Exception):
    pass


def parse_args(argv: list) -> dict:
    """OUT_DIR [--smoke] [--budget_s=S] [--install_s=S] [--install_note=TEXT]; BadArguments says what is wrong."""
    args = dict(out=None, smoke=False, budget_s=None, install_s=0.0, install_note=None)
    for arg in argv:
        key, eq, value = arg.partition('=')
        if arg == '--smoke':
            args['smoke'] = True
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


# ----------------------------------------------------------------------------------------------------- helpers

def one_line(text: str, limit: int = 300) -> str:
    """The last non-empty line of a process's output (where Python puts its error), shortened."""
    lines = [line.strip() for line in (text or '').splitlines() if line.strip()]
    return (lines[-1] if lines else 'no output')[:limit]


def run_process(cmd: list, timeout: float, env: dict = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group, so that a timeout also ends the children it started (benchmark.py
    measures each variant in a child, and a left-over child would hold the GPU). returncode None: timed out."""
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


def run_benchmark(config_name: str, variants: list, sizes: dict, work: str, timeout: float) -> tuple:
    """scripts/benchmark.py on one config: (report, None) or (None, (status, note))."""
    out = os.path.join(work, f'bench_{config_name}_{"_".join(v.replace("=", "-") for v in variants)}.json')
    cmd = [sys.executable, BENCHMARK, f'--config={os.path.join(ROOT, "configs", config_name + ".py")}',
           *sizes['nnet'], f'--batch_size={sizes["batch"]}', f'--steps={sizes["steps"]}',
           f'--warmup={sizes["warmup"]}', f'--variants={",".join(variants)}', f'--out={out}']
    if sizes['in_process']:
        cmd.append('--in_process')
    proc = run_process(cmd, timeout)
    # benchmark.py exits with 1 when a variant failed, after writing every variant's result
    if proc.returncode in (0, 1) and os.path.isfile(out):
        with open(out) as f:
            return json.load(f), None
    return None, process_failure(proc, 'benchmark.py')


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


class Check:
    """Runs the sections in order within the time budget and rewrites the report after each."""

    def __init__(self, out: str, smoke: bool, budget_s: float, sizes: dict, install_s: float):
        self.out, self.sizes, self.budget_s = out, sizes, budget_s
        self.start = time.time() - install_s  # the budget counts from the shell script's start
        self.data = dict(smoke=smoke, started=time.strftime('%Y-%m-%d %H:%M:%S %Z'), budget_s=budget_s,
                         estimate_s=sizes['estimate_s'], sections=[], benchmarks={}, failed=False, total_s=0.0,
                         failure_logs=FAILURE_LOGS,
                         sizes={k: v for k, v in sizes.items() if k not in ('estimate_s', 'min_s', 'budget_s')})

    def elapsed(self) -> float:
        return time.time() - self.start

    def timeout(self, name: str) -> float:
        """Seconds the section's processes may take: what is left of the budget, and at most three times the
        section's estimate, so that one hung process leaves time for the sections after it."""
        left = self.start + self.budget_s - time.time()
        estimate = self.sizes['estimate_s'].get(name)
        return max(1.0, min(left, 3 * estimate) if estimate else left)

    def record(self, name: str, status: str, seconds: float, note: str) -> None:
        self.data['sections'].append(dict(name=name, status=status, seconds=seconds, note=note))
        self.data['failed'] = self.data['failed'] or status == 'failed'
        print(f"[{self.elapsed():6.1f} s] {name}: {status} ({seconds:.1f} s){': ' + note if note else ''}",
              flush=True)
        self.write()

    def section(self, name: str, fn) -> None:
        """Run ``fn() -> (status, note)`` unless less than the section's ``min_s`` is left of the budget."""
        left, need = self.budget_s - self.elapsed(), self.sizes['min_s'].get(name, 0)
        if left < max(need, 1):
            self.record(name, 'skipped', 0.0, f'time budget: {left:.0f} s left, needs about {max(need, 1)} s')
            return
        print(f"[{self.elapsed():6.1f} s] {name} ...", flush=True)
        start = time.time()
        try:
            status, note = fn()
        except Exception as exc:  # reported in the section's row; the other sections still run
            status, note = 'failed', f'{type(exc).__name__}: {one_line(str(exc))}'
        self.record(name, status, time.time() - start, note)

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


def main(argv: list) -> int:
    try:
        args = parse_args(argv)
    except BadArguments as exc:
        print(f'error: {exc} (usage: bash scripts/gpu_check.sh OUT_DIR [--smoke])', file=sys.stderr)
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
    sizes = SMOKE if args['smoke'] else FULL
    budget = args['budget_s'] if args['budget_s'] is not None else sizes['budget_s']
    check = Check(args['out'], args['smoke'], budget, sizes, args['install_s'] + (time.time() - started))
    check.data['environment'] = environment(device)
    if args['install_note'] is not None:  # the shell script's install step, timed there
        check.data['sections'].append(dict(name='install', status='ok', seconds=args['install_s'],
                                           note=args['install_note']))
    check.record('startup', 'ok', time.time() - started, f'torch imported, {device.type} device')
    if sizes['estimate_s']:
        print(f"estimate {sum(sizes['estimate_s'].values())} s in all; budget {budget:.0f} s", flush=True)
    work = tempfile.mkdtemp(prefix='gpu_check_')
    peak = {}

    def measure_peak():
        dtype = sizes['matmul_dtype'] or ('bf16' if device.type == 'cuda' else 'fp32')
        peak.update(matmul_peak(device, sizes['matmul_n'], sizes['matmul_reps'], dtype))
        check.data['matmul_peak'] = peak
        if device.type == 'cuda':
            torch.cuda.empty_cache()  # the benchmarks' processes get the whole GPU
        return 'ok', f"{peak['tflops']:.4g} TFLOP/s {dtype}"

    def bench(config_name, variants, section_name):
        def measure():
            entry = check.data['benchmarks'].setdefault(config_name, dict(batch=sizes['batch'], rows={},
                                                                        reports=[]))
            report, failure = run_benchmark(config_name, variants, sizes, work, check.timeout(section_name))
            if report is None:
                entry['rows'].update({v: dict(status=failure[0], note=failure[1]) for v in variants})
                return failure
            entry['reports'].append(report)
            rows = benchmark_rows(report, peak.get('tflops'))
            entry['rows'].update(rows)
            failed = [n for n, r in rows.items() if r['status'] == 'failed']
            if failed:
                return 'failed', '; '.join(f'{n}: {rows[n]["note"]}' for n in failed)
            return 'ok', f"{sum(r['status'] == 'ok' for r in rows.values())} of {len(rows)} variants measured"
        return measure

    def fp16():
        status, note, details = fp16_training(sizes, work, time.time() + check.timeout('fp16_training'))
        check.data['fp16_training'] = dict(details, note=note)
        return status, note

    def inception():
        result = inception_throughput(device, sizes, work)
        check.data['inception'] = result
        if not all(r['finite'] for r in result['runs'].values()):
            return 'failed', 'non-finite Inception features'
        best = max(result['runs'].values(), key=lambda r: r['img_per_s'])
        return 'ok', f"{best['images']:,} images at {best['img_per_s']:,.0f} img/s (batch {best['batch']})"

    def compile_variant():
        if device.type == 'cpu':
            return 'skipped', "on a CPU: inductor's C++ build alone takes minutes on 2 cores"
        return bench(sizes['compile_config'], ['compile'], 'compile')()

    def ddp():
        status, note, details = ddp_check(sizes, work, check.timeout('ddp'),
                                          check.data['environment']['gpus'])
        check.data['ddp'] = dict(details, status=status, note=note)
        return status, note

    try:
        check.section('matmul_peak', measure_peak)
        for config_name in BENCH_CONFIGS:
            check.section(f'bench:{config_name}', bench(config_name, list(BENCH_VARIANTS), f'bench:{config_name}'))
        check.section('fp16_training', fp16)
        check.section('inception', inception)
        check.section('compile', compile_variant)
        check.section('ddp', ddp)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    check.write()
    print(f"wrote {os.path.join(args['out'], REPORT_MD)} and {REPORT_JSON}: total {check.data['total_s']:.1f} s"
          f"{', a section failed' if check.data['failed'] else ''}", flush=True)
    return 1 if check.data['failed'] else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
