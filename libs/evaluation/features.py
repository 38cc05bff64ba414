"""DDAE's feature evaluations (Xiang et al. 2023, "Denoising Diffusion Autoencoders are Unified Self-supervised
Learners"): what a diffusion network's intermediate features know about the data.

Features: the clean image x_0 is noised to noise-level index k (the framework's ``level_time``: DDPM step n of
1000, EDM's index into its 18-level grid) with noise drawn per image (``SampleRandom(feature_seed(seed, pass),
image index)``, so the numbers do not depend on the number of processes), passed through the backbone with the
"no class" label if it is class-conditional (a label would hand the answer to the features), and pooled
(libs/nets/protocol.py: ``features``). Keys name the layer and the noise level sigma (the variance-exploding
sigma / alpha, comparable across frameworks) with the native index beside it.

- ``linear_probe``: a linear classifier on frozen features of ``probe.layers`` at ``probe.level`` (DDAE: Adam lr 1e-3,
  cosine, 15 epochs, batch 128), top-1 accuracy on the test split. ``probe.grid`` (``eval.py --grid``): one probe per
  (layer, level) of ``probe.grid_layers`` x ``probe.grid_levels``, trained in the same passes; JSON and a heat map.
  ``probe.augment='flip_crop'`` recomputes the training features every epoch on flipped and shifted images with
  fresh noise, as DDAE does; 'none' computes them once.
- ``contrastive``: alignment and uniformity (Wang & Isola 2020) of the normalised features of two views of each
  image -- two independent noise draws at the same level, as DDAE's contrastive.py -- for every checkpoint of a run
  (``--nnet_path`` = the run's workdir or its ckpts/ folder); a table and a plot over training steps.
- ``noisy_clf``: accuracy against the noise level of (a) a two-layer MLP head on the frozen features, told the
  level by a sinusoidal embedding of its index (DDAE's noisy_classifier_DDAE.py), and (b) a noise-conditional
  WideResNet trained from scratch on noisy images (libs/nets/wideresnet.py; DDAE's noisy_classifier_WRN.py, SGD with
  warm-up and cosine decay); both trained at uniformly drawn levels, tested at ``noisy_clf.test_levels``. One plot,
  one JSON.

Feature extraction is split across processes (``EvalRun.per_image``); every process trains the same small heads
on the gathered features (the WideResNet, a network of its own, trains on the main process alone), and every
process returns the main process's numbers.
"""
import dataclasses
import glob
import math
import os
import re

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from libs.config import parse_list
from libs.diffusion.gaussian import broadcast_scales
from libs.errors import UserError
from libs.evaluation.classification import limited
from libs.evaluation.harness import EvalRun, result_name, write_record
from libs.rng import SampleRandom, feature_seed

AUGMENT_PAD = 4          # 'flip_crop': DDAE's RandomCrop(32, padding=4), with the padding scaled to the image size
AUGMENT_PAD_SIDE = 32

# Feature passes over a split: pass p draws its augmentation from stream p * STREAMS_PER_PASS and the noise of its
# k-th level from stream p * STREAMS_PER_PASS + 1 + k (libs.rng.feature_seed), so no two draws share a stream.
TEST_PASS, TRAIN_PASS, VIEW_PASS = 0, 1, 100000
STREAMS_PER_PASS = 1000


@dataclasses.dataclass(frozen=True)
class Level:
    """A noise level: the framework's native index, its time t and the variance-exploding sigma."""
    index: int
    t: float
    sigma: float


def levels_of(framework, indices) -> list:
    out = []
    for index in indices:
        t = framework.level_time(int(index))
        sigma = float(framework.schedule.ve_sigma(torch.tensor(t, dtype=torch.float64)))
        out.append(Level(int(index), t, sigma))
    return out


