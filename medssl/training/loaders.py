"""What every training run shares: preset defaults, data loaders and the default precision."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from medssl.data.sampling import EpochSampler

from medssl.data.torch_dataset import ImageDataset


def fill_training_defaults(cfg, preset, epochs: int, batch_size: int, lr: float):
    """Unset arch, image size, epochs, batch size, lr and workers from the preset's values."""
    import os

    from medssl.errors import MedsslError

    cfg.arch = cfg.arch or preset.arch
    cfg.image_size = cfg.image_size or preset.image_size
    cfg.epochs = epochs if cfg.epochs is None else cfg.epochs
    cfg.batch_size = cfg.batch_size or batch_size
    cfg.lr = cfg.lr or lr
    if cfg.num_workers is None:
        cfg.num_workers = min(8, os.cpu_count() or 1)
    if cfg.epochs < 1:
        raise MedsslError(f"--epochs must be at least 1, got {cfg.epochs}.")
    return cfg


def default_precision() -> str:
    """bf16 mixed precision where the GPU supports it; full precision on the CPU."""
    cuda = torch.cuda.is_available()
    return "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"


def open_cache(table, cfg):
    """The preprocessed image cache of this table at this size (built where missing), or None
    with `--no-cache`, which decodes the originals on every read instead."""
    from medssl.data.cache import ImageCache, cache_side

    if not cfg.cache:
        return None
    return ImageCache.build(table.root, list(table.samples["path"]), cache_side(cfg.image_size),
                            progress=cfg.progress)


def make_loader(table, rows, transform, cfg, cache=None, train: bool = False,
                balanced: bool = False, drop_last: bool = False) -> DataLoader:
    """A loader over `rows` of `table`; shuffled (or class-balanced) when `train`."""
    from medssl.data.cache import cache_side

    dataset = ImageDataset(table, rows, transform, cache_side(cfg.image_size), cache,
                           augment_seed=cfg.seed if train else None)
    sampler = None
    if train:
        weights = None
        if balanced:  # each class drawn equally often: weight every image by 1 / its class's size
            targets = torch.tensor(dataset.targets)
            weights = 1.0 / torch.bincount(targets).float()[targets]
        sampler = EpochSampler(len(dataset), cfg.seed, weights)
    return DataLoader(dataset, batch_size=min(cfg.batch_size, max(1, len(dataset))),
                      sampler=sampler, drop_last=drop_last,
                      num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
                      pin_memory=torch.cuda.is_available())

