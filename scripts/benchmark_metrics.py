"""Speed of the metric set of scripts/score_samples.py on this machine: the networks' passes and each metric's own
computation, and from them images per second for a whole benchmark (BENCHMARKS.md, "Sample metrics").

    python scripts/benchmark_metrics.py [--samples=10000] [--reference=10000] [--images=40] [--dinov2_images=6]
        [--image_size=256] [--batch=50] [--out=metrics_speed.json] [--smoke]

Networks have random weights (the real files are not needed to time them): pytorch-fid's FID Inception giving pool,
spatial and logit features in one pass, and a DINOv2 of ViT-L/14's shape (``--smoke``: a tiny one). The metrics run
on random features of the real widths: precision and recall of ``--samples`` against ``--reference`` (k = 3), KID
(100 subsets of 1,000), the three Frechet distances (2048, 2023, 1024 features) and the Inception Score. Whole
benchmark: ``--samples`` images through both networks, plus the metrics; the reference's own pass is reported
apart (a training run computes it once).

``gpu_check_section(device, smoke)`` is the section for scripts/gpu_check.py: ADM's ImageNet 256 setting (50,000
samples against a 10,000-image reference batch), failed when precision and recall take longer than the Inception
pass over the 50,000 samples.
"""
import json
import os
import platform
import sys
import time
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CPU_SIZES = dict(samples=10_000, reference=10_000, images=40, dinov2_images=6, image_size=256, batch=50,
                 dinov2='vitl14', kid_subsets=100, kid_subset_size=1000)
GPU_SIZES = dict(samples=50_000, reference=10_000, images=10_000, dinov2_images=2_000, image_size=256, batch=500,
                 dinov2='vitl14', kid_subsets=100, kid_subset_size=1000)
SMOKE_SIZES = dict(samples=80, reference=60, images=4, dinov2_images=2, image_size=32, batch=4, dinov2='tiny',
                   kid_subsets=2, kid_subset_size=20)
DINOV2_SHAPES = {   # Dinov2Config arguments: facebook/dinov2-large (ViT-L/14), and a tiny one for smoke runs
    'vitl14': dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                   patch_size=14, image_size=518),
    'tiny': dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, patch_size=14,
                 image_size=28),
}


def sync(device) -> None:
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn, device):
    """(result, seconds) of ``fn()``, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


def random_inception(device):
    """pytorch-fid's FID InceptionV3 up to the pool features, random weights, on ``device``."""
    import torch
    import torchvision
    from pytorch_fid import inception as fid_inception
    torch.manual_seed(0)
    with mock.patch.object(fid_inception, 'load_state_dict_from_url', lambda *a, **k: {}), \
            mock.patch.object(torchvision.models.Inception3, 'load_state_dict', lambda self, *a, **k: None):
        model = fid_inception.InceptionV3([3])
    return model.eval().to(device)


def random_dinov2(shape: str, device):
    import torch
    from transformers import Dinov2Config, Dinov2Model
    torch.manual_seed(0)
    return Dinov2Model(Dinov2Config(**DINOV2_SHAPES[shape])).eval().requires_grad_(False).to(device)


def network_rate(features, count: int, batch: int, size: int, device) -> float:
    """Images per second of ``features(uint8 images)`` over ``count`` images handed over ``batch`` at a time."""
    import torch
    images = torch.randint(0, 256, (batch, 3, size, size), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8).to(device)
    features(images[:min(batch, 2)])   # warm-up: kernels chosen, memory allocated
    done, seconds = 0, 0.0
    while done < count:
        part = images[:min(batch, count - done)]
        _, spent = timed(lambda: features(part), device)
        done, seconds = done + len(part), seconds + spent
    return done / seconds