class Indexed(Dataset):
    """(image, (label, index)): each image carries its index, so its noise can be drawn from its own generator."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return x, torch.tensor([int(y), i])


def split(config, name: str, n: int):
    from libs.data import build_dataset
    dataset = build_dataset(config.dataset, split=name)
    if getattr(dataset, 'stores_features', False):
        raise UserError(f'dataset {config.dataset.name!r} holds autoencoder features, not images: the feature '
                        f'evaluations take pixel-space images')
    if dataset.num_classes <= 0:
        raise UserError(f'dataset {config.dataset.name!r} has no labels: the probes need a labelled dataset')
    return Indexed(limited(dataset, n))


def augmented(x, random, pad: int):
    """DDAE's training augmentation, one draw per image from its generator: a horizontal flip with probability 1/2,
    then a shift by up to ``pad`` pixels (black border)."""
    from libs.data.augment import shifted
    flip = random.randint(2).bool().to(x.device)
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return shifted(x, pad, random.randint((2 * pad + 1) ** 2)) if pad else x


class Features:
    """The pooled features of a loaded network at given noise levels (see the module docstring)."""

    def __init__(self, run: EvalRun):
        self.run = run
        self.denoiser = run.denoiser()
        self.seed = run.config.seed
        nnet = run.nnet
        if not hasattr(nnet, 'features'):
            raise UserError(f'{type(nnet).__name__} gives no features (libs/nets/protocol.py): the feature '
                            f'evaluations need a backbone with feature_layers() and features()')
        self.layers = list(nnet.feature_layers())
        run.framework.level_range()  # a framework without Gaussian noise levels fails now, in one line
        self.conditioning = run.conditioning(with_prompts=False)
        self.conditioning.uninformative(0, 'cpu')  # a network it cannot probe fails now, in one line

    def check_layers(self, layers) -> list:
        from libs.nets.protocol import check_feature_layers
        return check_feature_layers(self.run.nnet, layers)

    def chosen(self, cfg, grid: bool, all_layers: bool = False):
        """The (layers, levels) a mode evaluates, checked: in a grid (or with ``all_layers``) ``cfg.grid_layers``,
        '' meaning every feature layer of the backbone; else ``cfg.layers``; at ``cfg.grid_levels`` in a grid, else
        at ``cfg.level``."""
        layers = (parse_list(cfg.grid_layers, 'config.probe.grid_layers', allow_empty=True) or self.layers) \
            if grid or all_layers else parse_list(cfg.layers, 'config.probe.layers', allow_empty=True)
        indices = parse_list(cfg.grid_levels, 'config.probe.grid_levels', int, allow_empty=True) if grid else \
            [i for i in parse_list(cfg.level, 'config.probe.level', int, allow_empty=True) if i]
        if not layers or not indices:
            raise UserError('set config.probe.layers and config.probe.level (or grid_layers / grid_levels with '
                            f'--grid): the feature layers of this network are {", ".join(self.layers)}; noise '
                            f'levels are integers in {"..".join(map(str, self.run.framework.level_range()))}')
        return self.check_layers(layers), levels_of(self.run.framework, indices)

    def _cond(self, x):
        return self.conditioning.uninformative(x.shape[0], x.device)

    @torch.no_grad()
    def __call__(self, x0, image_index, layers, t, stream: int) -> dict:
        """{layer: (B, C) float32} at time t (a float, or a (B,) tensor of per-image times) for images x0 (B, ...)
        of dataset indices ``image_index``, the noise of pass ``stream``."""
        random = SampleRandom(feature_seed(self.seed, stream), image_index.tolist(), x0.device)
        eps = random.randn(x0.shape[1:], x0.dtype)
        t = torch.as_tensor(t, dtype=torch.float32, device=x0.device).expand(x0.shape[0])
        alpha, sigma = broadcast_scales(self.run.framework.schedule, t, x0, x0.dtype)
        x_t = alpha * x0 + sigma * eps
        with self.run.accelerator.autocast():
            feats = self.denoiser.features(x_t, t, layers, **self._cond(x0))
        return {name: value.float() for name, value in feats.items()}

    def table(self, dataset, layers, levels, stream: int, desc: str, augment_pad: int = 0) -> dict:
        """{(layer, level index): (N, C)} and 'labels' (N,) over ``dataset`` (an ``Indexed``), gathered in order."""
        def fn(x, y):
            index = y[:, 1]
            if augment_pad:
                random = SampleRandom(feature_seed(self.seed, stream * STREAMS_PER_PASS), index.tolist(), x.device)
                x = augmented(x, random, augment_pad)
            out = {'labels': y[:, 0]}
            for k, level in enumerate(levels):
                feats = self(x, index, layers, level.t, stream * STREAMS_PER_PASS + 1 + k)
                out.update({f'{name}@{level.index}': value for name, value in feats.items()})
            return out
        return self.run.per_image(dataset, fn, desc)


def probe_settings(cfg, layers, levels) -> dict:
    return {'layers': layers, 'levels': [dataclasses.asdict(level) for level in levels], 'epochs': cfg.epochs,
            'batch_size': cfg.batch_size, 'lr': cfg.lr, 'optimizer': 'adam, cosine', 'augment': cfg.augment,
            'n_train': cfg.n_train, 'n_test': cfg.n_test}


def linear_heads(train: dict, keys, num_classes: int) -> dict:
    """One linear classifier per key, on that key's feature width."""
    return {key: nn.Linear(train[key].shape[1], num_classes) for key in keys}


