"""Resumable sample scores: what the scorer made of each mini-batch of samples, kept on disk until the score is
written, so that an evaluation stopped by preemption, a time limit or a crash continues where it stopped.

A store is a directory beside the result JSON, ``<weights dir>/eval_<mode>_..._<ema|raw>_shards/``::

    manifest.json              the settings the samples depend on; written first, compared on every re-run
    0000000-0000500.pt         samples [0, 500): {'rows': what scorer.add made of them, 'labels': tensor or None}
    0000500-0001000.pt         ...

Chunk ``j`` holds the samples ``[j * chunk_size, min((j + 1) * chunk_size, n_samples))``: the mini-batches of
``generate``, whatever the number of processes, so a run can resume with another number of processes. Each file is
written to a temporary name and renamed when complete (libs/fileio.py), so a chunk is either whole or absent.
Samples are a function of (seed, sample index) (libs/rng.py), so the chunks of an interrupted run and those of its
continuation are the chunks of an uninterrupted run, and so is the score.

A store whose manifest differs from the present settings (other weights, sampler, count, seed, ...) is never
mixed in: it is deleted with one warning that names what changed. The caller deletes the store once the result
JSON is written (the JSON is the durable result). The rows of the image metrics are float32 features, 2048 per
sample for FID (and IS, precision, recall, KID), 2023 more for sFID, 1024 more for FD-DINOv2: the shards of a
50,000-sample score take 0.4 GB for FID alone and 1.0 GB with every metric (libs/metrics/metric_set.py).
"""
import json
import logging
import os
import shutil
import time

import torch

from libs.errors import UserError
from libs.fileio import atomic_open

logger = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = 'manifest.json'
SHOWN_DIFFERENCES = 3    # a mismatch names at most this many changed settings


def as_json_data(value):
    """``value`` as it reads back from JSON (tuples become lists, other objects their str), for comparisons."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def differences(old, new, prefix: str = '') -> list:
    """'key: old -> new' for each leaf that differs between two nested dicts (long values: the key only)."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new)):
            found += differences(old.get(key), new.get(key), f'{prefix}{key}.')
        return found
    if old == new:
        return []
    key = prefix.rstrip('.')
    shown = f'{old!r} -> {new!r}'
    return [f'{key}: {shown}' if len(shown) <= 60 else key]


class ShardStore:
    """The chunks of one sample score in ``directory``.

    ``settings``: everything the samples and their rows depend on beyond the count and the chunk size (read on the
    main process only; other processes may pass None). ``prepare`` and ``read`` run on the main process; ``write``
    on whichever process sampled the chunk.
    """

    def __init__(self, directory: str, n_samples: int, chunk_size: int, settings: dict = None):
        if n_samples < 1 or chunk_size < 1:
            raise ValueError(f'a shard store needs n_samples >= 1 and chunk_size >= 1, got {n_samples}, {chunk_size}')
        self.directory = directory
        self.n_samples, self.chunk_size = n_samples, chunk_size
        self.manifest = as_json_data({'format': FORMAT, 'n_samples': n_samples, 'chunk_size': chunk_size,
                                      'settings': settings})

    @property
    def num_chunks(self) -> int:
        return -(-self.n_samples // self.chunk_size)

    def bounds(self, chunk: int):
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.n_samples)

    def path(self, chunk: int) -> str:
        start, stop = self.bounds(chunk)
        return os.path.join(self.directory, f'{start:07d}-{stop:07d}.pt')

    def recorded_manifest(self):
        """The manifest on disk, or None when absent or unreadable."""
        try:
            with open(os.path.join(self.directory, MANIFEST)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def done(self) -> list:
        return [j for j in range(self.num_chunks) if os.path.isfile(self.path(j))]

    def prepare(self) -> list:
        """Make the directory hold this evaluation's manifest and only its chunks; return the chunks to sample."""
        if os.path.isdir(self.directory):
            recorded = self.recorded_manifest()
            if recorded != self.manifest:
                changed = differences(recorded, self.manifest) if recorded else ['no readable manifest']
                more = f' and {len(changed) - SHOWN_DIFFERENCES} more' if len(changed) > SHOWN_DIFFERENCES else ''
                logger.warning('ignoring the samples in %s: they were drawn with other settings (%s%s); sampling '
                               'anew', self.directory, '; '.join(changed[:SHOWN_DIFFERENCES]), more)
                shutil.rmtree(self.directory)
        os.makedirs(self.directory, exist_ok=True)
        for name in os.listdir(self.directory):
            if name.startswith('.') and name.endswith('.tmp'):  # a write cut short by a kill
                os.remove(os.path.join(self.directory, name))
        if not os.path.isfile(os.path.join(self.directory, MANIFEST)):
            with atomic_open(os.path.join(self.directory, MANIFEST), 'w') as f:
                json.dump(self.manifest, f, indent=2)
        done = set(self.done())
        if done:
            logger.info('resuming from %s: %d of %d chunks of %d samples already sampled', self.directory, len(done),
                        self.num_chunks, self.chunk_size)
        return [j for j in range(self.num_chunks) if j not in done]

    def write(self, chunk: int, rows: torch.Tensor, labels) -> None:
        """Keep what the scorer made of the samples of ``chunk`` (one row per sample of the chunk)."""
        start, stop = self.bounds(chunk)
        if len(rows) != stop - start or (labels is not None and len(labels) != stop - start):
            raise ValueError(f'chunk {chunk} holds samples [{start}, {stop}), got {len(rows)} rows')
        with atomic_open(self.path(chunk)) as f:
            torch.save({'rows': rows.detach().cpu(), 'labels': None if labels is None else labels.detach().cpu()}, f)

    def read(self, visible_within_s: float = 60.0):
        """Every chunk's rows (and labels, or None) in sample order, on the CPU. Chunks that other nodes renamed
        into place may take a while to show on a network filesystem (attribute caching): missing ones are looked for
        again for up to ``visible_within_s`` seconds."""
        deadline = time.monotonic() + visible_within_s
        missing = [j for j in range(self.num_chunks) if not os.path.isfile(self.path(j))]
        while missing and time.monotonic() < deadline:
            time.sleep(1.0)
            missing = [j for j in missing if not os.path.isfile(self.path(j))]
        if missing:
            raise UserError(f'{len(missing)} of {self.num_chunks} chunks of samples are missing from '
                            f'{self.directory} (first: {os.path.basename(self.path(missing[0]))}), although every '
                            f'process finished: on several nodes, the weights must be in a directory that every '
                            f'node shares')
        rows, labels = [], []
        for j in range(self.num_chunks):
            try:
                chunk = torch.load(self.path(j), map_location='cpu', weights_only=True)
            except Exception as exc:
                first_line = (str(exc).splitlines() or [''])[0]
                raise UserError(f'cannot read {self.path(j)}: {type(exc).__name__}: {first_line}; delete it and run '
                                f'again to sample it anew') from None
            rows.append(chunk['rows'])
            labels.append(chunk['labels'])
        has_labels = labels[0] is not None
        return torch.cat(rows), (torch.cat(labels) if has_labels else None)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
