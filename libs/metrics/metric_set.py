"""The numbers image-generation papers report, from one pass over the samples: FID, sFID, Inception Score, precision
and recall as ADM's evaluator defines them (guided-diffusion, ``evaluations/evaluator.py``), KID, and FD-DINOv2.

``MetricSet(reference, settings, device)`` loads the networks the chosen metrics need (pytorch-fid's FID Inception;
DINOv2 ViT-L/14 for ``fd_dinov2``) and opens the reference (libs/metrics/reference.py). ``rows(images)`` turns a
batch of samples into one float32 row per image, the columns of every feature the metrics need side by side:

- ``pool`` (2048): Inception pool3 features, for fid, is, prec, recall and kid;
- ``spatial`` (2023): Inception ``Mixed_6d.branch1x1`` = TF's ``mixed_6/conv``, first 7 channels of 17 x 17
  (libs/metrics/fid.py), for sfid;
- ``dinov2`` (1024 for ViT-L): DINOv2's CLS token after the final norm, for fd_dinov2.

The Inception Score's logits are the pool features times the 2015 graph's logit weight (no bias), so they are not
stored. Rows are what the evaluation harness gathers across processes and keeps in resumable shards
(libs/evaluation/shards.py): with every metric 5,095 float32 values, 20 KB per sample, 1.0 GB at 50,000 samples
(0.8 GB without FD-DINOv2, 0.4 GB for FID alone). ``scores(rows)`` computes the numbers on the gathered rows; the
reference's own features are computed there, once per process for a given reference and networks (cached).
"""
import dataclasses
import logging
import os

import numpy as np
import torch

from libs.errors import UserError
from libs.metrics import fid

logger = logging.getLogger(__name__)

# name -> what it is; this order is the order of the printed numbers and of the JSON keys
METRICS = {
    'fid': 'FID: Frechet distance of Inception pool features',
    'sfid': "sFID: Frechet distance of ADM's spatial Inception features (mixed_6/conv)",
    'is': 'Inception Score',
    'prec': 'precision: samples on the reference manifold (k-NN balls of pool features)',
    'recall': 'recall: reference images on the sample manifold',
    'kid': 'KID: unbiased MMD^2 of pool features, cubic polynomial kernel',
    'fd_dinov2': 'FD-DINOv2: Frechet distance of DINOv2 ViT-L/14 features',
}
# the feature column each metric reads, of the samples and (all but 'is') of the reference
FEATURE_OF = {'fid': 'pool', 'sfid': 'spatial', 'is': 'pool', 'prec': 'pool', 'recall': 'pool', 'kid': 'pool',
              'fd_dinov2': 'dinov2'}
COLUMNS = ('pool', 'spatial', 'dinov2')
NEEDS_REFERENCE_IMAGES = ('prec', 'recall', 'kid', 'fd_dinov2')  # stored statistics do not serve them
ADM_IS_SPLIT_SIZE = 5000
REFERENCE_CACHE = {}   # the features of the last reference encoded in this process


def parse_metrics(value, what: str = 'metrics') -> tuple:
    """'fid,sfid,is' (or a list) -> ('fid', 'sfid', 'is') in METRICS' order; UserError naming ``what`` for an
    unknown name."""
    from libs.config import parse_list
    names = parse_list(value, what)
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise UserError(f"unknown metric {unknown[0]!r} in {what}; known: {', '.join(METRICS)}")
    return tuple(name for name in METRICS if name in names)


