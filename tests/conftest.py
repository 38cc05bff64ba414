"""Shared test set-up: the CPU threads (the CI machine has 2 cores), the repository root on sys.path, and
fixtures that several test modules use."""
import os
import sys
from unittest import mock

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Two intra-op threads on the 2-core CI machine; under pytest-xdist (``-n auto``: a worker per core) one per worker,
# and the subprocesses a worker starts inherit one through OMP_NUM_THREADS.
THREADS = 1 if os.environ.get('PYTEST_XDIST_WORKER') else 2
if THREADS == 1:
    os.environ.setdefault('OMP_NUM_THREADS', '1')
torch.set_num_threads(THREADS)


@pytest.fixture
def one_thread():
    """Small tensors: intra-op threads only add overhead, and a lot of it on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reset_accelerate():
    """accelerate keeps process-wide singletons; each in-process Trainer must start from fresh ones."""
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture
def fresh_accelerate_state():
    reset_accelerate()
    yield
    reset_accelerate()


@pytest.fixture(scope='session')
def random_weights(tmp_path_factory):
    """A seeded, randomly initialised FID Inception saved as a .pth file (He-scaled so features are O(1)).

    The real weights cannot be fetched here; both this suite and pytorch-fid load this file instead.
    """
    import torchvision
    from pytorch_fid import inception as fid_inception

    torch.manual_seed(0)
    with mock.patch.object(fid_inception, 'load_state_dict_from_url', lambda *a, **k: {}), \
            mock.patch.object(torchvision.models.Inception3, 'load_state_dict', lambda self, *a, **k: None):
        net = fid_inception.fid_inception_v3()
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity='relu')
    path = tmp_path_factory.mktemp('inception') / 'random_inception.pth'
    torch.save(net.state_dict(), path)
    return str(path)
