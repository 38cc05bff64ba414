"""FID computed in-process, with the standard FID Inception weights read from a local file, and the spatial features
of ADM's sFID from the same pass.

The feature extractor is pytorch-fid's ``InceptionV3``; images reach it exactly as pytorch-fid's file path feeds
them (uint8 pixels / 255), and float samples in ``[-1, 1]`` are first rounded to pixels with
``libs.images.to_uint8``, so FID of in-memory samples equals FID of the PNG files written from them.
Reference statistics are ``.npz`` files with keys ``mu`` and ``sigma`` (the format of the U-ViT release's
``assets/fid_stats``); ``scripts/compute_fid_stats.py`` creates them.

**sFID's layer.** ADM's evaluator (guided-diffusion, ``evaluations/evaluator.py``) reads the tensor
``mixed_6/conv:0`` of the 2015 TF Inception graph, keeps its first 7 channels and flattens them: 17 x 17 x 7 = 2023
values per image. In pytorch-fid's port of that graph this is ``Mixed_6d.branch1x1`` (``SPATIAL_MODULE``):

- the graph names its eleven mixed blocks ``mixed``, ``mixed_1``, ..., ``mixed_10``: three at 35 x 35 (torchvision's
  ``Mixed_5b``, ``5c``, ``5d``), the reduction to 17 x 17 (``mixed_3`` = ``Mixed_6a``), four at 17 x 17
  (``mixed_4`` ... ``mixed_7`` = ``Mixed_6b`` ... ``Mixed_6e``), the reduction to 8 x 8 (``mixed_8`` = ``Mixed_7a``)
  and two at 8 x 8 (``Mixed_7b``, ``Mixed_7c``). ``mixed_6`` is the third 17 x 17 block, ``Mixed_6d``, not
  ``Mixed_6e`` (``mixed_N`` is the (N+1)-th block, since the first one has no number);
- inside a block, ``conv`` is the 1 x 1 branch (the other branches are ``tower``, ``tower_1``, ``tower_2``), and the
  weight conversion of the 2015 graph to PyTorch maps ``mixed_6/conv/conv2d_params`` and ``mixed_6/conv/batchnorm``
  to ``Mixed_6d.branch1x1.conv`` and ``.bn``: 192 output channels, 17 x 17 for the 299 x 299 input;
- the tensor ``mixed_6/conv:0`` is the layer's output after batch norm and ReLU, which is what torchvision's
  ``BasicConv2d`` returns.

ADM slices the NHWC tensor (``[..., :7]``) and flattens it in (row, column, channel) order; ``spatial_features`` does
the same, so that ``mu_s`` computed here can be compared entry by entry with the one stored in ADM's reference
batches (the Frechet distance itself does not depend on the order). ``scripts/score_samples.py
--check_reference`` recomputes ``mu``/``sigma`` and ``mu_s``/``sigma_s`` of a reference batch from its images and
reports how far they are from the stored ones: with the real weights this confirms the layer (a wrong layer gives
unrelated features). The agreement is close, not exact: pytorch-fid resizes with ``F.interpolate`` and maps pixels
to [-1, 1] as ``2 x / 255 - 1``, where the TF graph resizes with TF 1's bilinear kernel and uses ``(x - 128) / 128``.
"""
import contextlib
import os
from unittest import mock

import numpy as np
import torch

from libs.errors import UserError
from libs.fileio import atomic_open
from libs.images import to_uint8

WEIGHTS_FILENAME = 'pt_inception-2015-12-05-6726825d.pth'
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _default_weight_paths() -> list:
    return [os.path.join(REPO_ROOT, 'assets', 'fid_inception', WEIGHTS_FILENAME),
            os.path.join(torch.hub.get_dir(), 'checkpoints', WEIGHTS_FILENAME)]


