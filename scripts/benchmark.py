"""Training and sampling speed of a config's network on this machine, one switch at a time.

    python scripts/benchmark.py --config=configs/cifar10_uvit_small.py [--batch_size=8] [--steps=10] [--warmup=3] \
        [--variants=all|baseline,attention,precision,checkpointing,compile,decode,repa] [--sample_batch=N] \
        [--out=results.json] [--in_process]
    python scripts/benchmark.py --config=configs/imagenet512_uvit_huge.py --variants=latent,autoencoders \
        [--resolution=512] [--ae_width_divisor=1]
    python scripts/benchmark.py --config=configs/imagenet256_uvit_large.py --against=../U-ViT --batch_size=256 \
        [--rounds=5] [--steps=10] [--warmup=3]

Training: one optimizer step (the framework's loss, backward, the config's AdamW) on random data of the
network's input shape. Sampling: no-grad forward passes of the network. The baseline is sdpa attention, fp32 on the
CPU / bf16 autocast on a GPU, no gradient checkpointing, no torch.compile; every other variant changes one switch.
Each variant runs in a fresh process of this script, so peak memory and compile caches are its own (--in_process
measures them all in one, for smoke tests, where starting processes costs more than measuring). Latent configs
train on random latents (what the stored features give) and, for text-to-image, random CLIP contexts; their extra
variant ``decode`` times their autoencoder's decoder (its architecture, random weights) on ``--sample_batch``
latents, in the variant's precision. A config with REPA (``config.repa.weight`` > 0; every other variant trains
without it) has the extra variant ``repa``: the step with REPA's alignment term (the frozen encoder on the batch's
images, the projector, the loss); when the encoder's weights are not there, a randomly initialised encoder of the
same architecture stands in (the note says so), which costs the same time. Latent configs give it random RGB images
at the encoder's input size (the resize to it, a small share, is not timed).

Latent spaces (not in 'all'): ``latent=<architecture>/p<patch>`` trains the config's backbone on the latents that
autoencoder gives at ``--resolution`` (U-ViT-H at 512 px: SD-VAE-f8's 64x64x4 at patch 2 and 4, DC-AE-f32's
16x16x32 and f64's 8x8x128 at patch 1, the group ``latent``); ``decode=<architecture>`` times that autoencoder's
decoder (``ARCHITECTURES`` of libs/latent/autoencoder.py: the published configs, random weights; the group
``autoencoders``), its widths divided by ``--ae_width_divisor`` for a CPU. Every row says its image tokens.

Side by side with a release (``--against=PATH``, a clone of github.com/baofff/U-ViT for a U-ViT config or of
github.com/facebookresearch/DiT for a DiT config, read at run time): the release's own network (``libs/uvit.py``,
``models.py``) against ours in one process, with our weights loaded into theirs (the keys are the release's), the
same inputs, precision, optimizer and EMA, three ways: the release eager (as its users run it), ours eager, and ours
on the default path (what train.py turns on here: regional compilation, a fused optimizer, the multi-tensor EMA; on
a CPU that is eager too). ``--rounds`` rounds of ``--steps`` steps each, the order rotating each round; each step
time is the median of its rounds' means. ``--checkpointing``: gradient checkpointing in all three.

Memory without a GPU (``--meta_memory``, with or without ``--against``): the bytes a training step keeps alive beyond
the weights, after the forward and at the backward's peak, counted on the meta device (fp32; no memory, no time).

Prints a markdown table; --out writes every number as JSON. FLOPs are counted once on one forward pass (matmuls and
convolutions, torch.utils.flop_counter); a training step counts as 3 forward passes (recomputation under gradient
checkpointing is not counted, so its TFLOP/s is model FLOPs per second).
"""
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from libs.cli import define_config_flag, parse_flags, run  # noqa: E402
from libs.errors import UserError  # noqa: E402

define_config_flag('Training configuration file (configs/*.py).')
flags.mark_flags_as_required(['config'])
flags.DEFINE_integer('batch_size', 8, 'Training batch size.')
flags.DEFINE_integer('sample_batch', None, 'Batch size of the sampling forward passes (default: --batch_size).')
flags.DEFINE_integer('steps', 10, 'Timed steps (and timed sampling forward passes) per variant.')
flags.DEFINE_integer('warmup', 3, 'Untimed steps before the timed ones.')
flags.DEFINE_string('variants', 'all', "'all' or a comma-separated list of groups "
                                       '(baseline, attention, precision, checkpointing, compile) or variant names.')
flags.DEFINE_string('out', None, 'Write all numbers to this JSON file.')
flags.DEFINE_integer('resolution', 512, 'Image size of the latent=... and decode=... variants.')
flags.DEFINE_integer('ae_width_divisor', 1, 'decode=... variants: divide the autoencoder widths by this (a CPU run).')
flags.DEFINE_bool('in_process', False, 'Measure every variant in this process instead of a fresh one each: faster '
                  'to start (for smoke tests), but peak memory and compile caches are then shared between variants.')
flags.DEFINE_string('against', None, "A clone of the release (U-ViT's or DiT's repository): time its network "
                    'against ours side by side instead of the variants.')