def metric_seconds(sizes: dict, device, dinov2_width: int) -> dict:
    """Seconds of each metric's own computation on random features of the real widths."""
    import torch

    from libs.metrics import fid
    from libs.metrics.inception_score import inception_score_of_features
    from libs.metrics.kid import kid
    from libs.metrics.precision_recall import precision_recall
    generator = torch.Generator().manual_seed(1)
    n, n_ref = sizes['samples'], sizes['reference']

    def features(rows, width, shift=0.0):   # non-negative, like features after a ReLU
        return (torch.rand(rows, width, generator=generator) + shift).to(device)
    samples, ref = features(n, 2048, 0.05), features(n_ref, 2048)
    out = {}
    _, out['precision_recall'] = timed(lambda: precision_recall(ref, samples, 3), device)
    _, out['kid'] = timed(lambda: kid(ref, samples, sizes['kid_subsets'], sizes['kid_subset_size']), device)
    weight = torch.randn(1008, 2048, generator=generator, dtype=torch.float64) / 45
    _, out['inception_score'] = timed(lambda: inception_score_of_features(samples, weight, split_size=5000), device)
    for name, width in (('fid', 2048), ('sfid', fid.SPATIAL_FEATURES), ('fd_dinov2', dinov2_width)):
        stats = fid.activation_statistics(features(min(n_ref, 4 * width), width).double().cpu().numpy())
        acts = features(n, width, 0.05)
        _, out[name] = timed(lambda: fid.frechet_distance_of_activations(acts.double().cpu().numpy(), *stats), device)
    return out


def measure(device, sizes: dict) -> dict:
    """Network rates, metric seconds and the whole benchmark's images per second (see the module docstring)."""
    from libs.metrics.fd_dinov2 import DinoV2Features
    from libs.metrics.fid import InceptionFeatures
    inception = InceptionFeatures(random_inception(device), sizes['batch'])
    inception_rate = network_rate(lambda x: inception.outputs(x, spatial=True), sizes['images'], sizes['batch'],
                                  sizes['image_size'], device)
    try:
        dinov2 = DinoV2Features(random_dinov2(sizes['dinov2'], device), sizes['batch'])
    except ImportError:   # a GPU machine without transformers: the Inception metrics alone
        dinov2 = None
    dinov2_rate = dinov2 and network_rate(dinov2, sizes['dinov2_images'], sizes['batch'], sizes['image_size'],
                                          device)
    metrics = metric_seconds(sizes, device, dinov2.width if dinov2 else DINOV2_SHAPES['vitl14']['hidden_size'])
    n = sizes['samples']
    passes = {'inception': n / inception_rate, 'dinov2': n / dinov2_rate if dinov2 else 0.0}
    whole = sum(passes.values()) + sum(metrics.values())
    inception_set = passes['inception'] + sum(v for k, v in metrics.items() if k != 'fd_dinov2')
    return dict(sizes=sizes, inception_img_per_s=inception_rate, dinov2_img_per_s=dinov2_rate,
                metric_seconds=metrics, pass_seconds=passes,
                reference_pass_seconds=sizes['reference'] * (1 / inception_rate + (1 / dinov2_rate if dinov2 else 0)),
                whole_seconds=whole, whole_img_per_s=n / whole,
                inception_metrics_img_per_s=n / inception_set,
                precision_recall_share=metrics['precision_recall'] / whole)


def dtype_differences(n: int = 5000, seed: int = 0) -> dict:
    """Precision and recall of synthetic Inception-like features (``n`` reference and ``n`` sample rows of 2048
    non-negative values around 100 cluster centres, the samples' clusters shifted) with the distances in fp16 (ADM's
    evaluator), fp32 (this suite) and fp64; on the CPU."""
    import torch

    from libs.metrics.precision_recall import precision_recall
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(100, 2048, generator=generator, dtype=torch.float64) * 0.8

    def draw(shift):
        labels = torch.randint(0, 100, (n,), generator=generator)
        noise = 0.25 * torch.randn(n, 2048, generator=generator, dtype=torch.float64)
        return (centres[labels] + shift + noise).clamp_min(0)
    ref, samples = draw(0.0), draw(0.02)
    return {str(dtype).replace('torch.', ''): precision_recall(ref, samples, 3, dtype=dtype)
            for dtype in (torch.float16, torch.float32, torch.float64)}


