"""The training loop: accelerate (DDP, mixed precision, gradient accumulation), EMA, atomic checkpoints, exact
resume, sample grids, per-checkpoint scores, and clean stops on non-finite losses or gradients, SIGTERM and a lost
process.

Work directory layout:
    config.json       the resolved config of the run
    output.log        the console log
    metrics.jsonl     one JSON line per logged step (step, loss, lr, images/s, skipped steps, ...)
    logs/             TensorBoard (or wandb) files
    samples/<step>.png  sample grids from the EMA weights
    ckpts/<step>.ckpt/  checkpoints (see libs/training/checkpoint.py), each with its eval_*.json scores
"""
import copy
import json
import logging
import os
import signal
import time

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from libs.cli import enable_tf32
from libs.config import compile_mode, device_switch, differences, to_json
from libs.data import build_dataset, data_spec, loader_workers
from libs.data.augment import flip_mask, flipped
from libs.diffusion import build_framework
from libs.diffusion.conditioning import build_conditioning
from libs.errors import UserError
from libs.evaluation.harness import draw_samples, generate, sample_settings, sample_tags, write_result
from libs.evaluation.scorers import build_scorer, metric_settings
from libs.fileio import atomic_open
from libs.images import save_grid
from libs.latent.spaces import build_space, latent_format
from libs.nets import build_nnet, check_state_dict, count_parameters, strip_wrapper_prefixes
from libs.nets.compile import compile_for_training, compile_regions
from libs.rng import SampleRandom, loader_seed, seeded, training_seed
from libs.training.checkpoint import (Agreement, CheckpointManager, DamagedCheckpoint, attempt, detect_storage, now,
                                      objective_files, one_line, read_checkpoint, rng_state, set_rng_state, verify)
from libs.training.data_order import ResumableBatchSampler
from libs.training.objectives import build_objective
from libs.training.optim import build_lr_scheduler, build_optimizer, load_optimizer_state, update_ema
from libs.training.repa import with_repa

logger = logging.getLogger(__name__)

class ScoreGuard:
    """A scorer whose ``result`` returns {} and keeps the exception instead of raising it: generate() computes the
    score on the main process and then broadcasts it, so an exception there would leave the other processes waiting
    in that broadcast while the main process trained on."""

    def __init__(self, scorer):
        self.scorer = scorer
        self.error = None

    def __getattr__(self, name):
        return getattr(self.scorer, name)

    def result(self, gathered, labels) -> dict:
        try:
            return self.scorer.result(gathered, labels)
        except Exception as exc:
            self.error = exc
            return {}