flags.DEFINE_integer('rounds', 5, 'With --against: rounds of --steps steps per network, the order rotating.')
flags.DEFINE_bool('checkpointing', False, 'With --against or --meta_memory: gradient checkpointing in every network.')
flags.DEFINE_bool('meta_memory', False, 'Count on the meta device (no memory, no time) the bytes a training step keeps '
                  "alive, ours and with --against the release's, instead of timing.")
flags.DEFINE_string('_single_variant', None, 'Internal: measure this one variant and print its JSON.')
FLAGS = flags.FLAGS

RESULT_MARKER = 'BENCHMARK_RESULT '
PRECISIONS = ('fp32', 'bf16', 'fp16')
GROUPS = {
    'baseline': ['baseline'],
    'attention': ['attention=math', 'attention=xformers'],
    'sdpa': ['attention=flash', 'attention=cudnn', 'attention=efficient'],  # SDPA with that kernel tried first
    'precision': [f'precision={p}' for p in PRECISIONS],
    'checkpointing': ['checkpointing'],
    'compile': ['compile'],  # regional, what train.py does ('compile=full': the whole network at once)
    'fused_optimizer': ['fused_optimizer'],
    'default': ['default'],  # train.py's default path here: each switch the config turns on on this device
    'decode': ['decode'],
    'repa': ['repa'],
    # Comparisons rather than switches, so not in 'all': U-ViT-H's latent spaces at 512 px (DC-AE's Table), and the
    # decoders of the autoencoders this suite reads.
    'latent': ['latent=sd-vae-f8/p2', 'latent=sd-vae-f8/p4', 'latent=dc-ae-f32c32/p1', 'latent=dc-ae-f64c128/p1'],
    'autoencoders': ['decode=sd-vae-f8', 'decode=sd3-vae', 'decode=dc-ae-f32c32', 'decode=dc-ae-f64c128'],
}
COMPARISONS = ('latent', 'autoencoders')
COLUMNS = ('variant', 'tokens', 'train step ms', 'train img/s', 'peak memory MiB', 'TFLOP/s', 'sample img/s per NFE',
           'sample img/s @50 NFE (derived)', 'decode img/s', 'note')


# ------------------------------------------------------------------------------------------------------- variants

def baseline_settings(device_type: str) -> dict:
    return dict(attention='sdpa', precision='bf16' if device_type == 'cuda' else 'fp32', checkpointing=False,
                compile=False, fused_optimizer=False, repa=False)


def variant_settings(name: str, device_type: str, config=None) -> dict:
    """The baseline with the one switch that ``name`` ('attention=math', 'checkpointing', ...) changes; 'default':
    with each switch train.py's default path turns on for ``config`` on this device (compile: regional)."""
    settings = baseline_settings(device_type)
    if name == 'default':
        from libs.training.loop import default_path
        path = default_path(config, device_type)
        settings.update(compile=path['compile'] or False, fused_optimizer=path['fused_optimizer'])
    elif name == 'compile':
        settings['compile'] = 'regional'
    elif name != 'baseline':
        key, _, value = name.partition('=')
        settings[key] = value or True
    return settings


def expand_variants(spec: str, device_type: str, latent: bool = False, repa: bool = False) -> list:
    """Variant names for --variants; a precision group leaves out the baseline's own precision, and 'all' has
    'decode' only for latent models and 'repa' only for configs with REPA."""
    baseline_precision = f"precision={baseline_settings(device_type)['precision']}"
    known = [name for names in GROUPS.values() for name in names] + ['compile=full']
    names = []
    for item in [s.strip() for s in spec.split(',') if s.strip()] or ['']:
        if item == 'all':
            expanded = [n for group, group_names in GROUPS.items() if group not in COMPARISONS
                        for n in group_names if (latent or n != 'decode') and (repa or n != 'repa')]
        elif item in GROUPS:
            expanded = GROUPS[item]
        elif item in known:
            expanded = [item]
        else:
            raise UserError(f"unknown variant {item!r}; known: all, {', '.join(GROUPS)}, "
                            f"{', '.join(n for n in known if n not in GROUPS)}")
        if item != baseline_precision:
            expanded = [n for n in expanded if n != baseline_precision]
        names.extend(n for n in expanded if n not in names)
    return names


def why_not_runnable(settings: dict, device_type: str, config=None):
    """(status, note) for a variant that cannot run here, else None."""
    from libs.nets.attention import available_backends
    if config is not None and settings['checkpointing'] and 'use_checkpoint' not in backbone_switches(config):
        return 'unavailable', f'{config.nnet.name} has no gradient checkpointing'
    if settings['attention'] not in available_backends():
        return 'unavailable', f"attention backend {settings['attention']!r} is not installed"
    if settings['precision'] == 'fp16' and device_type == 'cpu':
        return 'skipped', 'fp16 autocast is not benchmarked on the CPU'
    if config is not None and settings['repa'] and not config.repa.weight:
        return 'unavailable', 'config.repa.weight is 0: benchmark a config with REPA (e.g. configs/digits_uvit_repa.py)'
    return None


# ---------------------------------------------------------------------------------------------------- measurement

def pick_device():
    import torch
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def describe_device(device) -> dict:
    import torch
    if device.type == 'cuda':
        return dict(type='cuda', name=torch.cuda.get_device_name(device))
    name = platform.processor() or 'unknown CPU'
    try:
        with open('/proc/cpuinfo') as f:
            name = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    return dict(type='cpu', name=name, threads=torch.get_num_threads())


