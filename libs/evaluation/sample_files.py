"""FID and Inception Score of samples that come as files, without a model: a folder of images, or an ``.npz`` whose
``arr_0`` holds uint8 images (N, H, W, C) -- the layout of the ADM / DiT evaluation suite's sample batches. What
users who compare other models' samples with the suite's scores run (``scripts/compute_fid.py``)."""
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from libs.errors import UserError
from libs.evaluation.harness import broadcast_dict, result_name, write_record


class SampleArray(Dataset):
    """The images of ``arr_0`` in an .npz file, memory-mapped where possible, as (C, H, W) uint8 tensors."""

    def __init__(self, path: str, key: str = 'arr_0'):
        if not os.path.isfile(path):
            raise UserError(f'sample file not found: {path}')
        try:
            with np.load(path) as f:
                if key not in f.files:
                    raise UserError(f'{path} has arrays {sorted(f.files)}; expected {key!r} with the images '
                                    f'(N, H, W, C) uint8')
                self.images = f[key]
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f'cannot read {path}: {type(exc).__name__}: {exc}') from None
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[3] not in (1, 3):
            raise UserError(f'{path}: {key} is {self.images.dtype} {self.images.shape}; expected uint8 images '
                            f'(N, H, W, 1 or 3)')

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return torch.from_numpy(np.ascontiguousarray(self.images[index])).permute(2, 0, 1), -1


def sample_files(path: str):
    """A folder of images (each used at its own size, one square size for all) or an .npz of ``arr_0`` samples."""
    if os.path.isdir(path):
        from libs.data.datasets import ImageFolder
        return ImageFolder(path)
    if path.endswith('.npz'):
        return SampleArray(path)
    raise UserError(f'{path} is neither a folder of images nor an .npz file of samples (arr_0)')


def score_sample_files(path: str, ref_stats: str, inception_path: str = '', out: str = '', batch_size: int = 50,
                       is_splits: int = 10, accelerator=None) -> dict:
    """FID against ``ref_stats`` and the Inception Score of the samples at ``path``, split across processes; writes
    ``eval_files_<name>_n<N>_fid.json`` into ``out`` (default: beside the samples). Returns the numbers."""
    from accelerate import Accelerator

    from libs.evaluation.scorers import FidScorer
    accelerator = accelerator or Accelerator()
    samples = sample_files(path)
    if len(samples) < 2:
        raise UserError(f'FID needs at least 2 samples, {path} has {len(samples)}')
    scorer = FidScorer(accelerator.device, ref_stats, inception_path, inception_score=True, is_splits=is_splits)
    loader = accelerator.prepare_data_loader(DataLoader(samples, batch_size=batch_size, shuffle=False))
    features = []
    for images, _ in loader:
        batch = torch.from_numpy(scorer.features(images)).to(accelerator.device)
        features.append(accelerator.gather_for_metrics(batch).cpu())
    result = scorer.result(torch.cat(features), None) if accelerator.is_main_process else {}
    name = os.path.basename(os.path.normpath(path))
    n = len(samples)
    directory = out or os.path.dirname(os.path.abspath(os.path.normpath(path)))
    record = {'mode': 'files', 'samples': os.path.abspath(path), 'n': n,
              'settings': {'metric': 'fid', 'reference_statistics': ref_stats, 'inception': inception_path or
                           'default', 'inception_score_splits': is_splits}, **result}
    write_record(accelerator, directory, result_name('files', os.path.splitext(name)[0], n, ['fid']), record)
    return broadcast_dict(accelerator, result)