def find_inception_weights(path: str = None) -> str:
    """The FID Inception weights file: ``path`` if given, else ``assets/fid_inception/`` then torch hub's cache."""
    if path:
        if not os.path.isfile(path):
            raise UserError(f'FID Inception weights not found: {path}')
        return path
    candidates = _default_weight_paths()
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise UserError(f'FID Inception weights not found: put {WEIGHTS_FILENAME} in {os.path.dirname(candidates[0])}/ '
                    f'(or {os.path.dirname(candidates[1])}/)')


def _read_state_dict(path: str) -> dict:
    try:
        state_dict = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise UserError(f'cannot read FID Inception weights {path}: {type(e).__name__}') from None
    if not isinstance(state_dict, dict):
        raise UserError(f'FID Inception weights {path} hold a {type(state_dict).__name__}, not a state dict')
    return state_dict


def _first_mismatch(expected: dict, given: dict):
    """Describe the first key where ``given`` does not fit ``expected`` (name -> tensor), or None."""
    for key, value in expected.items():
        if key not in given:
            return f'missing key {key!r}'
        if not torch.is_tensor(given[key]) or tuple(given[key].shape) != tuple(value.shape):
            shape = tuple(given[key].shape) if torch.is_tensor(given[key]) else type(given[key]).__name__
            return f'key {key!r} has shape {shape}, expected {tuple(value.shape)}'
    for key in given:
        if key not in expected:
            return f'unexpected key {key!r}'
    return None


@contextlib.contextmanager
def _local_fid_weights(state_dict: dict, path: str):
    """While active, pytorch-fid's ``fid_inception_v3()`` loads ``state_dict`` instead of downloading.

    The replacement loader checks the keys against the network being built, so a wrong file fails with the
    name of the first bad key rather than torch's multi-line report.
    """
    from pytorch_fid import inception as fid_inception

    built = []
    build_torchvision_inception = fid_inception._inception_v3

    def recording_build(*args, **kwargs):
        net = build_torchvision_inception(*args, **kwargs)
        built.append(net)
        return net

    def local_loader(url, *args, **kwargs):
        problem = _first_mismatch(built[-1].state_dict(), state_dict)
        if problem is not None:
            raise UserError(f'{path} is not the FID Inception weights file: {problem}')
        return state_dict

    with mock.patch.object(fid_inception, '_inception_v3', recording_build), \
            mock.patch.object(fid_inception, 'load_state_dict_from_url', local_loader):
        yield


def load_inception(path: str = None, dims: int = 2048, device='cpu') -> torch.nn.Module:
    """pytorch-fid's FID ``InceptionV3`` returning the ``dims``-wide block, weights from a local file, eval mode."""
    from pytorch_fid.inception import InceptionV3

    if dims not in InceptionV3.BLOCK_INDEX_BY_DIM:
        raise UserError(f'unknown Inception feature size {dims}; known: {sorted(InceptionV3.BLOCK_INDEX_BY_DIM)}')
    path = find_inception_weights(path)
    state_dict = _read_state_dict(path)
    with _local_fid_weights(state_dict, path):
        model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[dims]], resize_input=True, normalize_input=True,
                            use_fid_inception=True)
    return model.eval().to(device)


def load_logit_weights(path: str = None) -> torch.Tensor:
    """The weight ``(1008, 2048)`` of the final layer ``fc`` kept in the FID Inception weights file (float64).

    pytorch-fid's network stops at the 2048-wide pool features; the file still holds the 2015 graph's 1008-way
    classifier, so class logits of an image are its FID features times this weight (the Inception Score's input).
    """
    path = find_inception_weights(path)
    weight = _read_state_dict(path).get('fc.weight')
    if not torch.is_tensor(weight) or tuple(weight.shape) != (1008, 2048):
        found = tuple(weight.shape) if torch.is_tensor(weight) else 'none'
        raise UserError(f'{path} is not the FID Inception weights file: fc.weight has shape {found}, '
                        'expected (1008, 2048)')
    return weight.double()