class StopRequest:
    """SIGTERM (what clusters send before preemption) asks the run to save a checkpoint and exit.

    ``received`` is this process's flag, set by the handler; ``agreed`` is set from the all-reduce in each step,
    so every process stops after the same step even if the signal reached them at different times.
    """

    def __init__(self):
        self.received = False
        self.agreed = False
        self._previous = None

    def install(self):
        def handler(signum, frame):
            self.received = True
            logger.warning('received signal %d: saving a checkpoint after this step', signum)
        try:
            self._previous = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not in the main thread (e.g. a notebook helper thread): no handler
            self._previous = None

    def uninstall(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class StepChecks:
    """What every process decides together after each step's backward: whether any process saw a non-finite loss
    or gradient norm (the run then stops before the update), a SIGTERM, or its time budget spent.

    The device's two flags and the host's two are stacked, all-reduced and read in one copy to the host: the step's
    only synchronisation (each flag was one before). The host flags reach the device through a pinned buffer with a
    non-blocking copy, so writing them does not wait for the step's kernels either; the buffer is rewritten only
    after the previous step's read, which waited for its copy."""

    def __init__(self, device):
        self.device = device
        self.host = torch.zeros(2, pin_memory=device.type == 'cuda')

    def agree(self, accelerator, nonfinite_loss: torch.Tensor, grad_norm, received: bool, late: bool) -> list:
        """[loss not finite, gradients not finite, SIGTERM received, time spent] as bools, each true if it is on
        any process. ``nonfinite_loss``: a 0-d device flag; ``grad_norm``: the gradients' total norm, or None
        (fp16 without clipping: the grad scaler checks)."""
        self.host[0], self.host[1] = float(received), float(late)
        gradients = torch.zeros((), device=self.device) if grad_norm is None else \
            (~torch.isfinite(torch.as_tensor(grad_norm))).float().to(self.device)
        flags = torch.cat([torch.stack([nonfinite_loss, gradients]), self.host.to(self.device, non_blocking=True)])
        return [value > 0 for value in accelerator.reduce(flags, 'sum').tolist()]


def default_path(config, device, grad_scaler: bool = False) -> dict:
    """What the config's switches turn on on ``device`` (each 'auto' one on CUDA only): ``compile`` (the trained
    network: 'regional', 'full' or ''), ``sample_compile`` (the sampling network's, the same), ``fused_optimizer``
    and ``foreach_ema``. A fused optimizer skips an fp16 overflow on the device, where accelerate would not see the
    skip to count it, so with a ``grad_scaler`` it is off."""
    tc = config.train
    return dict(compile=compile_mode(tc.compile, 'train.compile', device),
                sample_compile=compile_mode(config.sample.compile, 'sample.compile', device),
                fused_optimizer=device_switch(tc.fused_optimizer, 'train.fused_optimizer', device) and not grad_scaler,
                foreach_ema=device_switch(tc.foreach_ema, 'train.foreach_ema', device))


def make_accelerator(config, workdir):
    from accelerate import Accelerator
    from accelerate.utils import GradScalerKwargs, ProjectConfiguration
    log_with = None if config.log_with in ('none', '', None) else config.log_with
    if log_with == 'wandb':
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UserError("config.log_with='wandb' needs the wandb package: pip install wandb") from None
    elif log_with not in (None, 'tensorboard'):
        raise UserError(f"unknown config.log_with {config.log_with!r}; known: tensorboard, wandb, none")
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision or None,
        gradient_accumulation_steps=config.train.gradient_accumulation_steps,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=workdir, logging_dir=os.path.join(workdir, 'logs')),
        kwargs_handlers=[GradScalerKwargs(init_scale=float(config.train.grad_scaler_init_scale))],
    )
    # accelerate lets the launcher's value override the constructor's; the batch split, the LR schedule and the
    # per-step checks all follow the config, so the two must not differ
    if accelerator.gradient_accumulation_steps != config.train.gradient_accumulation_steps:
        raise UserError(f'gradient accumulation is set twice: accelerate launch --gradient_accumulation_steps='
                        f'{accelerator.gradient_accumulation_steps} (ACCELERATE_GRADIENT_ACCUMULATION_STEPS) and '
                        f'config.train.gradient_accumulation_steps={config.train.gradient_accumulation_steps}; '
                        f'set it in the config only')
    return accelerator


def flat_hparams(config) -> dict:
    """The config as a flat dict of scalars, for TensorBoard's hparams table."""
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f'{prefix}{k}.' if isinstance(v, dict) else f'{prefix}{k}', v)
        else:
            out[prefix] = value if isinstance(value, (int, float, str, bool)) else str(value)
    walk('', config.to_dict())
    return out


def param_checksum(model: torch.nn.Module) -> torch.Tensor:
    """Two numbers that differ when replicas differ: sum and sum of squares of all parameters (float64)."""
    total = torch.zeros(2, dtype=torch.float64, device=next(model.parameters()).device)
    for p in model.parameters():
        q = p.detach().double()
        total[0] += q.sum()
        total[1] += q.square().sum()
    return total


