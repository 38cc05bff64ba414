"""What the network is conditioned on: nothing, a class label, or a text context.

One small object per kind answers the four questions the training loop and the samplers ask:
- ``training_condition(y, p_uncond)``: the network's keyword arguments for a training batch whose dataset targets
  are ``y``, with the condition dropped at rate ``p_uncond`` (classifier-free guidance training);
- ``draw(random)``: conditions for a batch of evaluation samples, drawn from each sample's own generator
  (``random``: a libs.rng.SampleRandom), and the labels a score checks them against (or None);
- ``grid(random)``: conditions for a sample grid of ``len(random)`` samples (classes in rows; the test prompts);
- ``null(cond)``: the "no condition" counterpart of ``cond`` for guidance (the extra label, the empty text).
Evaluations on a labelled test split ask two more:
- ``labelled(y)``: the condition of test images whose class labels are ``y`` (the likelihood modes);
- ``uninformative(n, device)``: a condition for ``n`` images that says nothing about them (DDAE's feature probes,
  where a label would leak the answer into the features).
Conditions are dicts of keyword arguments for the backbone (``{'y': labels}``, ``{'context': contexts}``). Which
kind applies is the backbone's declaration (``condition``, libs/nets/protocol.py); ``config.train.mode`` must agree.
"""
import torch

from libs.errors import UserError


class Unconditional:
    def training_condition(self, y, p_uncond: float) -> dict:
        return {}

    def draw(self, random):
        return {}, None

    def grid(self, random) -> dict:
        return {}

    def null(self, cond: dict) -> dict:
        raise UserError('classifier-free guidance (config.sample.scale > 0) needs a conditional model')

    def labelled(self, y) -> dict:
        return {}

    def uninformative(self, n: int, device) -> dict:
        return {}


class ClassLabels:
    """Labels 0..num_classes-1; ``null_label`` is the extra "no class" label of a model trained with label dropout
    (1000 for ImageNet's 1001-way embedding), None when the model has none."""

    def __init__(self, num_classes: int, null_label=None):
        self.num_classes = num_classes
        self.null_label = null_label

    def training_condition(self, y, p_uncond: float) -> dict:
        if p_uncond > 0:
            drop = torch.rand(y.shape[0], device=y.device) < p_uncond
            y = torch.where(drop, torch.full_like(y, self.null_label), y)
        return {'y': y}

    def draw(self, random):
        labels = random.randint(self.num_classes)
        return {'y': labels}, labels

    def grid(self, random) -> dict:
        n = len(random)
        per_row = max(1, n // max(1, int(round(n ** 0.5))))
        return {'y': (torch.arange(n, device=random.device) // per_row) % self.num_classes}

    def null(self, cond: dict) -> dict:
        if self.null_label is None:
            raise UserError('classifier-free guidance (config.sample.scale > 0) needs a model trained with a '
                            '"no class" label (nnet.num_classes = dataset classes + 1)')
        return {'y': torch.full_like(cond['y'], self.null_label)}

    def labelled(self, y) -> dict:
        return {'y': y}

    def uninformative(self, n: int, device) -> dict:
        if self.null_label is None:
            raise UserError('a condition that says nothing of the image needs the "no class" label (a label would '
                            'leak the answer into the features); this model was trained without one')
        return {'y': torch.full((n,), self.null_label, device=device)}


class TextContexts:
    """CLIP contexts (B, 77, D). ``empty``: the empty prompt's context (the "no text" condition); ``prompt_source``:
    a dataset whose items are (anything, context) to draw evaluation prompts from (MS-COCO validation captions), or a
    function returning one; ``grid_contexts``: (n, 77, D) contexts of the prompts shown in sample grids, or None."""

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

    def draw(self, random):
        source = self.prompt_source
        index = random.randint(len(source)).cpu()
        contexts = torch.stack([torch.as_tensor(source[int(i)][1]) for i in index])
        return {'context': contexts.float().to(random.device)}, None

    def grid(self, random) -> dict:
        if self.grid_contexts is None or len(self.grid_contexts) == 0:
            return self.draw(random)[0]
        n = len(random)
        repeats = -(-n // len(self.grid_contexts))
        return {'context': self.grid_contexts.float().repeat(repeats, 1, 1)[:n].to(random.device)}

    def null(self, cond: dict) -> dict:
        context = cond['context']
        return {'context': self.empty.to(context.device, context.dtype).expand_as(context)}

    def labelled(self, y) -> dict:
        raise UserError('test images have class labels, not captions: this evaluation takes unconditional or '
                        'class-conditional models, not text-conditional ones')

    def uninformative(self, n: int, device) -> dict:
        raise UserError('the feature evaluations probe unconditional or class-conditional networks, not '
                        'text-conditional ones')


def null_label(num_classes_model: int, num_classes_data: int):
    """The "no class" label of a model trained with label dropout (ImageNet latent: 1000 of 1001), or None."""
    return num_classes_data if num_classes_model == num_classes_data + 1 else None


def build_conditioning(config, nnet, num_classes_data: int = 0, with_prompts: bool = True):
    """What ``nnet`` declares it is conditioned on (checked against ``config.train.mode``): nothing, class labels
    (``num_classes_data`` classes in the data; the network may have one more, the "no class" label) or text
    contexts of the feature store at ``config.dataset.path``.

    For text, evaluation prompts come from the store's 'val' split (loaded when first needed) and grid prompts from
    its test prompts when extracted.
    """
    from libs.nets.protocol import check_train_mode
    condition = check_train_mode(nnet, config.train.mode, config.nnet.get('name', ''))
    if condition == 'none':
        return Unconditional()
    if condition == 'labels':
        num_classes_model = nnet.num_classes
        if num_classes_data <= 0:
            raise UserError(f"config.train.mode='cond' but dataset {config.dataset.name!r} has no labels")
        if num_classes_model < num_classes_data:
            raise UserError(f'config.nnet.num_classes={num_classes_model} is smaller than the '
                            f'{num_classes_data} classes of the dataset')
        return ClassLabels(num_classes_data, null_label(num_classes_model, num_classes_data))
    from libs.data import DATASETS
    from libs.data.feature_store import read_empty_context, read_test_prompts
    if not getattr(DATASETS.get(config.dataset.get('name')), 'has_contexts', False):
        raise UserError(f"config.train.mode='text' needs a dataset of text features (mscoco_features), "
                        f"not {config.dataset.name!r}")
    root = config.dataset.get('path', DATASETS[config.dataset.name].default_path)
    grid = None
    if with_prompts:
        try:
            grid = read_test_prompts(root)[1]
        except UserError:
            grid = None  # grids then show validation captions

    def validation_captions():
        from libs.data import build_dataset
        return build_dataset(config.dataset, split='val')
    return TextContexts(read_empty_context(root), validation_captions if with_prompts else None, grid)
