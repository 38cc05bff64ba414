"""The GenViT / HybViT training recipe (Yang et al. 2022, arXiv 2208.07791) for the paper's eight datasets, in one
place: ``configs/<data>_genvit.py`` and ``configs/<data>_hybvit.py`` are ``config_getter(<data>, <model>)``.

Shared by all sixteen:
- the network: ``GENVIT_CONFIGS[data]`` (dim 384, depth 9, 12 heads, MLP ratio 2; patch 4 at 32x32, 8 at 64-128,
  14 at 224; 512 / 1024 wide for img128-10 / img224-10);
- DDPM with 1000 steps of the cosine schedule (``schedule=d(name='cosine')``), noise prediction, L_simple;
- batch 128; SGD, learning rate 0.1, momentum 0.9 (the issue's statement of the paper's recipe), weight decay 5e-4
  (an assumption: the weight decay of an SGD run is not given in what we could read; the release's AdamW uses
  0.05); 10 warm-up epochs, then cosine decay to 0 over 500 epochs; gradients clipped to norm 1 and an EMA of
  rate 0.999, as in the release (gevit_main.py). The clipping matters for SGD: with alpha = 100 the L_simple
  gradient is large, and without clipping SGD at lr 0.1 turned a small GenViT's loss into NaN within 300 digits
  steps (measured; with clipping it trained). The release itself trains with AdamW, lr 1e-3, weight decay 0.05
  (its default arguments, and the peak learning rate of its CIFAR-10 log): ``--config.optimizer.name=adamw
  --config.optimizer.lr=0.001 --config.optimizer.weight_decay=0.05`` reproduces that;
- HybViT: loss = cross-entropy on an augmented batch + 100 x L_simple on the clean batch (alpha = 100, the paper's
  default); the classification batch gets random crops (4-pixel padding), flips and RandAugment (N = 2, M = 9).

Epochs: 500 for every dataset, the number in the release's training command (README and scripts/cifar10_train.sh,
``--epochs 500`` for cifar10/cifar100/tinyimg/stl10/celeba/img32). The release's "repeated augmentation 3"
(RASampler(len, 128, 1, 3)) repeats no image within a batch: it makes each epoch 3 passes over the data
(``len_factor=3``; its CIFAR-10 log shows 1171 = 3 x 50,000 / 128 steps per epoch). The steps below follow that
epoch length. DeiT-style repetition inside a batch is ``config.train.repeated_aug=k``, which needs a batch
divisible by k (e.g. ``--config.train.batch_size=384 --config.train.repeated_aug=3``).

Not reproduced: the release's label smoothing, CutMix / MixUp, random erasing, stochastic depth and L1 loss
(its GaussianDiffusion defaults to loss_type='l1'; the paper writes L_simple, which is what the suite trains).
"""
import functools

from libs.config import d, resolve
from libs.nets.genvit import GENVIT_CONFIGS

EPOCHS = 500
WARMUP_EPOCHS = 10
BATCH_SIZE = 128
PASSES_PER_EPOCH = 3           # the release's RASampler len_factor

# data key -> (config.dataset, training images); paths are where assets/README.md tells you to put the files
DATASETS = {
    'cifar10': (dict(name='cifar10', path='assets/datasets/cifar10'), 50_000),
    'cifar100': (dict(name='cifar100', path='assets/datasets/cifar100'), 50_000),
    'stl10': (dict(name='stl10', path='assets/datasets/stl10'), 5_000),                # the labelled train split
    'tinyimg': (dict(name='tinyimagenet', path='assets/datasets/tinyimagenet'), 100_000),
    'img32': (dict(name='imagenet32', path='assets/datasets/ImageNet'), 1_281_167),
    # CelebA (unlabelled, 162,770 training faces): the face crop of the U-ViT release, kept at 128x128
    'celeba128': (dict(name='celeba64', path='assets/datasets/celeba', resolution=128), 162_770),
    # a 10-class ImageNet subset in ImageFolder layout: about 1,300 training images per class
    'img128_10': (dict(name='imagenet_subset', path='assets/datasets/imagenet10', resolution=128), 13_000),
    'img224_10': (dict(name='imagenet_subset', path='assets/datasets/imagenet10', resolution=224), 13_000),
}

# HybViT needs labels; CelebA has none here, so its HybViT reads a labelled folder of 128x128 faces (one subfolder
# per class, 10 classes as in the release's CelebA head). The paper trains only GenViT on CelebA.
LABELLED_CELEBA = dict(name='image_folder', path='assets/datasets/celeba128_labelled', resolution=128,
                       labels_from_subfolders=True)

OBJECTIVES = {
    'genvit': dict(name='diffusion'),
    'hybvit': dict(name='hybrid', alpha=100.0, augment='crop_flip_randaugment'),
}


def steps_per_epoch(data: str) -> int:
    return PASSES_PER_EPOCH * DATASETS[data][1] // BATCH_SIZE


def paper_config(data: str, model: str):
    """The resolved config of ``model`` ('genvit' or 'hybvit') on ``data`` (a key of GENVIT_CONFIGS)."""
    dataset = LABELLED_CELEBA if (data, model) == ('celeba128', 'hybvit') else DATASETS[data][0]
    epoch = steps_per_epoch(data)
    return resolve(d(
        seed=1234,
        pred='noise_pred',
        train=d(n_steps=EPOCHS * epoch, batch_size=BATCH_SIZE, mode='uncond', log_interval=100,
                eval_interval=5 * epoch, save_interval=25 * epoch, grad_clip=1.0, ema_rate=0.999, keep_ckpts=3),
        objective=d(**OBJECTIVES[model]),
        optimizer=d(name='sgd', lr=0.1, momentum=0.9, weight_decay=5e-4),
        lr_scheduler=d(name='cosine', warmup_steps=WARMUP_EPOCHS * epoch),
        nnet=d(name='genvit', **GENVIT_CONFIGS[data]),
        schedule=d(name='cosine'),
        dataset=d(**dataset),
        # the paper samples with the 1000 ancestral DDPM steps; the suite's closest sampler is the SDE's
        # Euler-Maruyama on the same 1000-step grid
        sample=d(sample_steps=1000, n_samples=50000, mini_batch_size=500, algorithm='euler_maruyama_sde', path=''),
    ))


def config_getter(data: str, model: str):
    """``get_config`` for configs/<data>_<model>.py."""
    return functools.partial(paper_config, data, model)
