"""The metrics of samples that come as files, without a model: a folder of images, or an ``.npz`` whose ``arr_0`` holds
uint8 images (N, H, W, C) -- the layout of the ADM / DiT evaluation suite's sample batches -- scored against a
reference (statistics, ADM's reference batch or a folder; libs/metrics/reference.py). What users who compare other
models' samples with the suite's scores run (``scripts/score_samples.py``, also ``scripts/compute_fid.py``)."""
import os

import torch
from torch.utils.data import DataLoader

from libs.data.npz_images import NpzImages
from libs.errors import UserError
from libs.evaluation.harness import broadcast_dict, metric_tag, result_name, write_record


def sample_files(path: str):
    """A folder of images (each used at its own size, one square size for all) or an .npz of ``arr_0`` samples."""
    if os.path.isdir(path):
        from libs.data.datasets import ImageFolder
        return ImageFolder(path)
    if path.endswith('.npz'):
        return NpzImages(path)
    raise UserError(f'{path} is neither a folder of images nor an .npz file of samples (arr_0)')


def score_sample_files(path: str, reference: str, settings=None, out: str = '', check_reference: bool = False,
                       accelerator=None) -> dict:
    """The metrics of ``settings`` (a MetricSettings; default: FID) of the samples at ``path`` against
    ``reference``, the images split across processes; writes ``eval_files_<name>_n<N>_<metrics>.json`` into ``out``
    (default: beside the samples). With ``check_reference`` the statistics stored in a reference batch are also
    compared with those computed from its images (``reference_check`` in the JSON). Returns the numbers."""
    from accelerate import Accelerator

    from libs.evaluation.scorers import FidScorer
    accelerator = accelerator or Accelerator()
    samples = sample_files(path)
    scorer = FidScorer(accelerator.device, reference, settings, len(samples), tuple(samples[0][0].shape[-2:]))
    metric_set = scorer.metric_set
    if check_reference:
        metric_set.require_reference_batch()
    loader = accelerator.prepare_data_loader(DataLoader(samples, batch_size=metric_set.settings.batch_size,
                                                        shuffle=False))
    rows = []
    for images, _ in loader:
        rows.append(accelerator.gather_for_metrics(metric_set.rows(images)).cpu())
    check = metric_set.check_reference() if check_reference and accelerator.is_main_process else None
    result = scorer.result(torch.cat(rows), None) if accelerator.is_main_process else {}
    n = len(samples)
    name = os.path.basename(os.path.normpath(path))
    directory = out or os.path.dirname(os.path.abspath(os.path.normpath(path)))
    record = {'mode': 'files', 'samples': os.path.abspath(path), 'n': n,
              'settings': {'metric': 'fid', **scorer.record()},
              **result}
    if check is not None:
        record['reference_check'] = check
    write_record(accelerator, directory, result_name('files', os.path.splitext(name)[0], n,
                                                     [metric_tag('fid', record['settings'])]), record)
    if check is not None:
        result = {**result, **{f'reference_check_{column}_fd': entry['frechet_distance']
                               for column, entry in check.items()}}
    return broadcast_dict(accelerator, result)
