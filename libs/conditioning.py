"""What the network is conditioned on: nothing, a class label, or a text context.

One small object per kind answers the four questions the training loop and the samplers ask:
- ``training_condition(y, p_uncond)``: the network's keyword arguments for a training batch whose dataset targets
  are ``y``, with the condition dropped at rate ``p_uncond`` (classifier-free guidance training);
- ``draw(n, device)``: conditions for ``n`` evaluation samples, and the labels a score checks them against (or None);
- ``grid(n, device)``: conditions for a sample grid (classes in rows; the test prompts);
- ``null(cond)``: the "no condition" counterpart of ``cond`` for guidance (the extra label, the empty text).
Conditions are dicts of keyword arguments for ``Denoiser.noise`` (``{'y': labels}``, ``{'context': contexts}``).
"""
import torch

from libs.errors import UserError


class Unconditional:
    takes_condition = False

    def training_condition(self, y, p_uncond: float) -> dict:
        return {}

    def draw(self, n: int, device):
        return {}, None

    def grid(self, n: int, device) -> dict:
        return {}

    def null(self, cond: dict) -> dict:
        raise UserError('classifier-free guidance (config.sample.scale > 0) needs a conditional model')


class ClassLabels:
    """Labels 0..num_classes-1; ``null_label`` is the extra "no class" label of a model trained with label dropout
    (1000 for ImageNet's 1001-way embedding), None when the model has none."""

    takes_condition = True

    def __init__(self, num_classes: int, null_label=None):
        self.num_classes = num_classes
        self.null_label = null_label

    def training_condition(self, y, p_uncond: float) -> dict:
        if p_uncond > 0:
            drop = torch.rand(y.shape[0], device=y.device) < p_uncond
            y = torch.where(drop, torch.full_like(y, self.null_label), y)
        return {'y': y}

    def draw(self, n: int, device):
        labels = torch.randint(0, self.num_classes, (n,), device=device)
        return {'y': labels}, labels

    def grid(self, n: int, device) -> dict:
        per_row = max(1, n // max(1, int(round(n ** 0.5))))
        return {'y': (torch.arange(n, device=device) // per_row) % self.num_classes}

    def null(self, cond: dict) -> dict:
        if self.null_label is None:
            raise UserError('classifier-free guidance (config.sample.scale > 0) needs a model trained with a '
                            '"no class" label (nnet.num_classes = dataset classes + 1)')
        return {'y': torch.full_like(cond['y'], self.null_label)}


class TextContexts:
    """CLIP contexts (B, 77, D). ``empty``: the empty prompt's context (the "no text" condition); ``prompt_source``:
    a dataset whose items are (anything, context) to draw evaluation prompts from (MS-COCO validation captions), or a
    function returning one; ``grid_contexts``: (n, 77, D) contexts of the prompts shown in sample grids, or None."""

    takes_condition = True

    def __init__(self, empty: torch.Tensor, prompt_source=None, grid_contexts: torch.Tensor = None):
        self.empty = empty.float()
        self._prompt_source = prompt_source
        self.grid_contexts = grid_contexts

    @property
    def prompt_source(self):
        if callable(self._prompt_source):
            self._prompt_source = self._prompt_source()
        if self._prompt_source is None:
            raise UserError('sampling a text-to-image model for evaluation needs prompts: no validation captions '
                            'were given (extract them with scripts/extract_mscoco_feature.py --split val)')
        return self._prompt_source

    def training_condition(self, context, p_uncond: float) -> dict:
        context = context.float()
        if p_uncond > 0:
            drop = torch.rand(context.shape[0], device=context.device) < p_uncond
            context = torch.where(drop[:, None, None], self.empty.to(context.device).expand_as(context), context)
        return {'context': context}

    def draw(self, n: int, device):
        source = self.prompt_source
        index = torch.randint(0, len(source), (n,))
        contexts = torch.stack([torch.as_tensor(source[int(i)][1]) for i in index])
        return {'context': contexts.float().to(device)}, None

    def grid(self, n: int, device) -> dict:
        if self.grid_contexts is None or len(self.grid_contexts) == 0:
            return self.draw(n, device)[0]
        repeats = -(-n // len(self.grid_contexts))
        return {'context': self.grid_contexts.float().repeat(repeats, 1, 1)[:n].to(device)}

    def null(self, cond: dict) -> dict:
        context = cond['context']
        return {'context': self.empty.to(context.device, context.dtype).expand_as(context)}


def null_label(num_classes_model: int, num_classes_data: int):
    """The "no class" label of a model trained with label dropout (ImageNet latent: 1000 of 1001), or None."""
    return num_classes_data if num_classes_model == num_classes_data + 1 else None


def build_conditioning(config, dataset, with_prompts: bool = True):
    """From ``config.train.mode``: 'uncond', 'cond' (class labels) or 'text' (contexts of a text-feature dataset).

    For 'text', evaluation prompts come from the dataset's 'val' split (loaded when first needed) and grid prompts
    from its test prompts when extracted. Checks that the network and the dataset fit the mode.
    """
    mode = config.train.mode
    if mode == 'uncond':
        return Unconditional()
    if mode == 'cond':
        num_classes_model = config.nnet.get('num_classes', -1)
        if dataset.num_classes <= 0:
            raise UserError(f"config.train.mode='cond' but dataset {config.dataset.name!r} has no labels")
        if num_classes_model < dataset.num_classes:
            raise UserError(f'config.nnet.num_classes={num_classes_model} is smaller than the '
                            f'{dataset.num_classes} classes of the dataset')
        return ClassLabels(dataset.num_classes, null_label(num_classes_model, dataset.num_classes))
    if mode == 'text':
        if not hasattr(dataset, 'empty_context'):
            raise UserError(f"config.train.mode='text' needs a dataset of text features (mscoco_features), "
                            f"not {config.dataset.name!r}")
        grid = None
        if with_prompts:
            try:
                grid = dataset.test_prompts()[1]
            except UserError:
                grid = None  # grids then show validation captions

        def validation_captions():
            from libs.data import build_dataset
            return build_dataset(config.dataset, split='val')
        return TextContexts(dataset.empty_context(), validation_captions if with_prompts else None, grid)
    raise UserError(f"config.train.mode must be 'uncond', 'cond' or 'text', got {mode!r}")