def synthetic_batch(nnet, batch: int, device, shape=None):
    """Data in [-1, 1] of ``shape`` (default: the network's input shape; images or latents) and its condition:
    random labels for a class-conditional network, random CLIP contexts for a text-to-image one."""
    import torch
    x0 = torch.rand(batch, *(shape or nnet.input_shape), device=device) * 2 - 1
    cond = {}
    if nnet.condition == 'labels':  # GenViT's num_classes is a classifier head, not a condition
        cond['y'] = torch.randint(0, nnet.num_classes, (batch,), device=device)
    if nnet.condition == 'text':
        cond['context'] = torch.randn(batch, nnet.num_clip_token, nnet.context_embed.in_features, device=device)
    return x0, cond


def backbone_switches(config) -> set:
    """Which of the benchmark's switches (attention_backend, use_checkpoint) the backbone's constructor takes."""
    import inspect

    from libs.nets import NNETS
    parameters = inspect.signature(NNETS[config.nnet.name]).parameters
    if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        return {'attention_backend', 'use_checkpoint'}
    return {'attention_backend', 'use_checkpoint'} & set(parameters)


def backbone_config(config, **switches) -> dict:
    """config.nnet with those of ``switches`` that the backbone takes (DiT has no gradient checkpointing)."""
    accepted = backbone_switches(config)
    return dict(config.nnet, **{key: value for key, value in switches.items() if key in accepted})


def count_flops(config) -> int:
    """FLOPs of one forward pass for one image, counted on the meta device (no memory, no time)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from libs.nets import build_nnet
    # The 'math' backend writes attention as two matmuls, which the counter sees on every device.
    with torch.device('meta'):
        nnet = build_nnet(backbone_config(config, attention_backend='math', use_checkpoint=False))
        x, cond = synthetic_batch(nnet, 1, 'meta')
        timesteps = torch.full((1,), 500.0)
    with FlopCounterMode(display=False) as counter:
        nnet(x, timesteps, **cond)
    return counter.get_total_flops()


def image_tokens(nnet):
    """The image tokens of a patch-based backbone (its input's (H / p) (W / p)), None for others (the U-Net)."""
    patch = getattr(nnet, 'patch_size', None)
    if not patch:
        return None
    _, height, width = nnet.input_shape
    return (height // patch) * (width // patch)


# The constructor arguments that set a backbone's input geometry (U-ViT's and GenViT's names, DiT's names).
GEOMETRY_KEYS = {'size': ('img_size', 'input_size'), 'channels': ('in_chans', 'in_channels'),
                 'patch': ('patch_size',)}


def latent_space_config(config, space: str, resolution: int):
    """``config`` with its backbone taking the latents of ``space`` ('<architecture>/p<patch>', the architecture a
    key of ARCHITECTURES) at ``resolution``: (channels, resolution / factor, same) in patches of that size."""
    import inspect

    from libs.latent.autoencoder import ARCHITECTURES, config_format
    from libs.nets import NNETS
    architecture, _, patch = space.partition('/p')
    if architecture not in ARCHITECTURES or not patch.isdigit():
        raise UserError(f"latent space {space!r} is not '<architecture>/p<patch>'; architectures: "
                        f"{', '.join(ARCHITECTURES)}")
    fmt = config_format(*ARCHITECTURES[architecture], source=architecture)
    if resolution % fmt.factor:
        raise UserError(f'--resolution={resolution} is not a multiple of {architecture}\'s factor {fmt.factor}')
    accepted = set(inspect.signature(NNETS[config.nnet.name]).parameters)
    values = {'size': resolution // fmt.factor, 'channels': fmt.channels, 'patch': int(patch)}
    config = config.copy_and_resolve_references()
    for what, keys in GEOMETRY_KEYS.items():
        key = next((k for k in keys if k in accepted), None)
        if key is None:
            raise UserError(f'backbone {config.nnet.name!r} takes no {" or ".join(keys)}: it has no patch geometry '
                            f'to set for latent={space}')
        config.nnet[key] = values[what]
    return config


def build(config, settings: dict, device):
    """(framework, objective, net, optimizer, nnet, note) for a variant: the diffusion objective, with REPA's term for
    the 'repa' variant; net is the module trained, nnet the backbone, compiled in place block by block for
    compile='regional', whole for compile='full'."""
    import torch

    from libs.config import d
    from libs.diffusion import build_framework
    from libs.nets import build_nnet
    from libs.nets.compile import compile_for_training
    from libs.training.objectives import build_objective
    from libs.training.optim import build_optimizer

    torch.manual_seed(config.seed)
    nnet = build_nnet(backbone_config(config, attention_backend=settings['attention'],
                                      use_checkpoint=settings['checkpointing'])).to(device)
    framework = build_framework(config)
    objective, note = build_objective(d(name='diffusion'), framework), ''
    if settings['repa']:
        objective, note = repa_objective(objective, config, nnet, device, settings['precision'])
    module = objective.training_module(nnet)
    optimizer = build_optimizer(config.optimizer, module.parameters(), fused=settings['fused_optimizer'], device=device)
    if settings['compile']:
        compile_for_training(nnet, module, settings['compile'])
    return framework, objective, module, optimizer, nnet, note


def repa_objective(objective, config, nnet, device, precision: str):
    """(REPA around ``objective``, note): the config's encoder, or the same architecture with random weights when its
    weights are not here (the digits' encoder is then not trained: timing needs no training)."""
    from libs.latent.vision_encoders import encoder_available, load_encoder, random_encoder
    from libs.training.repa import Repa
    cfg = config.repa
    if encoder_available(cfg.encoder, cfg.encoder_path):
        encoder, note = load_encoder(cfg.encoder, cfg.encoder_path, device), ''
    else:
        encoder, note = random_encoder(cfg.encoder, device), f'{cfg.encoder} encoder with random weights'
    channels = 3 if config.autoencoder.pretrained_path else nnet.input_shape[0]
    return Repa(objective, cfg, encoder, channels, lambda: autocast(device, precision)), note


def _sync(device) -> None:
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_calls(fn, steps: int, warmup: int, device) -> tuple:
    """(warm-up times, timed times) in ms of ``warmup + steps`` calls of ``fn``."""
    times = []
    for _ in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times[:warmup], times[warmup:]


def autocast(device, precision: str):
    import torch
    dtype = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=precision != 'fp32')


def reset_peak_memory(device) -> None:
    import torch
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device) -> float:
    """CUDA: peak allocated by tensors since the last reset; CPU: peak resident set size of this process."""
    import torch
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def time_training(framework, objective, net, optimizer, nnet, settings: dict, batch: int, steps: int,
                  warmup: int, device, latent: bool = False) -> dict:
    """One optimizer step of ``objective``. REPA's encoder sees the data in pixel space; for latents, random RGB
    images at its input size."""
    import torch

    x0, cond = synthetic_batch(nnet, batch, device, framework.data_shape(nnet))
    images = x0
    if objective.needs_images and latent:
        height, width = objective.encoder.input_size(nnet.token_grid)
        images = torch.rand(batch, 3, height, width, device=device) * 2 - 1
    scaler = torch.amp.GradScaler(device.type, enabled=settings['precision'] == 'fp16')

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, settings['precision']):
            loss = objective(net, x0, cond, None, images)[0]
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    reset_peak_memory(device)
    warm, timed = time_calls(step, steps, warmup, device)
    step_ms = statistics.median(timed)
    return dict(train_step_ms=step_ms, train_step_ms_all=timed, train_warmup_ms=warm,
                train_img_per_s=batch / step_ms * 1e3, peak_memory_mib=peak_memory_mib(device))