SPATIAL_MODULE = 'Mixed_6d.branch1x1'   # TF's mixed_6/conv (see the module docstring)
SPATIAL_CHANNELS = 7                     # ADM keeps the first 7 of its 192 channels
SPATIAL_FEATURES = 17 * 17 * SPATIAL_CHANNELS   # 2023 values for the 299 x 299 input
MIXED_6D_INDEX = 6   # pytorch-fid's blocks[2] holds Mixed_5b, 5c, 5d, 6a, 6b, 6c, 6d, 6e in this order


def spatial_module(model: torch.nn.Module) -> torch.nn.Module:
    """``Mixed_6d.branch1x1`` inside pytorch-fid's ``InceptionV3`` (which must run up to block 2 or beyond)."""
    from pytorch_fid.inception import FIDInceptionC
    block = model.blocks[2][MIXED_6D_INDEX] if len(model.blocks) > 2 else None
    if not isinstance(block, FIDInceptionC) or block.branch7x7_1.conv.out_channels != 160:
        raise ValueError('not pytorch-fid\'s FID InceptionV3 with Mixed_6d at blocks[2][6] (load it with dims=2048)')
    return block.branch1x1


def spatial_features(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H * W * 7): the first 7 channels, flattened in (row, column, channel) order as ADM
    flattens the NHWC tensor of TF."""
    return feature_map[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(feature_map.shape[0], -1)


class InceptionFeatures:
    """Images -> Inception activations ``(B, dims)`` float64, as pytorch-fid computes them from image files.

    ``images``: uint8 ``(B, C, H, W)`` in ``[0, 255]`` or float ``(B, C, H, W)`` in ``[-1, 1]`` (rounded to
    pixels with ``to_uint8``); torch tensors or numpy arrays; ``C`` is 1 (repeated to 3) or 3. ``outputs`` gives
    the pool features and sFID's spatial features of one pass.
    """

    def __init__(self, model: torch.nn.Module, batch_size: int = 50):
        self.model = model.eval()
        self.batch_size = batch_size
        self.device = next(model.parameters()).device

    @classmethod
    def from_file(cls, path: str = None, dims: int = 2048, device='cpu', batch_size: int = 50):
        return cls(load_inception(path, dims, device), batch_size)

    def __call__(self, images) -> np.ndarray:
        return self.outputs(images)['pool'].cpu().double().numpy()

    @torch.no_grad()
    def outputs(self, images, spatial: bool = False) -> dict:
        """{'pool': (B, dims)} and with ``spatial`` {'spatial': (B, 2023)}: float32 tensors on the network's
        device, from one pass (the spatial features are taken from ``Mixed_6d.branch1x1`` on the way)."""
        images = torch.as_tensor(images)
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f'expected images (B, 1 or 3, H, W), got shape {tuple(images.shape)}')
        if images.shape[0] == 0:
            raise ValueError('no images given')
        if images.dtype != torch.uint8:
            images = to_uint8(images)
        taken = []
        hook = spatial_module(self.model).register_forward_hook(
            lambda module, inputs, output: taken.append(spatial_features(output))) if spatial else None
        pool = []
        try:
            for batch in images.split(self.batch_size):
                x = batch.to(self.device).float() / 255
                if x.shape[1] == 1:
                    x = x.repeat(1, 3, 1, 1)
                act = self.model(x)[0]
                if act.shape[2:] != (1, 1):
                    act = torch.nn.functional.adaptive_avg_pool2d(act, (1, 1))
                pool.append(act.flatten(1).float())
        finally:
            if hook is not None:
                hook.remove()
        out = {'pool': torch.cat(pool)}
        if spatial:
            out['spatial'] = torch.cat(taken).float()
        return out


def activation_statistics(acts: np.ndarray):
    """Activations ``(N, D)`` -> mean ``(D,)`` and covariance ``(D, D)``, float64, as pytorch-fid computes them."""
    acts = np.asarray(acts, dtype=np.float64)
    if acts.ndim != 2 or acts.shape[0] < 2:
        raise UserError(f'FID statistics need at least 2 images, got activations of shape {acts.shape}')
    return np.mean(acts, axis=0), np.cov(acts, rowvar=False)


def _significant(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric PSD matrix with those within rounding error of zero set to zero: their square
    roots (about 1e-8 of the largest each) would otherwise add up over thousands of null directions."""
    largest = float(np.abs(eigenvalues).max(initial=0.0))
    return np.where(eigenvalues > largest * len(eigenvalues) * np.finfo(np.float64).eps, eigenvalues, 0.0)


