"""Training objectives: what the Trainer optimises, and which module accelerate wraps for it.

An objective is built from ``config.objective`` and gives
- ``training_module(nnet)``: the module to prepare (DDP-wrap); every loss term must come from ONE forward call
  of it, because DDP's gradient bookkeeping breaks when one module runs forward twice before a backward;
- ``backbone(module)``: the network inside that module (what EMA tracks and checkpoints store);
- ``__call__(module, x, cond, labels, images=None) -> (loss, metrics)``: the scalar loss (fp32) and detached
  metrics; ``images`` are the batch's clean images (B, C, H, W) in [-1, 1], given only to an objective that
  ``needs_images`` (REPA's encoder sees them; in latent space they come from the feature store's source images);
- ``files`` and ``state_files(module) -> {name: state dict}`` / ``load_state_files(module, contents, ckpt)``: what the
  objective keeps in each checkpoint besides the backbone (REPA's ``repa_projector.pth``; none here).

REPA (libs/training/repa.py, ``config.repa``) wraps either objective.

``diffusion``: the framework's loss alone (L_simple for the Gaussian framework: U-ViT, GenViT). ``hybrid``: HybViT (Yang
et al. 2022), cross-entropy of the classifier on an augmented copy of the batch plus ``alpha`` times L_simple on the
clean batch; any backbone with a classification head (``classifies``: GenViT, or U-ViT with ``clf_classes > 0``), so
backbone and objective are independent choices. Its L_simple term draws t and the noise exactly as ``diffusion`` does,
so with the same RNG state the two objectives see the same noisy batch.
"""
import torch.nn as nn
import torch.nn.functional as F

from libs.data.augment import build_augment
from libs.errors import UserError
from libs.nets.protocol import backbone_classifies


class Diffusion:
    """The framework's training loss on the batch."""

    needs_images = False
    files = ()

    def __init__(self, cfg, framework):
        self.framework = framework

    def training_module(self, nnet):
        return nnet

    def backbone(self, module):
        return module

    def __call__(self, module, x, cond, labels, images=None):
        return self.framework.loss(module, x, cond).mean(), {}

    def state_files(self, module) -> dict:
        return {}

    def load_state_files(self, module, contents: dict, ckpt: str) -> None:
        pass


class HybridModule(nn.Module):
    """One forward pass for both tasks: (noisy x, model time, augmented clean x) -> (prediction, class logits)."""

    def __init__(self, nnet):
        super().__init__()
        self.nnet = nnet

    def forward(self, x_t, model_time, x_cls, **cond):
        return self.nnet(x_t, model_time, **cond), self.nnet.classify(x_cls)


class Hybrid(Diffusion):
    """cross-entropy(classify(augment(x)), y) + alpha * L_simple(x); needs a backbone with ``classify``."""

    def __init__(self, cfg, framework):
        super().__init__(cfg, framework)
        self.alpha = float(cfg.get('alpha', 100.0))
        self.augment = build_augment(cfg.get('augment', 'none'))

    def training_module(self, nnet):
        if not backbone_classifies(nnet):
            raise UserError(f"config.objective.name='hybrid' needs a network with a classification head; "
                            f"{type(nnet).__name__} has none (use nnet.name='genvit', or nnet.name='uvit' with "
                            f"nnet.clf_classes > 0)")
        return HybridModule(nnet)

    def backbone(self, module):
        return module.nnet

    def __call__(self, module, x, cond, labels, images=None):
        if (labels < 0).any():
            raise UserError("config.objective.name='hybrid' needs labelled data; the dataset has unlabelled images")
        t, noise, x_t = self.framework.corrupt(x)   # drawn first, as the framework's loss draws them
        out, logits = module(self.framework.network_input(x_t, t), self.framework.model_time(t), self.augment(x),
                             **cond)
        if labels.max() >= logits.shape[1]:
            raise UserError(f'the dataset has a label {int(labels.max())} but the classification head has '
                            f'{logits.shape[1]} classes: set config.nnet.num_classes (genvit) or '
                            f'config.nnet.clf_classes (uvit) to the number of classes')
        mse = self.framework.loss_of_output(out, x, noise, x_t, t).mean()
        ce = F.cross_entropy(logits.float(), labels)
        accuracy = (logits.argmax(1) == labels).float().mean()
        return ce + self.alpha * mse, {'ce': ce.detach(), 'mse': mse.detach(), 'train_accuracy': accuracy}


OBJECTIVES = {
    'diffusion': Diffusion,
    'hybrid': Hybrid,
}


def build_objective(cfg, framework):
    name = cfg.get('name', 'diffusion')
    if name not in OBJECTIVES:
        raise UserError(f"unknown config.objective.name {name!r}; known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name](cfg, framework)
