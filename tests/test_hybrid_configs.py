"""The sixteen GenViT / HybViT paper configs: they resolve, build the paper's networks, follow the recipe, and their
missing datasets are one clear line."""
import os

import pytest
import torch

from configs import _hybrid_recipe as recipe
from libs.config import load_config_file
from libs.data import build_dataset
from libs.errors import UserError
from libs.diffusion import build_framework
from libs.diffusion.gaussian import GaussianFramework
from libs.nets import build_nnet, count_parameters
from libs.training.objectives import build_objective
from libs.training.optim import build_lr_scheduler, build_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# README of sndnyang/Diffusion_ViT ("params(Million)"): whole millions, so a tolerance of 0.5M, except img32: its
# 1000-way head has (1000 - 10) (embed_dim + 1) = 0.38M more parameters than CIFAR-10's 10-way one (11.57M in all),
# which the README still calls 11M.
PAPER_MILLIONS = {'cifar10': 11, 'cifar100': 11, 'stl10': 13, 'tinyimg': 11, 'celeba128': 17, 'img32': 11,
                  'img128_10': 26, 'img224_10': 84}


def paper_tolerance(data, nnet_config):
    extra_head = (nnet_config.num_classes - 10) * (nnet_config.embed_dim + 1) if data == 'img32' else 0
    return 0.5e6 + extra_head
CONFIGS = [(data, model) for data in PAPER_MILLIONS for model in ('genvit', 'hybvit')]


def load(data, model):
    return load_config_file(os.path.join(ROOT, 'configs', f'{data}_{model}.py'))


def test_there_is_one_config_file_per_dataset_and_model():
    files = {f for f in os.listdir(os.path.join(ROOT, 'configs')) if f.endswith(('_genvit.py', '_hybvit.py'))
             and not f.startswith('digits')}
    assert files == {f'{data}_{model}.py' for data, model in CONFIGS}
    assert set(recipe.DATASETS) == set(PAPER_MILLIONS)


@pytest.mark.parametrize('data,model', CONFIGS)
def test_each_config_builds_the_paper_network_and_resolves(data, model):
    config = load(data, model)
    with torch.device('meta'):
        nnet = build_nnet(config.nnet)
    n = count_parameters(nnet)
    assert abs(n - PAPER_MILLIONS[data] * 1e6) < paper_tolerance(data, config.nnet), \
        f'{data}: {n / 1e6:.2f}M vs {PAPER_MILLIONS[data]}M'
    # the framework, objective, optimiser and schedule it names exist and accept its values
    framework = build_framework(config)
    assert isinstance(framework, GaussianFramework) and framework.prediction == 'noise'
    framework.check_backbone(nnet)
    objective = build_objective(config.objective, framework)
    module = objective.training_module(nnet)
    assert objective.backbone(module) is nnet
    params = [torch.nn.Parameter(torch.zeros(2))]
    scheduler = build_lr_scheduler(config.lr_scheduler, build_optimizer(config.optimizer, params),
                                   config.train.n_steps)
    assert scheduler.get_last_lr() == [0.0]                            # warm-up starts at zero


@pytest.mark.parametrize('data,model', CONFIGS)
def test_each_config_follows_the_recipe(data, model):
    config = load(data, model)
    images = recipe.DATASETS[data][1]
    epoch = 3 * images // 128                                          # the release's epoch: 3 passes
    assert config.train.n_steps == 500 * epoch and config.lr_scheduler.warmup_steps == 10 * epoch
    assert (config.train.batch_size, config.train.grad_clip, config.train.ema_rate) == (128, 1.0, 0.999)
    assert config.optimizer.name == 'sgd' and config.optimizer.lr == 0.1 and config.optimizer.momentum == 0.9
    assert config.lr_scheduler.name == 'cosine' and config.schedule.name == 'cosine'
    assert config.pred == 'noise_pred' and config.train.mode == 'uncond'
    assert build_framework(config).schedule.num_steps == 1000
    if model == 'hybvit':
        assert (config.objective.name, config.objective.alpha) == ('hybrid', 100.0)
        assert config.objective.augment == 'crop_flip_randaugment'
    else:
        assert config.objective.name == 'diffusion'


def test_cifar10_steps_match_the_release_log():
    # the release's CIFAR-10 HybViT log: "[Epoch 2/500][1000:1171]", lr at its peak from epoch 11
    assert recipe.steps_per_epoch('cifar10') == 1171
    config = load('cifar10', 'hybvit')
    assert config.lr_scheduler.warmup_steps == 11710 and config.train.n_steps == 585500


@pytest.mark.parametrize('data,model', CONFIGS)
def test_a_missing_dataset_is_one_line_naming_where_to_put_it(data, model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                                        # no assets/ here
    config = load(data, model)
    with pytest.raises(UserError) as info:
        build_dataset(config.dataset, 'train')
    message = str(info.value)
    assert '\n' not in message and config.dataset.path in message, message


def test_hybvit_configs_read_labelled_data_with_as_many_classes_as_the_head():
    classes = {'cifar10': 10, 'cifar100': 100, 'stl10': 10, 'tinyimg': 200, 'img32': 1000}
    for data, n in classes.items():
        assert load(data, 'hybvit').nnet.num_classes == n
    celeba = load('celeba128', 'hybvit').dataset
    assert celeba.name == 'image_folder' and celeba.labels_from_subfolders
    assert load('celeba128', 'genvit').dataset.name == 'celeba64'       # GenViT needs no labels


def test_the_imagenet_subset_reads_class_folders_at_the_config_resolution(tmp_path):
    from PIL import Image
    wnids = ['n01440764', 'n01443537', 'n01484850']
    for split, per_class in (('train', 2), ('val', 1)):
        for c, wnid in enumerate(wnids):
            os.makedirs(tmp_path / split / wnid)
            for i in range(per_class):
                Image.new('RGB', (160 + 10 * i, 140), (40 * c, 100, 200)).save(tmp_path / split / wnid / f'{i}.JPEG')
    config = load('img128_10', 'hybvit')
    config.dataset.path = str(tmp_path)
    train, test = build_dataset(config.dataset, 'train'), build_dataset(config.dataset, 'test')
    assert (len(train), len(test), train.num_classes) == (6, 3, 3)
    assert sorted(set(train.labels.tolist())) == [0, 1, 2] and test.labels.tolist() == [0, 1, 2]
    image, label = train[2]
    assert image.shape == (3, 128, 128) and label == 1
    assert abs(image[0].mean().item() - (40 / 127.5 - 1)) < 0.02       # the class-1 colour, JPEG-rounded
    assert train.default_fid_stats is None                              # not ImageNet's statistics
