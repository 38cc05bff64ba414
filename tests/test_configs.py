"""Every config file resolves, and the paper's configs build networks with the released parameter counts."""
import glob
import json
import os

import pytest
import torch

from libs.config import load_config_file
from libs.nets import build_nnet, count_parameters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(ROOT, 'tests', 'data', 'uvit_official_state_dicts.json')
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                 if not os.path.basename(p).startswith('_'))  # _name.py: shared recipes, not configs


@pytest.mark.parametrize('path', CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_config_resolves_and_builds(path):
    config = load_config_file(path)
    with torch.device('meta'):
        nnet = build_nnet(config.nnet)
    assert count_parameters(nnet) > 0
    assert config.train.batch_size > 0 and config.sample.sample_steps > 0


@pytest.mark.parametrize('name', ['cifar10_uvit_small', 'celeba64_uvit_small', 'imagenet64_uvit_mid',
                                  'imagenet64_uvit_large', 'imagenet256_uvit_large', 'imagenet256_uvit_huge',
                                  'imagenet512_uvit_large', 'imagenet512_uvit_huge', 'mscoco_uvit_small'])
def test_paper_configs_have_the_released_networks(name):
    with open(REFERENCE) as f:
        released = json.load(f)[name]
    config = load_config_file(os.path.join(ROOT, 'configs', f'{name}.py'))
    with torch.device('meta'):
        nnet = build_nnet(config.nnet)
    assert count_parameters(nnet) == released['n_params']
    assert {k: list(v.shape) for k, v in nnet.state_dict().items()} == released['keys']
    for key, value in released['nnet'].items():
        assert config.nnet[key] == value, key