def describe_device(device) -> str:
    import torch
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    try:
        with open('/proc/cpuinfo') as f:
            name = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        name = platform.processor() or 'CPU'
    return f'{name}, {torch.get_num_threads()} threads'


def markdown(report: dict) -> str:
    m, s = report['metric_seconds'], report['sizes']
    lines = [f"Sample metrics on {report['device']} ({s['samples']:,} samples, {s['reference']:,} reference images, "
             f"{s['image_size']}x{s['image_size']}, batch {s['batch']})", '',
             '| what | rate or time |', '|---|---:|',
             f"| Inception pass (pool + spatial features) | {report['inception_img_per_s']:,.1f} img/s |",
             f"| DINOv2 {s['dinov2']} pass (224 x 224) | " + (f"{report['dinov2_img_per_s']:,.2f} img/s |"
                                                             if report['dinov2_img_per_s'] else 'no transformers |')]
    lines += [f'| {name} | {seconds:.2f} s |' for name, seconds in m.items()]
    lines += [f"| whole set, {s['samples']:,} samples (both passes + all metrics) | {report['whole_seconds']:,.0f} s "
              f"= {report['whole_img_per_s']:,.2f} img/s |",
              f"| Inception metrics only (fid, sfid, is, prec, recall, kid) | "
              f"{report['inception_metrics_img_per_s']:,.1f} img/s |",
              f"| precision and recall, share of the whole | {100 * report['precision_recall_share']:.1f}% |",
              f"| reference pass, once ({s['reference']:,} images, both networks) | "
              f"{report['reference_pass_seconds']:,.0f} s |"]
    return '\n'.join(lines)


def gpu_check_section(device, smoke: bool = False) -> tuple:
    """(status, note, details) for scripts/gpu_check.py: ADM's ImageNet 256 setting on a GPU (tiny sizes with
    ``smoke``); 'failed' when precision and recall take longer than the Inception pass over the samples."""
    report = measure(device, SMOKE_SIZES if smoke else GPU_SIZES)
    report['device'] = describe_device(device)
    pr, inception = report['metric_seconds']['precision_recall'], report['pass_seconds']['inception']
    dinov2 = f"{report['dinov2_img_per_s']:,.0f} img/s" if report['dinov2_img_per_s'] else 'not timed (no transformers)'
    note = (f"Inception {report['inception_img_per_s']:,.0f} img/s, DINOv2 {dinov2}; "
            f"{report['sizes']['samples']:,} x {report['sizes']['reference']:,} precision/recall {pr:.1f} s, "
            f"KID {report['metric_seconds']['kid']:.1f} s; whole set {report['whole_img_per_s']:,.0f} img/s")
    if pr > inception and not smoke:
        return 'failed', f'precision and recall ({pr:.1f} s) outlast the Inception pass ({inception:.1f} s); {note}', \
            report
    return 'ok', note, report


def main(argv: list) -> int:
    import argparse

    import torch
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    for key, value in CPU_SIZES.items():
        parser.add_argument(f'--{key}', type=type(value), default=value)
    parser.add_argument('--out', default='')
    parser.add_argument('--smoke', action='store_true', help='tiny sizes and a tiny DINOv2')
    parser.add_argument('--dtypes', action='store_true', help='only: precision and recall of synthetic features '
                        'with fp16 (ADM), fp32 and fp64 distances, --samples rows each')
    args = parser.parse_args(argv)
    if args.dtypes:
        for name, (precision, recall) in dtype_differences(args.samples).items():
            print(f'{name}: precision {precision:.6f} recall {recall:.6f}')
        return 0
    sizes = SMOKE_SIZES if args.smoke else {key: getattr(args, key) for key in CPU_SIZES}
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    report = measure(device, sizes)
    report['device'] = describe_device(device)
    print(markdown(report))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