def _checked_gaussian(mu, sigma, dim: int) -> tuple:
    """``mu`` (dim,) and ``sigma`` (dim, dim) as float64; UserError when their size is not ``dim``, ValueError when
    they are not finite."""
    mu, sigma = np.atleast_1d(np.asarray(mu, np.float64)), np.atleast_2d(np.asarray(sigma, np.float64))
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise UserError(f'FID statistics of different sizes: {dim} vs {mu.shape[0]} features '
                        '(were they computed with the same Inception block?)')
    _check_finite(mu, sigma)
    return mu, sigma


def _check_finite(*arrays) -> None:
    if not all(np.isfinite(x).all() for x in arrays):
        raise ValueError('FID statistics hold NaN or infinite values')


def _trace_sqrt(psd: np.ndarray) -> float:
    """tr(M^(1/2)) of a symmetric PSD matrix M (symmetrised against rounding first)."""
    return float(np.sqrt(_significant(np.linalg.eigvalsh((psd + psd.T) / 2))).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): |mu1 - mu2|^2 + tr(sigma1 + sigma2) -
    2 tr (sigma1 sigma2)^(1/2).

    pytorch-fid takes the trace term from scipy's ``sqrtm`` of the (non-symmetric) product. Here it is the sum of
    the square roots of the eigenvalues of the symmetric ``sigma1^(1/2) sigma2 sigma1^(1/2)``, which has the same
    eigenvalues: two symmetric eigendecompositions, several times faster at 2048 features, and exact for the
    singular covariances of fewer samples than features, where ``sqrtm`` needs pytorch-fid's epsilon fix-up and
    can raise 'Imaginary component'. On non-singular statistics the two agree to 1e-6 (tests/test_fid.py).
    """
    mu1, sigma1 = _checked_gaussian(mu1, sigma1, np.atleast_1d(np.asarray(mu1)).shape[0])
    mu2, sigma2 = _checked_gaussian(mu2, sigma2, mu1.shape[0])
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (v * np.sqrt(_significant(w))) @ v.T
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * _trace_sqrt(root1 @ sigma2 @ root1))


def frechet_distance_of_activations(acts: np.ndarray, mu2, sigma2) -> float:
    """``frechet_distance`` between the Gaussian fitted to activations ``(N, D)`` and N(mu2, sigma2).

    With no more samples than features (a training-time score of 1000 samples against 2048 features) the sample
    covariance is ``a^T a`` for the centred, scaled activations ``a`` (N, D), and ``sigma1^(1/2) sigma2 sigma1^(1/2)``
    has the nonzero eigenvalues of the N x N matrix ``a sigma2 a^T``: one small eigendecomposition instead of two of
    D x D, and no D x D covariance of the samples, for the same number."""
    acts = np.asarray(acts, dtype=np.float64)
    if acts.ndim != 2 or not 2 <= acts.shape[0] <= acts.shape[1]:  # bad shapes fail in activation_statistics
        return frechet_distance(*activation_statistics(acts), mu2, sigma2)
    _check_finite(acts)
    mu2, sigma2 = _checked_gaussian(mu2, sigma2, acts.shape[1])
    mu1 = acts.mean(axis=0)
    a = (acts - mu1) / np.sqrt(acts.shape[0] - 1)
    diff = mu1 - mu2
    return float(diff @ diff + np.sum(a * a) + np.trace(sigma2) - 2.0 * _trace_sqrt(a @ sigma2 @ a.T))


def spatial_fid(spatial, mu_s, sigma_s) -> float:
    """ADM's sFID: the Frechet distance between the Gaussian fitted to spatial features ``(N, 2023)``
    (``InceptionFeatures.outputs(..., spatial=True)['spatial']``, numpy or torch) and the reference's
    ``mu_s`` (2023,), ``sigma_s`` (2023, 2023)."""
    spatial = spatial.double().cpu().numpy() if torch.is_tensor(spatial) else np.asarray(spatial, np.float64)
    return frechet_distance_of_activations(spatial, mu_s, sigma_s)


def save_stats(path: str, mu: np.ndarray, sigma: np.ndarray, **more) -> None:
    """Write ``mu``/``sigma`` (and ``more`` statistics: sFID's ``mu_s``/``sigma_s``) as an ``.npz`` file (written
    to a temporary file, then renamed into place)."""
    arrays = {'mu': mu, 'sigma': sigma, **more}
    with atomic_open(path) as f:
        np.savez(f, **{key: np.asarray(value, dtype=np.float64) for key, value in arrays.items()})


def load_stats(path: str):
    """Read ``(mu, sigma)`` from an ``.npz`` file with keys ``mu`` and ``sigma``."""
    from libs.metrics.reference import missing_reference_message
    if not path or not os.path.isfile(path):
        raise UserError(missing_reference_message(path))
    try:
        with np.load(path) as f:
            keys = sorted(f.files)
            if 'mu' not in keys or 'sigma' not in keys:
                raise UserError(f'FID statistics {path} have keys {keys}; expected mu and sigma')
            mu, sigma = f['mu'].astype(np.float64), f['sigma'].astype(np.float64)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f'cannot read FID statistics {path}: {type(e).__name__}: {e}') from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise UserError(f'FID statistics {path} have mu {mu.shape} and sigma {sigma.shape}; '
                        'expected (D,) and (D, D)')
    return mu, sigma


def fid_from_activations(acts: np.ndarray, ref_stats_path: str) -> float:
    """FID of samples given their Inception activations ``(N, D)``, against reference statistics on disk."""
    return frechet_distance_of_activations(acts, *load_stats(ref_stats_path))


def dataset_statistics(dataset, features: InceptionFeatures, accelerator=None, batch_size: int = 50,
                       num_workers: int = 0, progress: bool = True, spatial: bool = False):
    """Inception ``(mu, sigma)`` of every image of ``dataset``, split across ``accelerator``'s processes; with
    ``spatial``, ``(mu, sigma, mu_s, sigma_s)``, sFID's statistics of the spatial features from the same pass.

    Items are images or ``(image, label)`` pairs; images are uint8 or float in ``[-1, 1]``, ``(C, H, W)``.
    Activations are gathered on every process (``gather_for_metrics`` drops the padding of the last batch), so
    all processes return the same statistics.
    """
    from tqdm import tqdm

    if len(dataset) < 2:
        raise UserError(f'FID statistics need at least 2 images, the dataset has {len(dataset)}')
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False,
                                         num_workers=num_workers)
    is_main = True
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
        is_main = accelerator.is_main_process
    columns = ('pool', 'spatial') if spatial else ('pool',)
    acts = {column: [] for column in columns}
    for batch in tqdm(loader, desc='inception features', disable=not (progress and is_main)):
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        outputs = features.outputs(images, spatial)
        for column in columns:
            act = outputs[column].double()
            if accelerator is not None:
                act = accelerator.gather_for_metrics(act.to(accelerator.device))
            acts[column].append(act.cpu().numpy())
    return tuple(part for column in columns for part in activation_statistics(np.concatenate(acts[column])))