class Trainer:
    """Holds the run's objects; ``fit()`` trains to ``config.train.n_steps`` and returns the final scores.

    ``resume``: a checkpoint directory to resume from (``--resume``); by default the newest checkpoint of the work
    directory that verifies, if the work directory's config.json has the same data and network as ``config`` (or
    ``resume_anyway``)."""

    def __init__(self, config, workdir: str, resume: str = '', resume_anyway: bool = False):
        self.config = config
        self.workdir = workdir
        self.accelerator = acc = make_accelerator(config, workdir)
        self.device = acc.device
        if config.train.tf32:
            enable_tf32(self.device)

        tc = config.train
        world, accum = acc.num_processes, tc.gradient_accumulation_steps
        if tc.batch_size % (world * accum):
            raise UserError(f'config.train.batch_size={tc.batch_size} is not divisible by the number of processes '
                            f'({world}) x gradient_accumulation_steps ({accum})')
        self.micro_batch = tc.batch_size // (world * accum)

        self.dataset = build_dataset(config.dataset, split='train')
        torch.manual_seed(config.seed)  # identical initial weights on every process
        nnet = build_nnet(config.nnet)
        self.framework = build_framework(config)
        self.framework.check_backbone(nnet)
        fmt = latent_format(config, self.dataset) if getattr(self.dataset, 'stores_features', False) else None
        self.spec = data_spec(config.dataset, self.framework.data_shape(nnet), fmt)
        if tuple(self.dataset.data_shape) != self.spec.data_shape:
            raise UserError(f'the network takes {self.spec.data_shape} (config.nnet), but dataset '
                            f'{config.dataset.name!r} yields {tuple(self.dataset.data_shape)}')
        self.metric_settings = metric_settings(config)  # a bad config.eval.metrics fails now
        self.space = build_space(config, self.spec, self.device)
        self.conditioning = build_conditioning(config, nnet, self.dataset.num_classes)
        if tc.p_uncond > 0 and tc.mode == 'cond' and self.conditioning.null_label is None:
            raise UserError('config.train.p_uncond > 0 needs nnet.num_classes = dataset classes + 1 '
                            '(the extra label means "no class")')
        if tc.p_uncond > 0 and tc.mode == 'uncond':
            raise UserError("config.train.p_uncond > 0 drops a condition, but config.train.mode is 'uncond'")

        self.nnet_ema = copy.deepcopy(nnet).requires_grad_(False).eval()
        self.path = default_path(config, self.device, grad_scaler=acc.scaler is not None)
        self.objective = with_repa(build_objective(config.objective, self.framework), config, self.device,
                                   3 if self.spec.latent else self.spec.data_shape[0], acc.autocast)
        if self.objective.needs_images and self.spec.latent:  # REPA's encoder sees the images the latents came from
            self.dataset = self.dataset.with_source_images(config.dataset.get('source_path', ''))
        # the module accelerate wraps: the backbone, or the objective's module around it (REPA: with its projector)
        module = self.objective.training_module(nnet)
        optimizer = build_optimizer(config.optimizer, module.parameters(), fused=self.path['fused_optimizer'],
                                    device=self.device)
        self.lr_scheduler = build_lr_scheduler(config.lr_scheduler, optimizer, tc.n_steps)
        ckpt_root = os.path.join(workdir, 'ckpts')
        self.agreement = Agreement(tc.checkpoint_timeout_s)
        self.storage = detect_storage(ckpt_root, self.agreement, acc.local_process_index)
        if not self.storage.shared and self.storage.writer:
            logger.warning('%s is local to each node: every node keeps a full copy of each checkpoint, and a resume '
                           'needs each node to find its own copy', ckpt_root)
        self.ckpts = CheckpointManager(ckpt_root, keep=tc.keep_ckpts)
        self.step = 0
        resume_from, contents = self._find_checkpoint(resume)
        if resume_from and not resume:
            self._check_same_run(resume_from, resume_anyway)
        if resume_from:
            self._load_weights(resume_from, contents, nnet, module)

        self.denoiser_ema = self.framework.denoiser(self.nnet_ema)
        # in place, after the EMA's deep copy: parameter names and checkpoint keys stay the release's
        if self.path['compile']:
            compile_for_training(nnet, module, self.path['compile'])
        if self.path['sample_compile']:
            compile_regions(self.nnet_ema, whole=self.path['sample_compile'] == 'full')
        self.nnet, self.optimizer = acc.prepare(module, optimizer)
        self.nnet_ema.to(self.device)
        if resume_from:
            self._load_optimizer_and_rng(resume_from, contents)
        else:
            torch.manual_seed(training_seed(config.seed, acc.process_index))

        sampler = ResumableBatchSampler(len(self.dataset), self.micro_batch, config.seed, acc.process_index, world,
                                        start=self.step * accum, repeats=tc.repeated_aug)
        workers = loader_workers(tc.num_workers)
        # The loader gets its own generator: creating an iterator would otherwise draw from the global RNG, and
        # a resumed run (which creates it at a later step) would no longer repeat an uninterrupted one.
        self.loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=workers,
                                 pin_memory=self.device.type == 'cuda', persistent_workers=workers > 0,
                                 generator=torch.Generator().manual_seed(loader_seed(config.seed,
                                                                                     acc.process_index)))
        self.stop = StopRequest()
        self.checks = StepChecks(self.device)
        self.deadline = None  # time.time() at which train.max_minutes is spent (set when fit() starts)
        self.out_of_time = False  # agreed by all processes, like the stop request
        self.skipped_steps = 0
        self.warned = set()

    def backbone(self) -> torch.nn.Module:
        """The network being trained, without DDP / compile / objective wrappers."""
        return self.objective.backbone(self.accelerator.unwrap_model(self.nnet))

    # ----------------------------------------------------------------------------------------------- resume
    def _find_checkpoint(self, explicit: str):
        """(path, this process's contents) of the checkpoint to resume from, agreed by all processes, or (None, None):
        ``explicit`` (--resume), which must verify, or else the newest checkpoint of the work directory that verifies
        and loads, with one warning that names each newer one skipped and why."""
        agreement, writer = self.agreement, self.storage.writer
        if explicit:
            problem, contents = self._read_agreed(explicit)
            if problem:
                raise UserError(f'--resume={explicit} does not verify: {problem}')
            return explicit, contents
        if writer:
            self.ckpts.recover()
        listed = agreement.exchange(self.ckpts.steps() if writer else [], 'finding checkpoints')
        skipped, found, contents = [], None, None
        for step in sorted(set().union(*listed), reverse=True):
            problem, contents = self._read_agreed(self.ckpts.path(step), step)
            if problem is None:
                found = step
                break
            skipped.append(f'{self.ckpts.path(step)} ({problem})')
        if skipped and self.accelerator.is_main_process:
            logger.warning('skipped %d damaged checkpoint(s), newest first: %s; %s; they are kept, delete them when '
                           'you no longer need them', len(skipped), '; '.join(skipped),
                           f'resuming from {self.ckpts.path(found)}' if found is not None else 'none is left')
        if found is None:
            if skipped:
                raise UserError(f'no checkpoint in {self.ckpts.root} verifies (see the warning above); move them '
                                f'away to start afresh, or --resume=PATH from a copy elsewhere')
            return None, None
        if writer:
            self.ckpts.remove_stale_tmp(found)
        return self.ckpts.path(found), contents

    def _read_agreed(self, ckpt: str, step: int = None):
        """(None, contents) if checkpoint ``ckpt`` verifies for every process (checked by each directory's writer)
        and every process reads its part, else (why not, None): the same answer on every process."""
        agreement, writer = self.agreement, self.storage.writer
        what = f'reading checkpoint {ckpt}'
        problem = None
        if writer:
            problem = verify(ckpt) if step is None else self.ckpts.check(step)
        first = agreement.first_problem(agreement.exchange(problem, what))
        if first is None:
            contents, problem = None, None
            try:
                contents = read_checkpoint(ckpt, self.accelerator.process_index, self.accelerator.num_processes,
                                           self.objective.files)
            except DamagedCheckpoint as exc:
                problem = str(exc)
            first = agreement.first_problem(agreement.exchange(problem, what))
            if first is None:
                return None, contents
        if step is not None:
            self.ckpts.damaged[step] = first
        return first, None

    def _check_same_run(self, ckpt: str, resume_anyway: bool) -> None:
        """Resuming the work directory's own checkpoint: the data, the network and the noise process (schedule and
        prediction) of its config.json must be this config's, else one line that names the differences (a warning
        with ``resume_anyway``)."""
        problem, saved = None, os.path.join(self.workdir, 'config.json')
        if self.accelerator.is_main_process and os.path.isfile(saved):
            with open(saved) as f:
                changes = differences(json.load(f), json.loads(to_json(self.config)),
                                      ('dataset', 'nnet', 'schedule', 'pred'))
            if changes:
                listed = '; '.join(changes[:4]) + (f'; and {len(changes) - 4} more' if len(changes) > 4 else '')
                problem = (f'{self.workdir} holds a run on other data, another network or another noise process '
                           f'({listed})')
        if problem and resume_anyway:
            logger.warning('%s: resuming its checkpoint %s all the same (--resume_anyway)', problem, ckpt)
            problem = None
        elif problem:
            problem += (f': resuming its checkpoint {ckpt} would train it on this; give another --workdir, or '
                        f'--resume_anyway to resume it all the same')
        self.agreement.outcome(problem, f'comparing {saved} with this config')

    def _load_weights(self, ckpt: str, contents: dict, nnet: torch.nn.Module, module: torch.nn.Module) -> None:
        for name, model in (('nnet.pth', nnet), ('nnet_ema.pth', self.nnet_ema)):
            weights = strip_wrapper_prefixes(contents[name])
            check_state_dict(model, weights, os.path.join(ckpt, name))
            model.load_state_dict(weights)
        unused = sorted(set(objective_files(ckpt)) - set(self.objective.files))
        if unused:
            raise UserError(f'checkpoint {ckpt} holds {unused[0]}, which this run\'s objective does not use (it was '
                            f'trained with other config.objective / config.repa settings): resume with those, or '
                            f'train in a fresh work directory')
        for name in self.objective.files:
            if name not in contents:
                raise UserError(f'checkpoint {ckpt} has no {name}, which this run\'s objective needs (it was trained '
                                f'with other config.objective / config.repa settings): resume with those, or train '
                                f'in a fresh work directory')
        self.objective.load_state_files(module, contents, ckpt)
        self.step = contents['state']['step']

    def _load_optimizer_and_rng(self, ckpt: str, contents: dict) -> None:
        acc, state = self.accelerator, contents['state']
        load_optimizer_state(self.optimizer, contents['optimizer.pth'])
        self.lr_scheduler.load_state_dict(contents['lr_scheduler.pth'])
        if acc.scaler is not None and 'grad_scaler.pth' in contents:
            acc.scaler.load_state_dict(contents['grad_scaler.pth'])
        self.skipped_steps = state.get('skipped_steps', 0)
        saved_world = state.get('num_processes', 1)
        if contents['rng'] is not None:
            set_rng_state(contents['rng'])
            logger.info('resumed from %s (step %d)', ckpt, self.step)
        else:
            torch.manual_seed(training_seed(self.config.seed, acc.process_index, self.step))
            logger.warning('resumed from %s (step %d), written by %d processes; this run has %d: weights, EMA and '
                           'optimizer are restored exactly, but the random streams and the split of batches among '
                           'processes differ from an uninterrupted run', ckpt, self.step, saved_world,
                           acc.num_processes)

    # ------------------------------------------------------------------------------------------------- save
    def save_checkpoint(self) -> str:
        """Each process writes its RNG state, the writer(s) the rest, then publish. Each stage ends with an
        agreement, so either every process goes on or every one stops with the same error line; the writers remove
        the temporary directory only once every process is done with it."""
        acc, ckpts, storage, agreement = self.accelerator, self.ckpts, self.storage, self.agreement
        step, previous = self.step, ckpts.latest()
        what = f'checkpoint {step} not saved, ' + (f'the previous checkpoint {previous} is kept' if previous
                                                   else 'no earlier checkpoint exists')
        tmp = ckpts.tmp_path(step)
        replies = agreement.exchange((attempt(lambda: ckpts.begin(step, storage.writer)),
                                      param_checksum(self.backbone()).tolist()), what)
        first = agreement.first_problem([problem for problem, _ in replies])
        if first:
            raise UserError(first)
        checksums = [checksum for _, checksum in replies]
        replies = agreement.exchange((attempt(lambda: self._write_files(tmp, checksums)), ckpts.records), what)
        first = agreement.first_problem([problem for problem, _ in replies])
        if first:
            if storage.writer:
                ckpts.abort(tmp)
            raise UserError(first)
        problem = None
        if storage.writer:
            others = {name: record for rank, (_, records) in enumerate(replies)
                      if rank in storage.ranks and rank != acc.process_index for name, record in records.items()}
            problem = attempt(lambda: ckpts.commit(tmp, step, others))
            if problem is None:  # published: a peer lost now leaves it on disk, complete and verified
                what = f'checkpoint {step} saved by this process but not confirmed by every process'
        agreement.outcome(problem, what)
        path = ckpts.path(step)
        if acc.is_main_process:
            logger.info('saved checkpoint %s', path)
        return path

    def _write_files(self, tmp: str, checksums: list) -> None:
        acc, ckpts = self.accelerator, self.ckpts
        ckpts.write(tmp, f'rng_state_{acc.process_index}.pth', rng_state())
        if not self.storage.writer:
            return
        ckpts.write(tmp, 'nnet.pth', {k: v.cpu() for k, v in self.backbone().state_dict().items()})
        ckpts.write(tmp, 'nnet_ema.pth', {k: v.cpu() for k, v in self.nnet_ema.state_dict().items()})
        for name, state in self.objective.state_files(self.accelerator.unwrap_model(self.nnet)).items():
            ckpts.write(tmp, name, state)
        ckpts.write(tmp, 'optimizer.pth', self.optimizer.state_dict())
        ckpts.write(tmp, 'lr_scheduler.pth', self.lr_scheduler.state_dict())
        if acc.scaler is not None:
            ckpts.write(tmp, 'grad_scaler.pth', acc.scaler.state_dict())
        replicas_equal = all(checksum == checksums[0] for checksum in checksums)
        ckpts.write_json(tmp, 'train_state.json', {
            'step': self.step, 'num_processes': acc.num_processes, 'skipped_steps': self.skipped_steps,
            'replica_checksums': checksums, 'replicas_equal': replicas_equal, 'time': now(),
        })
        if not replicas_equal and acc.is_main_process:
            logger.error('model replicas differ across processes at step %d: %s', self.step, checksums)

    # ------------------------------------------------------------------------------------------------- eval
    def warn_once(self, what: str, exc: UserError) -> None:
        if what not in self.warned:
            self.warned.add(what)
            logger.warning('no %s during training: %s', what, exc)

    def evaluate(self, sample_cfg, n_samples: int, ckpt: str, png_dir: str = '') -> dict:
        """Score the EMA weights of checkpoint ``ckpt`` and write the JSON beside them; skipped with one log line
        when FID files, the autoencoder (latent models) or validation prompts (text-to-image) are missing. A score
        never ends training: any other failure is logged on one line and the result is empty."""
        if n_samples <= 0:  # scoring switched off
            return {}
        config, acc = self.config, self.accelerator
        metric, ref_stats = config.eval.metric, config.eval.ref_stats or self.spec.fid_stats
        try:
            # seeded: building the scorers (Inception, the digit classifier) and the autoencoder draws from the
            # global RNG, which must not move the training run's random streams (a resumed run would not repeat it)
            with seeded(config.seed, self.device):
                scorer = ScoreGuard(build_scorer(metric, self.device, ref_stats, self.metric_settings, n_samples))
                result = generate(acc, self.framework, self.denoiser_ema, sample_cfg, self.spec.data_shape,
                                  n_samples, min(config.sample.mini_batch_size, n_samples), self.conditioning,
                                  self.space, scorer, png_dir=png_dir, seed=config.seed, desc=metric)
        except UserError as exc:
            self.warn_once(f'{metric} scores', exc)
            return {}
        except Exception as exc:
            self.score_failed(metric, n_samples, exc)
            return {}
        if scorer.error is not None:
            self.score_failed(metric, n_samples, scorer.error)
        if not result:  # the main process's score failed; the others received its empty result
            return {}
        scores = scorer.record()
        write_result(acc, os.path.join(ckpt, 'nnet_ema.pth'), True, 'sample', config.dataset.name, n_samples,
                     sample_tags(sample_cfg, metric, scores), sample_settings(sample_cfg, n_samples, metric, scores),
                     result, step=self.step)
        if acc.is_main_process:
            logger.info('%s (step %d)', ', '.join(f'{k}={v:.4f}' for k, v in result.items()), self.step)
        acc.log({f'eval/{k}': v for k, v in result.items()}, step=self.step)
        return result

    def score_failed(self, metric: str, n_samples: int, exc: Exception) -> None:
        logger.error('%s score of step %d (%d samples) failed, training goes on: %s', metric, self.step, n_samples,
                     one_line(exc))

    def training_eval_cfg(self):
        cfg = self.config.sample.copy_and_resolve_references()
        cfg.algorithm = self.config.eval.train_algorithm
        cfg.sample_steps = self.config.eval.train_sample_steps
        return cfg

    def save_grid(self) -> None:
        if not self.accelerator.is_main_process:
            return
        n = self.config.train.grid_size
        sample_cfg = self.training_eval_cfg()
        with sample_cfg.unlocked():
            sample_cfg.progress = True  # the grid is one batch: a bar over its sampler steps
        try:
            with seeded(self.config.seed, self.device):
                random = SampleRandom(self.config.seed, range(n), self.device)
                sampler = self.framework.build_sampler(sample_cfg)
                samples, _ = draw_samples(self.framework, self.denoiser_ema, sampler, self.spec.data_shape,
                                          self.conditioning, random, sample_cfg.scale,
                                          cond=self.conditioning.grid(random))
                images = self.space.decode(samples)
        except UserError as exc:
            self.warn_once('sample grids', exc)
            return
        path = os.path.join(self.workdir, 'samples', f'{self.step}.png')
        nrow = max(1, int(round(n ** 0.5)))
        save_grid(images, path, nrow=nrow, scale=max(1, 64 // self.spec.resolution))

    # ------------------------------------------------------------------------------------------------ train
    def batches(self):
        while True:
            for batch in self.loader:
                yield batch

    def prepare_batch(self, batch):
        """(data, targets[, source images]) from the loader -> (the model's input on the device: images flipped at
        random if configured, or latents from the stored autoencoder features; the network's condition dict, with the
        condition dropped at rate p_uncond; the targets on the device: labels, or text contexts; the clean images in
        [-1, 1] when the objective needs them (REPA): the data themselves in pixel space, else the source images the
        feature store's loader adds, flipped with the data; otherwise None)."""
        x, y, *source = batch
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        source = source[0].to(self.device, non_blocking=True) if source else None
        if self.config.dataset.get('random_flip', False):
            flip = flip_mask(x)
            x = flipped(x, flip)
            source = None if source is None else flipped(source, flip)
        images = None
        if self.objective.needs_images:
            images = x if source is None else source
        x = self.space.training_input(x)
        return x, self.conditioning.training_condition(y, self.config.train.p_uncond), y, images

    def train_step(self, data) -> dict:
        acc, tc = self.accelerator, self.config.train
        self.nnet.train()
        losses, extras = [], []
        nonfinite = torch.zeros((), device=self.device)
        grad_norm = None
        for _ in range(tc.gradient_accumulation_steps):
            x, cond, labels, images = self.prepare_batch(next(data))
            with acc.accumulate(self.nnet):
                loss, extra = self.objective(self.nnet, x, cond, labels, images)
                nonfinite = torch.maximum(nonfinite, (~torch.isfinite(loss)).float())
                acc.backward(loss)
                if acc.sync_gradients:
                    grad_norm = self.clip_gradients()
                    loss_bad, gradients_bad, self.stop.agreed, self.out_of_time = self.checks.agree(
                        acc, nonfinite, grad_norm, self.stop.received,
                        self.deadline is not None and time.time() >= self.deadline)
                    if loss_bad:
                        raise UserError(self.nan_message('loss is not finite', 'lower the learning rate, enable '
                                                         'grad_clip, or use bf16 instead of fp16'))
                    if gradients_bad:
                        raise UserError(self.nan_message('gradients are not finite (the loss is)',
                                                         'lower the learning rate or enable grad_clip'))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            extras.append(extra)
        if acc.optimizer_step_was_skipped:
            self.skipped_steps += 1  # fp16 overflow: the grad scaler skipped the update and lowered its scale
        else:
            self.lr_scheduler.step()
            update_ema(self.nnet_ema, self.backbone(), tc.ema_rate, foreach=self.path['foreach_ema'])
        self.step += 1
        out = {'loss': torch.stack(losses).mean()}
        for key in extras[0]:
            out[key] = torch.stack([e[key] for e in extras]).mean()
        if grad_norm is not None:
            out['grad_norm'] = grad_norm if torch.is_tensor(grad_norm) else torch.tensor(grad_norm)
        return out

    def clip_gradients(self):
        """The gradients' total norm, after clipping them to train.grad_clip if it is set. Without clipping the
        norm is only computed, one pass over the gradients; under fp16 it is then None: the grad scaler finds
        overflows itself and skips those steps."""
        tc, acc = self.config.train, self.accelerator
        if tc.grad_clip > 0:
            return acc.clip_grad_norm_(self.nnet.parameters(), tc.grad_clip)
        if acc.scaler is not None:
            return None
        return torch.nn.utils.get_total_norm([p.grad for p in self.nnet.parameters() if p.grad is not None])

    def step_failed(self, exc: RuntimeError) -> UserError:
        """The error line for a step that raised in a run of several processes. Its collectives (the gradient
        all-reduce, the flags above) fail when another process has exited; the run then stops without a save, which
        would need every process, even when a SIGTERM asked for one."""
        logger.error('step %d failed on process %d', self.step + 1, self.accelerator.process_index, exc_info=True)
        last = self.ckpts.latest()
        kept = f'the last complete checkpoint {last} is kept' if last else 'no checkpoint was saved before it'
        return UserError(f'step {self.step + 1} failed: {one_line(exc)} (with several processes this usually means '
                         f'that another process exited or hangs: see its log); no checkpoint is saved without every '
                         f'process, {kept}')

    def nan_message(self, what: str, advice: str) -> str:
        last = self.ckpts.latest()
        kept = f'the last good checkpoint {last} is kept' if last else 'no checkpoint was saved before it'
        return (f'{what} at step {self.step + 1}; training stopped before updating the weights, {kept} ({advice})')

    def log(self, metrics: dict, images_per_sec: float) -> dict:
        """Write one line of metrics.jsonl (and the trackers): the step's metrics averaged over the processes, read
        from the device at once. Returns the line's values."""
        acc = self.accelerator
        means = acc.reduce(torch.stack([v.to(self.device).float() for v in metrics.values()]), 'mean').tolist()
        values = dict(zip(metrics, means))
        values.update(lr=self.optimizer.param_groups[0]['lr'], images_per_sec=images_per_sec,
                      skipped_steps=self.skipped_steps)
        if acc.is_main_process:
            with open(os.path.join(self.workdir, 'metrics.jsonl'), 'a') as f:
                f.write(json.dumps({'step': self.step, **values}) + '\n')
            logger.info('step %d: %s', self.step, ', '.join(
                f'{k}={v:.5g}' if isinstance(v, float) else f'{k}={v}' for k, v in values.items()))
        acc.log({f'train/{k}': v for k, v in values.items()}, step=self.step)
        return values

    def train_until_done(self) -> None:
        tc = self.config.train
        data = self.batches()
        # closed also when a step raises, so that the error line starts a line of its own
        with tqdm(total=tc.n_steps, initial=self.step, desc='train', disable=not self.accelerator.is_main_process,
                  dynamic_ncols=True) as bar:
            tick, tick_step = time.time(), self.step
            while self.step < tc.n_steps and not self.stop.agreed and not self.out_of_time:
                try:
                    metrics = self.train_step(data)
                except RuntimeError as exc:
                    if self.accelerator.num_processes == 1 or isinstance(exc, torch.OutOfMemoryError):
                        raise
                    raise self.step_failed(exc) from None
                bar.update(1)
                if self.step % tc.log_interval == 0:
                    ips = (self.step - tick_step) * tc.batch_size / max(time.time() - tick, 1e-9)
                    bar.set_postfix(loss=f"{self.log(metrics, ips)['loss']:.4f}")
                    tick, tick_step = time.time(), self.step
                if self.step % tc.eval_interval == 0:
                    self.save_grid()
                if (self.step % tc.save_interval == 0 or self.step == tc.n_steps or self.stop.agreed
                        or self.out_of_time):
                    path = self.save_checkpoint()
                    # the final checkpoint and a budget stop are scored once, by the final evaluation in fit()
                    last = self.out_of_time or (self.step == tc.n_steps and tc.final_eval)
                    if not (self.stop.agreed or last):
                        self.evaluate(self.training_eval_cfg(), self.config.eval.train_n_samples, path)
                if self.step % tc.log_interval == 0:  # images/s measures training only, not grids and evaluations
                    tick = time.time()

    def fit(self) -> dict:
        acc, tc, config = self.accelerator, self.config.train, self.config
        if acc.is_main_process:
            os.makedirs(self.workdir, exist_ok=True)
            with atomic_open(os.path.join(self.workdir, 'config.json'), 'w') as f:
                f.write(to_json(config))
        acc.init_trackers('train', config=flat_hparams(config))
        self.stop.install()
        if tc.max_minutes:
            self.deadline = time.time() + 60.0 * tc.max_minutes
        logger.info('training %s (%.2fM parameters) on %s with %d process(es), mixed precision %s, '
                    'global batch %d (%d per process x %d accumulation), from step %d; on: %s',
                    config.nnet.name, count_parameters(self.backbone()) / 1e6, self.device,
                    acc.num_processes, acc.mixed_precision, tc.batch_size, self.micro_batch,
                    tc.gradient_accumulation_steps, self.step,
                    ', '.join(f'{name}={on}' if isinstance(on, str) else name for name, on in self.path.items() if on)
                    or 'no compile or fused kernels')
        try:
            self.train_until_done()
        finally:
            self.stop.uninstall()
        result = {}
        if self.stop.agreed:
            logger.warning('stopped by signal at step %d; run the same command again to resume', self.step)
        elif self.out_of_time and self.step < tc.n_steps:
            logger.warning('train.max_minutes=%g spent at step %d of %d: saved that checkpoint and scoring it; run '
                           'the same command again to train on', tc.max_minutes, self.step, tc.n_steps)
        if not self.stop.agreed and tc.final_eval:
            if self.step % tc.eval_interval:
                self.save_grid()
            result = self.evaluate(config.sample, config.sample.n_samples, self.ckpts.path(self.step),
                                   png_dir=config.sample.path)
        acc.end_training()
        return result
