"""What every dataset shares: the split check, and what it says about itself without reading its data."""
from libs.errors import UserError


def check_split(name: str, split: str, splits) -> None:
    if split not in splits:
        raise UserError(f"dataset '{name}' has no split '{split}'; known splits: {', '.join(splits)}")


def describe(cls, cfg, resolution: int):
    """(num_classes, default reference statistics or None) of ``config.dataset`` (a dataset class ``cls``) at
    ``resolution``, from the class attributes ``label_classes`` (None: build the train split to count them),
    ``default_fid_stats`` and ``fid_stats_pattern``; ``config.dataset.fid_stats`` overrides the statistics."""
    fid_stats = cfg.get('fid_stats', None) or cls.default_fid_stats
    if fid_stats is None and cls.fid_stats_pattern:
        fid_stats = cls.fid_stats_pattern.format(int(resolution))
    if cls.label_classes is None:
        return cls.from_config(cfg, 'train').num_classes, fid_stats
    return cls.label_classes, fid_stats