@dataclasses.dataclass(frozen=True)
class MetricSettings:
    """Everything besides the reference that changes the numbers. The field names are the config keys (under
    ``config.eval``) and the flags of ``scripts/score_samples.py``."""

    metrics: tuple = ('fid',)
    inception_path: str = ''          # '' : assets/fid_inception/ or torch hub's cache
    dinov2_path: str = ''             # '' : assets/dinov2-vitl14/
    is_splits: int = 0                # > 0: that many equal parts (improved-GAN, HybViT); 0: parts of is_split_size
    is_split_size: int = ADM_IS_SPLIT_SIZE
    pr_k: int = 3                     # precision and recall: the k of the k-NN radii
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    kid_seed: int = 0
    batch_size: int = 50              # images per network call

    def __post_init__(self):
        object.__setattr__(self, 'metrics', parse_metrics(self.metrics))
        for name in ('is_splits', 'is_split_size', 'pr_k', 'kid_subsets', 'kid_subset_size', 'batch_size'):
            value, least = getattr(self, name), {'is_splits': 0, 'kid_subset_size': 2}.get(name, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise UserError(f'{name} must be an integer >= {least}, got {value!r}')

    def columns(self) -> list:
        """The feature columns the metrics read, in row order."""
        used = {FEATURE_OF[m] for m in self.metrics}
        return [name for name in COLUMNS if name in used]


class MetricSet:
    """The networks, the reference and the settings of one sample score; see the module docstring."""

    def __init__(self, reference: str, settings: MetricSettings, device='cpu', n_samples: int = None,
                 image_size=None):
        """``n_samples`` and ``image_size`` (H, W) of the samples, when known, are checked before any network is
        loaded: too few samples for a metric, or samples of another size than the reference images, fail now."""
        from libs.metrics.reference import Reference
        self.settings, self.device = settings, torch.device(device)
        self.metrics = settings.metrics
        self.reference = Reference(reference)
        if image_size is not None:
            self.reference.check_image_size(image_size)
        if n_samples is not None:
            self.check_count(n_samples)
        self.columns = settings.columns()
        missing = self.reference_features_needed()
        if missing and self.reference.images is None:
            metric = next(m for m in self.metrics if m in NEEDS_REFERENCE_IMAGES
                          or (m != 'is' and FEATURE_OF[m] not in self.reference.stored))
            raise UserError(f'{metric} needs the reference images, and {self.reference.path} holds only statistics '
                            f"({', '.join(sorted(self.reference.stored))}): use a reference batch (.npz with arr_0, "
                            f"as ADM's) or a folder of images")
        if missing:
            self.check_count(self.reference.count, 'reference images', reference=True)
        self.inception = self.logit_weight = self.dinov2 = None
        if {'pool', 'spatial'} & (set(self.columns) | missing):
            self.load_inception()
            if 'is' in self.metrics:
                self.logit_weight = fid.load_logit_weights(self.inception_file)
        if 'dinov2' in self.columns:
            from libs.latent.dinov2 import dinov2_folder
            from libs.metrics.fd_dinov2 import DinoV2Features
            self.dinov2_folder = dinov2_folder(settings.dinov2_path)
            self.dinov2 = DinoV2Features.from_folder(self.dinov2_folder, self.device, settings.batch_size)
        self.widths = {'pool': 2048, 'spatial': fid.SPATIAL_FEATURES,
                       'dinov2': self.dinov2.width if self.dinov2 is not None else 0}

    def load_inception(self) -> None:
        self.inception_file = fid.find_inception_weights(self.settings.inception_path or None)
        self.inception = fid.InceptionFeatures(fid.load_inception(self.inception_file, device=self.device),
                                               self.settings.batch_size)

    def reference_features_needed(self) -> set:
        """The feature columns that must be computed from the reference images."""
        needed = {FEATURE_OF[m] for m in self.metrics if m in NEEDS_REFERENCE_IMAGES}
        for metric in ('fid', 'sfid'):
            if metric in self.metrics and FEATURE_OF[metric] not in self.reference.stored:
                needed.add(FEATURE_OF[metric])
        return needed

    def check_count(self, n: int, what: str = 'samples', reference: bool = False) -> None:
        """UserError when ``n`` samples (or reference images) are too few for a chosen metric or its settings."""
        s, chosen = self.settings, set(self.metrics)
        needs = []
        if not reference and 'is' in chosen:
            needs.append((max(1, s.is_splits), f'the Inception Score over is_splits={s.is_splits} parts'))
        if {'fid', 'sfid', 'fd_dinov2'} & chosen:
            needs.append((2, 'a Frechet distance'))
        if {'prec', 'recall'} & chosen:
            needs.append((s.pr_k + 1, f'precision and recall with pr_k={s.pr_k}'))
        if 'kid' in chosen:
            needs.append((s.kid_subset_size, f'KID subsets of kid_subset_size={s.kid_subset_size}'))
        for least, reason in needs:
            if n < least:
                raise UserError(f'{reason}: at least {least} {what} are needed, got {n}')

    # ----------------------------------------------------------------------------------------------- samples
    def check_images(self, images: torch.Tensor) -> None:
        """UserError when samples of this size cannot be compared with the reference images."""
        self.reference.check_image_size(tuple(images.shape[-2:]))

    def features(self, images, columns) -> dict:
        """{column: (B, width) float32 on the device} of a batch of images (uint8, or float in [-1, 1])."""
        out = {}
        if {'pool', 'spatial'} & set(columns):
            out.update(self.inception.outputs(images, spatial='spatial' in columns))
        if 'dinov2' in columns:
            out['dinov2'] = self.dinov2(images)
        return {name: out[name].to(self.device) for name in columns}

    def rows(self, images) -> torch.Tensor:
        """(B, sum of the column widths) float32 on the device: the features of a batch of samples."""
        features = self.features(images, self.columns)
        return torch.cat([features[name] for name in self.columns], dim=1)

    def split(self, rows: torch.Tensor) -> dict:
        """Rows -> {column: (N, width)}."""
        widths = [self.widths[name] for name in self.columns]
        if rows.ndim != 2 or rows.shape[1] != sum(widths):
            raise ValueError(f'expected rows (N, {sum(widths)}) for columns {self.columns}, got {tuple(rows.shape)}')
        return dict(zip(self.columns, rows.split(widths, dim=1)))

    # --------------------------------------------------------------------------------------------- reference
    def reference_features(self, columns=None) -> dict:
        """{column: (N_ref, width) float32 on the device} of the reference images, computed once per process."""
        columns = sorted(self.reference_features_needed() if columns is None else columns)
        stat = os.stat(self.reference.path)
        key = (os.path.abspath(self.reference.path), stat.st_mtime_ns, stat.st_size,
               getattr(self, 'inception_file', None), getattr(self, 'dinov2_folder', None), str(self.device))
        if key not in REFERENCE_CACHE:
            REFERENCE_CACHE.clear()  # one reference at a time: 10,000 images are 200 MB of features
            REFERENCE_CACHE[key] = {}
        cached = REFERENCE_CACHE[key]
        missing = [name for name in columns if name not in cached]
        if missing:
            cached.update({name: value.cpu() for name, value in self._encode_reference(missing).items()})
        return {name: cached[name].to(self.device) for name in columns}

    def _encode_reference(self, columns) -> dict:
        """One pass of the networks over the reference images, for ``columns``."""
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm
        logger.info('features of the %d reference images of %s', self.reference.count, self.reference.path)
        parts = {name: [] for name in columns}
        loader = DataLoader(self.reference.images, batch_size=self.settings.batch_size, shuffle=False)
        for images, _ in tqdm(loader, desc='reference features', leave=False):
            for name, value in self.features(images, columns).items():
                parts[name].append(value)
        return {name: torch.cat(value) for name, value in parts.items()}

    def reference_statistics(self, column: str, computed: dict):
        """(mu, sigma) of the reference for ``column``: stored in the file, else from the computed features."""
        if column in self.reference.stored:
            return self.reference.stored[column]
        return fid.activation_statistics(computed[column].double().cpu().numpy())

    # ---------------------------------------------------------------------------------------------- numbers
    def scores(self, rows: torch.Tensor) -> dict:
        """The chosen metrics of the samples whose rows (N, width) are given, against the reference."""
        s, chosen = self.settings, set(self.metrics)
        samples = self.split(rows)
        self.check_count(len(rows))
        ref = self.reference_features()
        out = {}
        for metric in ('fid', 'sfid'):
            if metric in chosen:
                column = FEATURE_OF[metric]
                out[metric] = fid.frechet_distance_of_activations(samples[column].double().cpu().numpy(),
                                                                  *self.reference_statistics(column, ref))
        if 'is' in chosen:
            from libs.metrics.inception_score import inception_score_of_features
            out['inception_score'], out['inception_score_std'] = inception_score_of_features(
                samples['pool'], self.logit_weight, s.is_splits or None, None if s.is_splits else s.is_split_size)
        if {'prec', 'recall'} & chosen:
            from libs.metrics.precision_recall import precision_recall
            precision, recall = precision_recall(ref['pool'], samples['pool'], s.pr_k)
            if 'prec' in chosen:
                out['precision'] = precision
            if 'recall' in chosen:
                out['recall'] = recall
        if 'kid' in chosen:
            from libs.metrics.kid import kid
            out['kid'], out['kid_std'] = kid(ref['pool'], samples['pool'], s.kid_subsets, s.kid_subset_size,
                                             s.kid_seed)
        if 'fd_dinov2' in chosen:
            from libs.metrics.fd_dinov2 import fd_dinov2
            out['fd_dinov2'] = fd_dinov2(samples['dinov2'], ref['dinov2'])
        return out

    def require_reference_batch(self) -> None:
        """UserError unless the reference holds both images and statistics (what ``check_reference`` compares)."""
        if self.reference.kind != 'batch' or not self.reference.stored:
            raise UserError(f'--check_reference needs a reference batch holding both images (arr_0) and statistics '
                            f'(mu, mu_s); {self.reference.path} is a {self.reference.kind} with '
                            f"{', '.join(sorted(self.reference.stored)) or 'no'} statistics")

    def check_reference(self) -> dict:
        """How far the statistics stored in a reference batch are from those computed here from its images: per
        stored statistic, the Frechet distance between the two Gaussians, |mu_stored - mu| / |mu_stored|, and the
        stored tr(sigma) for scale. With the real Inception weights the spatial entry confirms sFID's layer: the same
        layer gives a distance near 0 (not 0: pytorch-fid resizes and scales pixels slightly differently from the TF
        graph), another layer a distance of the order of tr(sigma)."""
        self.require_reference_batch()
        if self.inception is None:
            self.load_inception()
        computed = self.reference_features(self.reference_features_needed() | set(self.reference.stored))
        report = {}
        for column, (mu, sigma) in self.reference.stored.items():
            features = computed[column].double().cpu().numpy()
            mu_here = features.mean(axis=0)
            report[column] = {'frechet_distance': fid.frechet_distance_of_activations(features, mu, sigma),
                              'mean_relative_difference': float(np.linalg.norm(mu - mu_here) / np.linalg.norm(mu)),
                              'stored_trace_sigma': float(np.trace(sigma))}
        return report

    def record(self) -> dict:
        """Every setting behind the numbers, for the result JSON."""
        s, chosen = self.settings, set(self.metrics)
        record = {'metrics': list(self.metrics), **self.reference.describe()}
        stats = [FEATURE_OF[m] for m in ('fid', 'sfid') if m in chosen]
        if stats:
            record['reference_statistics_source'] = {
                column: 'stored' if column in self.reference.stored else f'computed from {self.reference.count} images'
                for column in stats}
        if self.inception is not None:
            from libs.metrics.reference import file_sha256_cached
            record.update(inception=self.inception_file, inception_sha256=file_sha256_cached(self.inception_file))
        if 'sfid' in chosen:
            record['spatial_features'] = f'{fid.SPATIAL_MODULE} (TF mixed_6/conv:0), channels 0-6 of 17x17'
        if 'is' in chosen:
            record['inception_score_split'] = {'splits': s.is_splits} if s.is_splits else {
                'split_size': s.is_split_size}
        if {'prec', 'recall'} & chosen:
            record.update(pr_k=s.pr_k, pr_distances='float32, TF32 off')
        if 'kid' in chosen:
            record.update(kid_subsets=s.kid_subsets, kid_subset_size=s.kid_subset_size, kid_seed=s.kid_seed)
        if self.dinov2 is not None:
            record.update(dinov2=self.dinov2_folder, dinov2_width=self.dinov2.width,
                          dinov2_preprocessing='dgm-eval: 224x224 PIL bicubic, ImageNet mean and std, CLS token')
        return record