def time_sampling(framework, denoiser, nnet, settings: dict, batch: int, steps: int, warmup: int,
                  device) -> dict:
    """One sampler step (``framework.sampler_step``) on ``batch`` inputs, per network evaluation."""
    import torch
    x, cond = synthetic_batch(nnet, batch, device, framework.data_shape(nnet))
    call, evaluations = framework.sampler_step(denoiser, x, cond)

    @torch.no_grad()
    def forward():
        with autocast(device, settings['precision']):
            call()

    warm, timed = time_calls(forward, steps, warmup, device)
    forward_ms = statistics.median(timed) / evaluations
    per_nfe = batch / forward_ms * 1e3
    return dict(sample_forward_ms=forward_ms, sample_forward_ms_all=timed, sample_warmup_ms=warm,
                sample_img_per_s_per_nfe=per_nfe, sample_img_per_s_50nfe_derived=per_nfe / 50)


def decoder_under_test(config, settings: dict, resolution: int, width_divisor: int):
    """(architecture name, diffusers class name, config, latent shape) of a decode variant: ``decode=<name>`` at
    ``resolution``, or plain ``decode``: the config's own autoencoder (its folder's config.json when it is there,
    else the published architecture with the network's input channels) on the network's input shape. Widths are
    divided by ``width_divisor`` (norm groups and attention heads with them, so that a CPU can run it)."""
    import torch

    from libs.latent.autoencoder import ARCHITECTURES, config_format, folder_config
    from libs.nets import build_nnet
    if settings['decode'] is True:
        with torch.device('meta'):
            shape = tuple(build_nnet(config.nnet).input_shape)
        path = config.autoencoder.pretrained_path
        if path and os.path.isfile(os.path.join(path, 'config.json')):
            name, (class_name, ae_config) = os.path.basename(os.path.normpath(path)), folder_config(path)
        else:
            name = next((n for n, (c, a) in ARCHITECTURES.items() if config_format(c, a).channels == shape[0]), None)
            if name is None:
                raise UserError(f'no known autoencoder gives {shape[0]}-channel latents; known: '
                                f"{', '.join(ARCHITECTURES)}")
            class_name, ae_config = ARCHITECTURES[name]
    else:
        name = settings['decode']
        if name not in ARCHITECTURES:
            raise UserError(f"unknown autoencoder architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
        class_name, ae_config = ARCHITECTURES[name]
        fmt = config_format(class_name, ae_config)
        shape = (fmt.channels, resolution // fmt.factor, resolution // fmt.factor)
    return name, class_name, scaled_widths(class_name, ae_config, width_divisor), shape


def scaled_widths(class_name: str, ae_config: dict, divisor: int) -> dict:
    """An autoencoder config with its channel widths divided by ``divisor`` (1: unchanged)."""
    if divisor == 1:
        return dict(ae_config)
    if class_name == 'AutoencoderKL':
        return dict(ae_config, block_out_channels=tuple(w // divisor for w in ae_config['block_out_channels']),
                    norm_num_groups=max(1, ae_config.get('norm_num_groups', 32) // divisor))
    return dict(ae_config, **{key: tuple(w // divisor for w in ae_config[key])
                              for key in ('encoder_block_out_channels', 'decoder_block_out_channels')})


def time_decoding(config, settings: dict, batch: int, steps: int, warmup: int, device, resolution: int = 512,
                  width_divisor: int = 1) -> dict:
    """Images/s of an autoencoder's decoder (random weights) on ``batch`` latents (``decoder_under_test``)."""
    import torch

    import diffusers
    name, class_name, ae_config, shape = decoder_under_test(config, settings, resolution, width_divisor)
    torch.manual_seed(config.seed)
    vae = getattr(diffusers, class_name)(**ae_config).to(device).eval().requires_grad_(False)
    z = torch.randn(batch, *shape, device=device)

    @torch.no_grad()
    def decode():
        with autocast(device, settings['precision']):
            return vae.decode(z).sample

    reset_peak_memory(device)
    warm, timed = time_calls(decode, steps, warmup, device)
    decode_ms = statistics.median(timed)
    image = tuple(decode().shape[1:])
    parameters = sum(p.numel() for p in vae.decoder.parameters())
    note = (f'{name}{f" (widths / {width_divisor})" if width_divisor > 1 else ""}: {batch} latents '
            f'{"x".join(map(str, shape))} -> {image[-1]} px, decoder {parameters / 1e6:.1f}M parameters')
    return dict(decode_ms=decode_ms, decode_ms_all=timed, decode_warmup_ms=warm, note=note, autoencoder=name,
                latent_shape=list(shape), decoder_parameters=parameters,
                decode_img_per_s=batch / decode_ms * 1e3, peak_memory_mib=peak_memory_mib(device))


def run_variant(config, name: str, batch: int, sample_batch: int, steps: int, warmup: int, resolution: int = 512,
                ae_width_divisor: int = 1) -> dict:
    """Measure one variant in this process (a fresh one: see measure_in_subprocess)."""
    import torch

    from libs.cli import enable_tf32
    from libs.nets import build_nnet
    device = pick_device()
    enable_tf32(device)
    startup_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    settings = variant_settings(name, device.type, config)
    result = dict(status='ok', note='', settings=settings, startup_rss_mib=startup_rss,
                  peak_memory_kind='cuda_max_allocated' if device.type == 'cuda' else 'process_peak_rss')
    if settings.get('decode'):
        result.update(time_decoding(config, settings, sample_batch, steps, warmup, device, resolution,
                                    ae_width_divisor))
        return result
    if settings.get('latent'):
        config = latent_space_config(config, settings['latent'], resolution)
        with torch.device('meta'):
            nnet = build_nnet(config.nnet)
        result.update(forward_flops=count_flops(config), tokens=image_tokens(nnet),
                      note=f"{'x'.join(map(str, nnet.input_shape))} latents of {resolution} px images")
    framework, objective, net, optimizer, nnet, note = build(config, settings, device)
    result['note'] = result['note'] or note
    result.update(time_training(framework, objective, net, optimizer, nnet, settings, batch, steps, warmup, device,
                                latent=bool(config.autoencoder.pretrained_path)))
    del optimizer
    result.update(time_sampling(framework, framework.denoiser(objective.backbone(net)), nnet, settings, sample_batch,
                                steps, warmup, device))
    return result


def measure_here(config, name: str, batch: int, sample_batch: int, steps: int, warmup: int, **sizes) -> dict:
    """run_variant in this process (--in_process); an exception is the variant's failure, as in a subprocess."""
    import gc
    try:
        result = run_variant(config, name, batch, sample_batch, steps, warmup, **sizes)
    except Exception as exc:  # the other variants still run, as when each has its own process
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        result = dict(status='failed', note=f"{type(exc).__name__}: {lines[-1] if lines else ''}".rstrip(': '))
    gc.collect()
    return result


def measure_in_subprocess(name: str) -> dict:
    """Run this script again with --_single_variant=name (same flags and overrides) and read its result line."""
    cmd = [sys.executable, os.path.abspath(__file__)] + sys.argv[1:] + [f'--_single_variant={name}']
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    return dict(status='failed', note=f"exit status {proc.returncode}: {lines[-1] if lines else 'no output'}")


# -------------------------------------------------------------------------------------------- against a release

def clone_commit(clone: str) -> str:
    proc = subprocess.run(['git', '-C', clone, 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ''


def against(config, clone: str, batch: int, steps: int, warmup: int, rounds: int) -> dict:
    """Time the release's network, ours eager and ours on the default path, one set of weights, in rotating
    rounds (see the module docstring); every number as a dict."""
    import copy

    import torch

    from libs.cli import enable_tf32
    from libs.diffusion import build_framework
    from libs.nets import build_nnet
    from libs.nets.compile import compile_regions
    from libs.nets.releases import RELEASES, release_network, share_weights
    from libs.training.loop import default_path
    from libs.training.optim import build_optimizer, update_ema

    device = pick_device()
    enable_tf32(device)
    precision = baseline_settings(device.type)['precision']
    path = default_path(config, device)
    torch.manual_seed(config.seed)
    nnet_cfg = {key: value for key, value in config.nnet.items() if key != 'attention_backend'}
    ours = build_nnet(nnet_cfg).to(device)
    fast = build_nnet(nnet_cfg).to(device)
    share_weights(ours, fast, 'our network')
    if path['compile']:
        compile_regions(fast, whole=path['compile'] == 'full')
    theirs = release_network(config.nnet, clone, ours)
    framework = build_framework(config)
    x0, cond = synthetic_batch(ours, batch, device, framework.data_shape(ours))
    ema = copy.deepcopy(ours).requires_grad_(False)
    eager_optimizer = build_optimizer(config.optimizer, ours.parameters())
    fast_optimizer = build_optimizer(config.optimizer, ours.parameters(), fused=path['fused_optimizer'], device=device)
    networks = {  # name: (network, optimizer, multi-tensor EMA)
        'release (eager)': (theirs, eager_optimizer, False),
        'ours (eager)': (ours, eager_optimizer, False),
        'ours (default path)': (fast, fast_optimizer, path['foreach_ema']),
    }
    draws = {'step': 0}  # each network's block of a round starts from the same seed

    def step_of(net, optimizer, foreach):
        def step():
            optimizer.zero_grad(set_to_none=True)
            torch.manual_seed(config.seed + draws['step'])  # the same times and noise for every network
            with autocast(device, precision):
                loss = framework.loss(net, x0, cond).mean()
            loss.backward()
            optimizer.step()
            update_ema(ema, net, config.train.ema_rate, foreach=foreach)
            draws['step'] += 1
        return step

    first_loss = {}
    with torch.no_grad():
        for name, (net, _, _) in networks.items():
            torch.manual_seed(config.seed)
            with autocast(device, precision):
                first_loss[name] = framework.loss(net, x0, cond).mean().item()
    results = {name: dict(round_ms=[], peak_step_gib=0.0, first_loss=first_loss[name]) for name in networks}
    names = list(networks)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            net, optimizer, foreach = networks[name]
            resident = torch.cuda.memory_allocated(device) if device.type == 'cuda' else 0
            reset_peak_memory(device)
            draws['step'] = 1000 * r
            warm, timed = time_calls(step_of(net, optimizer, foreach), steps, warmup if r == 0 else 0, device)
            if r == 0:
                results[name]['warmup_ms'] = warm
            results[name]['round_ms'].append(statistics.mean(timed))
            if device.type == 'cuda':
                step_peak = (torch.cuda.max_memory_allocated(device) - resident) / 2 ** 30
                results[name]['peak_step_gib'] = max(results[name]['peak_step_gib'], step_peak)
    flops = 3 * count_flops(config) * batch
    state_gib = sum(p.numel() * p.element_size() for p in ours.parameters()) * 4 / 2 ** 30  # weights, Adam, EMA
    for name, r in results.items():
        r['step_ms'] = statistics.median(r['round_ms'])
        r['img_per_s'] = batch / r['step_ms'] * 1e3
        r['tflops'] = flops / (r['step_ms'] * 1e-3) / 1e12
        r['peak_gib'] = state_gib + r['peak_step_gib'] if device.type == 'cuda' else None
    release = results['release (eager)']['step_ms']
    return dict(
        device=describe_device(device), torch=torch.__version__, config=FLAGS['config'].config_filename,
        nnet=config.nnet.to_dict(), against=os.path.abspath(clone), release_file=RELEASES[config.nnet.name].file,
        release_commit=clone_commit(clone), batch_size=batch, steps=steps, warmup=warmup, rounds=rounds,
        precision=precision, default_path=path, checkpointing=bool(config.nnet.get('use_checkpoint', False)),
        networks=results,
        ratios={'ours_eager/release_eager': results['ours (eager)']['step_ms'] / release,
                'ours_default/release_eager': results['ours (default path)']['step_ms'] / release})


def live_bytes():
    """A dispatch mode that follows the storages created under it: ``live``, the bytes of those still alive, and
    ``peak``, their maximum."""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class LiveBytes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live = self.peak = 0
            self.seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in torch.utils._pytree.tree_leaves(out):
                if isinstance(tensor, torch.Tensor) and tensor.untyped_storage()._cdata not in self.seen:
                    storage = tensor.untyped_storage()
                    key, size = storage._cdata, storage.nbytes()
                    self.seen.add(key)
                    self.live += size
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, size)
            return out

        def _free(self, key, size):
            self.live -= size
            self.seen.discard(key)
    return LiveBytes()


def meta_memory(config, clone: str, batch: int) -> dict:
    """The bytes a training step keeps alive beyond the weights, counted on the meta device in fp32: after the
    forward and the loss (what the backward needs), and at the backward's peak (with the gradients); ours, and the
    release's network on the same tensors when ``clone`` is given."""
    import torch

    from libs.diffusion import build_framework
    from libs.nets import build_nnet
    from libs.nets.releases import release_network

    torch.manual_seed(config.seed)
    with torch.device('meta'):
        ours = build_nnet(backbone_config(config))
    networks = {'ours': ours}
    if clone:
        networks['release'] = release_network(config.nnet, clone, ours)
    framework = build_framework(config)
    x0, cond = synthetic_batch(ours, batch, 'meta', framework.data_shape(ours))
    results = {}
    for name, net in networks.items():
        counter = live_bytes()
        with counter:
            loss = framework.loss(net, x0, cond).mean()
            after_forward = counter.live
            loss.backward()
        results[name] = dict(after_forward_gib=after_forward / 2 ** 30, backward_peak_gib=counter.peak / 2 ** 30)
        net.zero_grad(set_to_none=True)
        del loss
    return dict(config=FLAGS['config'].config_filename, nnet=config.nnet.to_dict(), batch_size=batch,
                against=os.path.abspath(clone) if clone else None, torch=torch.__version__, networks=results)


def against_markdown(report: dict) -> str:
    device, ratios = report['device'], report['ratios']
    on = ', '.join(k for k, v in report['default_path'].items() if v and k != 'sample_compile') or 'eager here'
    memory = 'weights, Adam and EMA of one network + its step\'s peak above them (torch.cuda.max_memory_allocated)'
    lines = [
        f"Device: {device['name']} | torch {report['torch']} | config {report['config']} | batch "
        f"{report['batch_size']} | {report['precision']} | checkpointing {'on' if report['checkpointing'] else 'off'}",
        f"Against: {report['against']} ({report['release_file']}"
        f"{' @ ' + report['release_commit'] if report['release_commit'] else ''}) | one set of weights, the same "
        f"inputs, AdamW and EMA | {report['rounds']} rotating rounds of {report['steps']} steps after "
        f"{report['warmup']} warm-up | default path: {on}",
        '',
        '| network | step ms | img/s | TFLOP/s | peak memory GiB | first step ms | first loss | / release eager |',
        '|---|---:|---:|---:|---:|---:|---:|---:|',
    ]
    release = report['networks']['release (eager)']['step_ms']
    for name, r in report['networks'].items():
        first = (r.get('warmup_ms') or [None])[0]
        lines.append(f"| {name} | {_fmt(r['step_ms'])} | {_fmt(r['img_per_s'])} | {_fmt(r['tflops'])} | "
                     f"{_fmt(r['peak_gib'])} | {_fmt(first)} | {r['first_loss']:.6g} | {r['step_ms'] / release:.3f} |")
    lines += ['', f"ours eager / release eager = {ratios['ours_eager/release_eager']:.3f}; ours default path / "
                  f"release eager = {ratios['ours_default/release_eager']:.3f}"
                  + (f' | peak memory: {memory}' if device['type'] == 'cuda' else '')]
    return '\n'.join(lines)


# -------------------------------------------------------------------------------------------------------- report

def add_throughput(result: dict, forward_flops: int, batch: int, sample_batch: int) -> None:
    """TFLOP/s from the counted FLOPs: a training step is 3 forward passes."""
    if result.get('status') == 'ok' and 'train_step_ms' in result:
        result['train_tflops'] = 3 * forward_flops * batch / (result['train_step_ms'] * 1e-3) / 1e12
        result['sample_tflops'] = forward_flops * sample_batch / (result['sample_forward_ms'] * 1e-3) / 1e12


def compare_latent_spaces(variants: dict) -> None:
    """Each measured latent=... row's training speed-up over the first one (SD-VAE-f8 at patch 2 in the group), and
    its FLOPs, in its note."""
    rows = [r for r in variants.values() if r.get('status') == 'ok' and r['settings'].get('latent')]
    for r in rows:
        r['speedup_vs_first'] = r['train_img_per_s'] / rows[0]['train_img_per_s']
        r['note'] += (f", {r['forward_flops'] / 1e9:.3g} GFLOP/img forward, x{r['speedup_vs_first']:.2f} the "
                      f"training speed of {rows[0]['settings']['latent']}")


def _fmt(value) -> str:
    if value is None:
        return '-'
    return f'{value:,.0f}' if value >= 100 else f'{value:.3g}'


def markdown(report: dict) -> str:
    device = report['device']
    where = device['name']
    if device['type'] == 'cpu':
        where += f" ({device['threads']} thread{'s' if device['threads'] > 1 else ''})"
    base = report['baseline_settings']
    memory = ('torch.cuda.max_memory_allocated' if device['type'] == 'cuda'
              else 'peak RSS of the variant\'s process')
    lines = [
        f"Device: {where} | torch {report['torch']} | config {report['config']} | batch {report['batch_size']} "
        f"(sampling {report['sample_batch']}) | {report['steps']} timed steps after {report['warmup']} warm-up",
        f"Baseline: {base['attention']} attention, {base['precision']}, no checkpointing, no compile, torch's default "
        f"optimizer kernel | {report['parameters'] / 1e6:.2f}M parameters, {report['tokens'] or 'no'} image tokens, "
        f"{report['flops']['forward_per_image'] / 1e9:.3g} GFLOP per image forward | peak memory: {memory}",
        '',
        '| ' + ' | '.join(COLUMNS) + ' |',
        '|' + '|'.join('---' if i in (0, len(COLUMNS) - 1) else '---:' for i in range(len(COLUMNS))) + '|',
    ]
    for name, r in report['variants'].items():
        cells = [r.get(k) for k in ('train_step_ms', 'train_img_per_s', 'peak_memory_mib', 'train_tflops',
                                    'sample_img_per_s_per_nfe', 'sample_img_per_s_50nfe_derived',
                                    'decode_img_per_s')]
        note = r['note'] if r['status'] == 'ok' else f"{r['status']}: {r['note']}".rstrip(': ')
        tokens = r.get('tokens', report['tokens'] if 'train_step_ms' in r else None)
        lines.append('| ' + ' | '.join([name, _fmt(tokens)] + [_fmt(c) for c in cells] + [note]) + ' |')
    return '\n'.join(lines)


def check_sizes(batch: int, sample_batch: int, steps: int, warmup: int) -> None:
    if batch < 1 or sample_batch < 1:
        raise UserError(f'--batch_size and --sample_batch must be positive, got {batch} and {sample_batch}')
    if steps < 1 or warmup < 0:
        raise UserError(f'--steps must be at least 1 and --warmup at least 0, got {steps} and {warmup}')


def write_json(report: dict, path: str) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, 'w') as f:
            json.dump(report, f, indent=2)


def main(_argv):
    import torch

    from libs.config import resolve
    from libs.nets import build_nnet, count_parameters

    config = resolve(FLAGS.config)
    batch, steps, warmup = FLAGS.batch_size, FLAGS.steps, FLAGS.warmup
    sample_batch = FLAGS.sample_batch or batch
    check_sizes(batch, sample_batch, steps, warmup)
    sizes = dict(resolution=FLAGS.resolution, ae_width_divisor=FLAGS.ae_width_divisor)
    if FLAGS.resolution < 1 or FLAGS.ae_width_divisor < 1:
        raise UserError(f'--resolution and --ae_width_divisor must be positive, got {FLAGS.resolution} and '
                        f'{FLAGS.ae_width_divisor}')
    if FLAGS.checkpointing:
        if 'use_checkpoint' not in backbone_switches(config):
            raise UserError(f'{config.nnet.name} has no gradient checkpointing')
        config.nnet.use_checkpoint = True
    if FLAGS.meta_memory:
        report = meta_memory(config, FLAGS.against, batch)
        checkpointing = 'on' if config.nnet.get('use_checkpoint') else 'off'
        print(f"{report['config']}, batch {batch}, checkpointing {checkpointing}, fp32 on the meta device: GiB alive "
              'beyond the weights', flush=True)
        for name, r in report['networks'].items():
            print(f"{name}: {r['after_forward_gib']:.3f} after the forward, {r['backward_peak_gib']:.3f} at the "
                  "backward's peak", flush=True)
        write_json(report, FLAGS.out)
        return
    if FLAGS.against:
        if FLAGS.rounds < 1:
            raise UserError(f'--rounds must be at least 1, got {FLAGS.rounds}')
        report = against(config, FLAGS.against, batch, steps, warmup, FLAGS.rounds)
        print(against_markdown(report), flush=True)
        write_json(report, FLAGS.out)
        return
    if FLAGS._single_variant:
        result = run_variant(config, FLAGS._single_variant, batch, sample_batch, steps, warmup, **sizes)
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return

    device = pick_device()
    names = expand_variants(FLAGS.variants, device.type, latent=bool(config.autoencoder.pretrained_path),
                            repa=bool(config.repa.weight))
    with torch.device('meta'):
        nnet = build_nnet(config.nnet)
        parameters, tokens = count_parameters(nnet), image_tokens(nnet)
    forward_flops = count_flops(config)
    variants = {}
    for name in names:
        settings = variant_settings(name, device.type, config)
        blocked = why_not_runnable(settings, device.type, config)
        if blocked:
            variants[name] = dict(status=blocked[0], note=blocked[1], settings=settings)
            continue
        print(f'measuring {name} ...', file=sys.stderr, flush=True)
        if FLAGS.in_process:
            variants[name] = measure_here(config, name, batch, sample_batch, steps, warmup, **sizes)
        else:
            variants[name] = measure_in_subprocess(name)
        variants[name].setdefault('settings', settings)
        add_throughput(variants[name], variants[name].get('forward_flops', forward_flops), batch, sample_batch)
    compare_latent_spaces(variants)

    report = dict(
        device=describe_device(device), torch=torch.__version__, config=FLAGS['config'].config_filename,
        nnet=config.nnet.to_dict(), batch_size=batch, sample_batch=sample_batch, steps=steps, warmup=warmup,
        parameters=parameters, tokens=tokens, baseline_settings=baseline_settings(device.type),
        flops=dict(forward_per_image=forward_flops, train_step=3 * forward_flops * batch,
                   sample_forward=forward_flops * sample_batch),
        variants=variants)
    print(markdown(report), flush=True)
    write_json(report, FLAGS.out)
    if any(r['status'] == 'failed' for r in variants.values()):
        sys.exit(1)


if __name__ == '__main__':
    app.run(lambda argv: run(main, argv), flags_parser=parse_flags)