def minibatches(tables, keys, labels, batch_size: int, seed: int, epoch: int):
    """Shuffled mini-batches of every key's rows (the same permutation for all), as ({key: (rows,)}, labels)."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed * 1009 + epoch))
    for start in range(0, len(labels), batch_size):
        rows = order[start:start + batch_size]
        yield {key: (tables[key][rows],) for key in keys}, labels[rows]


def eval_linear_probe(config, nnet_path: str, ema: bool = True) -> dict:
    from libs.metrics.representation import probe_accuracy, train_probes
    cfg = config.probe
    if cfg.augment not in ('none', 'flip_crop'):
        raise UserError(f"config.probe.augment must be 'none' or 'flip_crop', got {cfg.augment!r}")
    run = EvalRun.load(config, nnet_path, ema, mode='linear_probe')
    features = Features(run)
    layers, levels = features.chosen(cfg, bool(cfg.grid))
    train_set, test_set = split(config, 'train', cfg.n_train), split(config, 'test', cfg.n_test)
    pad = round(AUGMENT_PAD * run.spec.data_shape[-1] / AUGMENT_PAD_SIDE) if cfg.augment == 'flip_crop' else 0
    test = features.table(test_set, layers, levels, TEST_PASS, 'probe: test features')
    keys = [f'{name}@{level.index}' for name in layers for level in levels]
    train = features.table(train_set, layers, levels, TRAIN_PASS, 'probe: train features', augment_pad=pad)
    torch.manual_seed(config.seed)    # the heads' initial weights: the same on every process
    heads = linear_heads(train, keys, run.spec.num_classes)

    def batches(epoch):
        nonlocal train
        if pad and epoch > 0:         # DDAE: fresh augmentation and noise every epoch
            train = features.table(train_set, layers, levels, TRAIN_PASS + epoch,
                                   f'probe: train features, epoch {epoch + 1}', augment_pad=pad)
        return minibatches(train, keys, train['labels'], cfg.batch_size, config.seed, epoch)

    # every process trains the same heads on the same gathered features (the passes above are collective)
    heads = train_probes(heads, batches, cfg.epochs, cfg.lr, progress=run.accelerator.is_main_process)
    accuracies = {key: probe_accuracy(heads[key], (test[key],), test['labels']) for key in keys}
    return run.broadcast(write_probe(run, config, layers, levels, accuracies, len(test['labels']),
                                     len(train['labels'])))


def write_probe(run, config, layers, levels, accuracies, n_test, n_train) -> dict:
    cfg = config.probe
    grid = [{'layer': name, 'index': level.index, 'sigma': level.sigma, 'accuracy': accuracies[f'{name}@{level.index}']}
            for name in layers for level in levels]
    best = max(grid, key=lambda row: row['accuracy'])
    result = {'accuracy': None if cfg.grid else grid[0]['accuracy'], 'best': best, 'grid': grid,
              'n_train': n_train}
    tags = ['grid'] if cfg.grid else [layers[0], f'level{levels[0].index}']
    stem = run.stem('linear_probe', n_test, *tags)
    if cfg.grid:
        result['heatmap'] = run.path(stem + '_heatmap.png')
        if run.accelerator.is_main_process:
            plot_heatmap(grid, layers, levels, result['heatmap'],
                         f'linear probe, {config.dataset.name} test ({n_test})')
    run.write('linear_probe', n_test, tags, probe_settings(cfg, layers, levels), result)
    for row in grid:
        run.print(f"{row['layer']:<10} sigma={row['sigma']:<9.4g} index={row['index']:<5} "
                  f"accuracy={row['accuracy']:.4f}")
    return result


def plot_heatmap(grid, layers, levels, path: str, title: str) -> None:
    from libs.metrics.plots import new_figure, save_png
    values = [[next(r['accuracy'] for r in grid if r['layer'] == name and r['index'] == level.index)
               for level in levels] for name in layers]
    fig = new_figure(1.2 + 0.9 * len(levels), 1.0 + 0.35 * len(layers))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(values, cmap='viridis', aspect='auto')
    ax.set_xticks(range(len(levels)), [f'{level.sigma:.3g}\n({level.index})' for level in levels], fontsize=7)
    ax.set_yticks(range(len(layers)), layers, fontsize=7)
    ax.set_xlabel('noise level sigma (native index)')
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, f'{100 * value:.1f}', ha='center', va='center', fontsize=6,
                    color='white' if value < 0.5 * (max(map(max, values)) + min(map(min, values))) else 'black')
    fig.colorbar(image, ax=ax, label='test accuracy')
    ax.set_title(title, fontsize=9)
    save_png(fig, path)


def checkpoints_of_run(path: str) -> tuple:
    """(the ckpts/ folder, [(step, checkpoint directory), ...] of every ``<step>.ckpt`` in it, by step) of a run's
    workdir or its ckpts/ folder."""
    root = os.path.join(path, 'ckpts') if os.path.isdir(os.path.join(path, 'ckpts')) else path
    found = []
    for folder in glob.glob(os.path.join(root, '*.ckpt')):
        match = re.fullmatch(r'(\d+)\.ckpt', os.path.basename(folder))
        if match and os.path.isdir(folder):
            found.append((int(match.group(1)), folder))
    if not found:
        raise UserError(f'--eval=contrastive takes a run (its workdir or ckpts/ folder): no <step>.ckpt directory '
                        f'in {root}')
    return root, sorted(found)


def eval_contrastive(config, nnet_path: str, ema: bool = True) -> dict:
    from libs.metrics.representation import alignment, uniformity
    cfg = config.probe
    root, checkpoints = checkpoints_of_run(nnet_path)
    images = split(config, 'train', config.contrastive.n_images)
    table, run = [], None
    for step, folder in checkpoints:
        run = EvalRun.load(config, folder, ema, mode='contrastive')
        features = Features(run)
        layers, (level,) = features.chosen(cfg, grid=False, all_layers=True)
        views = [features.table(images, layers, [level], VIEW_PASS + v, f'contrastive: step {step}, view {v + 1}')
                 for v in range(2)]
        for name in layers:
            a, b = (view[f'{name}@{level.index}'] for view in views)
            table.append({'step': step, 'layer': name, 'alignment': alignment(a, b),
                          'uniformity': 0.5 * (uniformity(a) + uniformity(b))})
    n = len(images)
    tags = [f'level{level.index}']
    stem = result_name('contrastive', config.dataset.name, n, tags, ema)
    result = {'table': table, 'level': dataclasses.asdict(level), 'plot': os.path.join(root, stem + '.png')}
    if run.accelerator.is_main_process:
        plot_contrastive(table, result['plot'], f'{config.dataset.name} train ({n}), sigma={level.sigma:.3g}')
        settings = {'layers': layers, 'level': dataclasses.asdict(level), 'views': 'two independent noise draws',
                    'alignment_alpha': 2, 'uniformity_t': 2, 'uniformity_pairs': 'all pairs of distinct images',
                    'checkpoints': [folder for _, folder in checkpoints]}
        write_record(run.accelerator, root, stem, {'mode': 'contrastive', 'run': root, 'ema': ema,
                                                    'dataset': config.dataset.name, 'n': n, 'settings': settings,
                                                    **result})
        run.print('step      layer      alignment  uniformity')
        for row in table:
            run.print(f"{row['step']:<9} {row['layer']:<10} {row['alignment']:<10.4f} {row['uniformity']:.4f}")
    return run.broadcast(result)


def plot_contrastive(table, path: str, title: str) -> None:
    from libs.metrics.plots import new_figure, save_png
    fig = new_figure(8.0, 3.4)
    for i, metric in enumerate(('alignment', 'uniformity')):
        ax = fig.add_subplot(1, 2, i + 1)
        for name in dict.fromkeys(row['layer'] for row in table):
            rows = [row for row in table if row['layer'] == name]
            ax.plot([row['step'] for row in rows], [row[metric] for row in rows], 'o-', label=name, markersize=3)
        ax.set_xlabel('training step')
        ax.set_ylabel(f'{metric} (lower is better)')
        ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=9)
    save_png(fig, path)


class NoiseConditionalHead(nn.Module):
    """DDAE's noisy-classifier head: features + an MLP embedding of the level index, then Linear(C, 2C) -> SiLU ->
    Linear(2C, K)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.channels = channels
        self.level_embed = nn.Sequential(nn.Linear(max(2, channels // 4), channels), nn.SiLU(),
                                         nn.Linear(channels, channels))
        self.classifier = nn.Sequential(nn.Linear(channels, 2 * channels), nn.SiLU(),
                                        nn.Linear(2 * channels, num_classes))

    def forward(self, features, level_index):
        from libs.nets.layers import timestep_embedding
        embedding = timestep_embedding(level_index.float(), max(2, self.channels // 4))
        return self.classifier(features + self.level_embed(embedding))


def eval_noisy_clf(config, nnet_path: str, ema: bool = True) -> dict:
    from libs.metrics.representation import probe_accuracy, train_probes
    cfg, ncfg = config.probe, config.noisy_clf
    if ncfg.perturbation not in ('vp', 've'):
        raise UserError(f"config.noisy_clf.perturbation must be 'vp' or 've', got {ncfg.perturbation!r}")
    run = EvalRun.load(config, nnet_path, ema, mode='noisy_clf')
    features = Features(run)
    layer = features.check_layers(parse_list(cfg.layers, 'config.probe.layers', allow_empty=True)[:1] or [''])[0]
    low, high = run.framework.level_range()
    test_levels = levels_of(run.framework, parse_list(ncfg.test_levels, 'config.noisy_clf.test_levels', int,
                                                      allow_empty=True) or run.framework.default_levels())
    train_set, test_set = split(config, 'train', cfg.n_train), split(config, 'test', cfg.n_test)
    all_times = torch.tensor([run.framework.level_time(k) for k in range(low, high + 1)])

    def drawn_levels(index, stream):
        """One uniformly drawn level index per image, from its own generator."""
        return low + SampleRandom(feature_seed(config.seed, stream), index.tolist()).randint(high - low + 1)

    def train_table(epoch):
        stream = (TRAIN_PASS + epoch) * STREAMS_PER_PASS

        def fn(x, y):
            levels = drawn_levels(y[:, 1], stream).to(x.device)
            feats = features(x, y[:, 1], [layer], all_times.to(x.device)[levels - low], stream + 1)
            return {'features': feats[layer], 'levels': levels, 'labels': y[:, 0]}
        return run.per_image(train_set, fn, f'noisy_clf: train features, epoch {epoch + 1}')

    tables = {}

    def batches(epoch):    # fresh levels and noise every epoch, as DDAE
        tables.update(train_table(epoch))
        order = torch.randperm(len(tables['labels']), generator=torch.Generator().manual_seed(config.seed + epoch))
        for start in range(0, len(order), cfg.batch_size):
            rows = order[start:start + cfg.batch_size]
            yield {'mlp': (tables['features'][rows], tables['levels'][rows])}, tables['labels'][rows]

    torch.manual_seed(config.seed)
    probe_image = test_set[0][0][None].to(run.device)
    width = features(probe_image, torch.tensor([0]), [layer], test_levels[0].t, 0)[layer].shape[1]
    head = train_probes({'mlp': NoiseConditionalHead(width, run.spec.num_classes)}, batches, ncfg.mlp_epochs,
                        cfg.lr, progress=run.accelerator.is_main_process)['mlp']
    test = features.table(test_set, [layer], test_levels, TEST_PASS, 'noisy_clf: test features')
    mlp = {level.index: probe_accuracy(head, (test[f'{layer}@{level.index}'],
                                              torch.full_like(test['labels'], level.index)), test['labels'])
           for level in test_levels}
    wrn = noisy_wideresnet_accuracy(run, config, train_set, test_set, test_levels, all_times, low, drawn_levels)
    curves = [{'index': level.index, 'sigma': level.sigma, 'mlp_on_features': mlp[level.index],
               'wideresnet': wrn[level.index]} for level in test_levels]
    n = len(test['labels'])
    stem = run.stem('noisy_clf', n, layer)
    result = {'layer': layer, 'curves': curves, 'plot': run.path(stem + '.png')}
    if run.accelerator.is_main_process:
        plot_noisy_clf(curves, result['plot'], f'{config.dataset.name} test ({n}); features of {layer}')
        settings = {'layer': layer, 'test_levels': [dataclasses.asdict(level) for level in test_levels],
                    'train_levels': f'uniform over {low}..{high}', 'mlp_epochs': ncfg.mlp_epochs, 'lr': cfg.lr,
                    'batch_size': cfg.batch_size, 'n_train': cfg.n_train, 'n_test': cfg.n_test,
                    'wideresnet': {key: ncfg[key] for key in ncfg if key.startswith('wrn')},
                    'perturbation': ncfg.perturbation}
        run.write('noisy_clf', n, [layer], settings, result)
        run.print('index  sigma      mlp_on_features  wideresnet')
        for row in curves:
            run.print(f"{row['index']:<6} {row['sigma']:<10.4g} {row['mlp_on_features']:<16.4f} "
                      f"{row['wideresnet']:.4f}")
    return run.broadcast(result)


def noisy_wideresnet_accuracy(run, config, train_set, test_set, test_levels, all_times, low, drawn_levels) -> dict:
    """DDAE's supervised baseline: a noise-conditional WideResNet trained from scratch on noisy training images (SGD,
    momentum 0.9, linear warm-up then cosine decay), its accuracy at each test level. It trains on the main process
    (a small network); the others wait for its numbers."""
    from libs.nets.wideresnet import NoiseConditionalWideResNet
    ncfg = config.noisy_clf
    accuracies = {}
    if run.accelerator.is_main_process:
        from torch.utils.data import DataLoader
        torch.manual_seed(config.seed)
        shape = run.spec.data_shape
        net = NoiseConditionalWideResNet(ncfg.wrn_depth, ncfg.wrn_widen, run.spec.num_classes, shape[0]).to(run.device)
        optimizer = torch.optim.SGD(net.parameters(), lr=ncfg.wrn_lr, momentum=0.9, weight_decay=ncfg.wrn_weight_decay)
        schedule = run.framework.schedule

        def noisy(x, index, times, stream):
            eps = SampleRandom(feature_seed(config.seed, stream), index.tolist(), x.device).randn(x.shape[1:])
            sigma = schedule.ve_sigma(times).view(-1, 1, 1, 1).float()
            y = x + sigma * eps                              # VE: x_0 + sigma n
            if ncfg.perturbation == 'vp':                    # VP: the same, scaled by alpha
                y = y / torch.sqrt(1 + sigma ** 2)
            return y, sigma.flatten()

        loader = DataLoader(train_set, batch_size=ncfg.wrn_batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(config.seed))
        from tqdm.auto import tqdm
        for epoch in tqdm(range(ncfg.wrn_epochs), desc='noisy_clf: WideResNet'):
            if epoch < ncfg.wrn_warmup_epochs:
                lr = ncfg.wrn_lr * (epoch + 1) / ncfg.wrn_warmup_epochs
            else:
                done = (epoch - ncfg.wrn_warmup_epochs) / max(1, ncfg.wrn_epochs - ncfg.wrn_warmup_epochs)
                lr = 0.5 * ncfg.wrn_lr * (1 + math.cos(math.pi * done))
            for group in optimizer.param_groups:
                group['lr'] = lr
            net.train()
            stream = (TRAIN_PASS + epoch) * STREAMS_PER_PASS + STREAMS_PER_PASS // 2
            for x, y in loader:
                x, y = x.to(run.device), y.to(run.device)
                levels = drawn_levels(y[:, 1], stream).to(run.device)
                inputs, sigma = noisy(x, y[:, 1], all_times.to(run.device)[levels - low], stream + 1)
                loss = nn.functional.cross_entropy(net(inputs, sigma), y[:, 0])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        net.eval()
        test_loader = DataLoader(test_set, batch_size=ncfg.wrn_batch_size)
        with torch.no_grad():
            for k, level in enumerate(test_levels):
                correct = total = 0
                for x, y in test_loader:
                    x, y = x.to(run.device), y.to(run.device)
                    times = torch.full((x.shape[0],), level.t, device=run.device)
                    inputs, sigma = noisy(x, y[:, 1], times, TEST_PASS * STREAMS_PER_PASS + 1 + k)
                    correct += (net(inputs, sigma).argmax(1) == y[:, 0]).sum().item()
                    total += len(y)
                accuracies[level.index] = correct / total
    return run.broadcast({'accuracies': accuracies})['accuracies']


def plot_noisy_clf(curves, path: str, title: str) -> None:
    from libs.metrics.plots import new_figure, save_png
    fig = new_figure(5.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    sigmas = [row['sigma'] for row in curves]
    ax.plot(sigmas, [row['mlp_on_features'] for row in curves], 'o-', label='MLP on diffusion features', markersize=3)
    ax.plot(sigmas, [row['wideresnet'] for row in curves], 's--', label='noise-conditional WideResNet', markersize=3)
    ax.set_xscale('log')
    ax.set_xlabel('noise level sigma')
    ax.set_ylabel('test accuracy')
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    save_png(fig, path)
