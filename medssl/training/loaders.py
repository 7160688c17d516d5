"""What every training run reads its images through: preset defaults, the image cache and the
data loaders. (The Trainer, checkpoints and fit around them: training.harness.)"""

from __future__ import annotations

import gc
import logging
import math
import os

import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader

from medssl.data.cache import ImageCache, cache_side
from medssl.data.sampling import EpochSampler, ShardSampler
from medssl.data.splits import EXCLUDED
from medssl.data.torch_dataset import ImageDataset
from medssl.data.transforms import channel_stats
from medssl.errors import MedsslError
from medssl.models.backbones import check_arch
from medssl.models.foundation import prior_arch, prior_spec, prior_stats
from medssl.models.foundation_load import check_loadable
from medssl.names import INITS
from medssl.ranges import check_values
from medssl.training.distributed import planned_world_size

log = logging.getLogger("medssl")


def fill_training_defaults(cfg, preset, epochs: int, batch_size: int, lr: float):
    """Unset arch, image size, epochs, batch size, lr and workers from the preset's values; then
    every number of `cfg` checked against its range (medssl.ranges)."""
    cfg.arch = check_arch(cfg.arch or preset.arch)  # a timm name checked before any work
    cfg.image_size = cfg.image_size or preset.image_size
    cfg.epochs = epochs if cfg.epochs is None else cfg.epochs
    cfg.batch_size = batch_size if cfg.batch_size is None else cfg.batch_size
    cfg.lr = lr if cfg.lr is None else cfg.lr  # an lr of 0 given is refused, never replaced
    if cfg.num_workers is None:
        cfg.num_workers = default_workers(cfg.accelerator, cfg.cache, os.cpu_count() or 1)
    check_values(cfg)  # every number against the table of ranges, the CLI's too
    return cfg


def foundation_defaults(cfg, init: str, weights, *, check_weights: bool = True) -> None:
    """A run from a foundation prior (`init` its label) runs on the prior's arch (timm:NAME);
    its weights (`weights`: a file, else the Hugging Face cache) are looked for before any work
    (PriorUnavailable), unless the run starts from an SSL backbone made from it."""
    spec = prior_spec(init, weights)
    if check_weights:
        check_loadable(spec)
    arch = prior_arch(spec)
    if arch is None:  # a prior timm does not build, whose loading check passed: none today
        raise MedsslError(f"Prior {init}: no backbone medssl can build for it.")
    if cfg.arch not in (None, arch):
        raise MedsslError(f"--arch {cfg.arch}: the runs of prior {init} are on its own network, "
                          f"{arch}. Fix: drop --arch.")
    cfg.arch = arch


def prior_file(init: str, weights) -> str | None:
    """The file a foundation init's weights are read from: the one given, or the one found in
    the Hugging Face cache or its library's folder (a run's identity names it by content, so
    weights replaced in the cache make another run). None for random and ImageNet inits."""
    return None if init in INITS else str(check_loadable(prior_spec(init, weights)))


def run_stats(init: str, preset, in_channels: int) -> tuple[tuple, tuple]:
    """The normalisation of a run's inputs: a foundation prior's own (it was trained with it),
    else the dataset preset's; per input channel (transforms.channel_stats)."""
    mean, std = (preset.mean, preset.std) if init in INITS else prior_stats(prior_spec(init))
    if len(mean) == 1:  # a grey prior (TorchXRayVision's) on RGB inputs: the same per channel
        mean, std = tuple(mean) * 3, tuple(std) * 3
    return channel_stats(mean, std, in_channels)


def default_workers(accelerator: str, cache: bool, cpus: int) -> int:
    """Loader workers when `--num-workers` is not given. Training on the CPU from the image
    cache: none. The model's threads already use every core there, a worker only reads a row
    and crops it, and each worker is a fork of the training process: on the 2-core machine the
    demo's grid took 311 s with none against 378 s with two (kernel time 53 s against 193 s),
    to the same results. With an accelerator, or decoding originals (`--no-cache`): the CPU
    count, at most 8."""
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()
                                      and not torch.backends.mps.is_available())
    return 0 if on_cpu and cache else min(8, cpus)


def open_cache(table, cfg):
    """The preprocessed image cache of this table at this size (built where missing), or None
    with `--no-cache`, which decodes the originals on every read instead."""
    if not cfg.cache:
        return None
    used = table.samples.loc[table.samples["split"] != EXCLUDED, "path"]  # never read: not cached
    return ImageCache.build(table.root, list(used), cache_side(cfg.image_size), window=table.window,
                            channels=cfg.in_channels,
                            progress=cfg.progress)


def make_loader(table, rows, transform, cfg, cache=None, train: bool = False,
                balanced: bool = False, drop_last: bool = False,
                start_epoch: int = 0, shard: bool = False, persistent: bool = True,
                batch_size: int | None = None) -> DataLoader:
    """A loader over `rows` of `table`; shuffled (or class-balanced) when `train`, starting at
    `start_epoch`'s order (see `SamplerEpochCheck` for why a resumed run must say it). Training
    loaders, and `shard` ones, give each process of a distributed run its own share.
    `persistent` keeps the workers between passes: only for loaders that Lightning iterates,
    whose workers it stops when its loop ends. A persistent loader iterated by medssl itself
    keeps its workers until the garbage collector finds it, and there its shutdown waits 5 s per
    worker (torch joins workers whose queues the collector already closed): the quick start
    stalled 25-42 s at a time on the kNN monitor's loaders of earlier pretrainings.
    `batch_size`: this run's, where it differs from `cfg.batch_size` (a pretraining's batch cut
    to its train images, pretrain.batch_for)."""
    dataset = ImageDataset(table, rows, transform, cache_side(cfg.image_size), cache,
                           augment_seed=cfg.seed if train else None, channels=cfg.in_channels)
    sampler = None
    if train:
        weights = None
        if balanced:  # each class drawn equally often: weight every image by 1 / its class's size
            targets = torch.tensor(dataset.targets)
            weights = 1.0 / torch.bincount(targets).float()[targets]
        sampler = EpochSampler(len(dataset), cfg.seed, weights, epoch=start_epoch)
    elif shard:
        sampler = ShardSampler(len(dataset))
    asked = batch_size or cfg.batch_size
    batch_size = min(asked, max(1, len(dataset)))
    if train and batch_size < asked:
        log.warning("--batch-size %d is above the %d training images: batches of %d instead",
                    asked, len(dataset), batch_size)
    # each process's training images
    share = math.ceil(len(dataset) / planned_world_size(cfg)) if train else len(dataset)
    if train and not drop_last and share % batch_size == 1:
        # A last batch of one image fails in BatchNorm wherever a feature map is 1x1 (ResNet's
        # last stage at 32-63 px: "Expected more than 1 value per channel"), and its statistics
        # of one image are noise elsewhere: it is left out of that epoch, as drop_last does.
        log.info("%d training images in batches of %d: the last batch, of one image, is left "
                 "out of each epoch (BatchNorm needs two)", share, batch_size)
        drop_last = True
    return DataLoader(dataset, batch_size=batch_size,
                      sampler=sampler, drop_last=drop_last,
                      num_workers=cfg.num_workers,
                      persistent_workers=persistent and cfg.num_workers > 0,
                      pin_memory=torch.cuda.is_available(), worker_init_fn=init_worker)


def init_worker(worker_id: int) -> None:
    """A loader worker's first act: leave the objects it inherited by fork to its parent.

    A worker forked while earlier loaders' iterators still await the garbage collector (an
    earlier run's in the same process, fit's before predict) inherits them; when its own
    collector frees one, the iterator's `__del__` tries to stop workers that are not its
    children, and each such worker printed an "AssertionError: can only test a child process"
    traceback (eight to sixteen of them in the demo's quick start). `gc.freeze()` puts every
    inherited object out of the worker's collections (it is the documented use after fork).
    Then the seeding Lightning adds to workers without an init function of their own, so that
    runs stay exactly what they were."""
    gc.freeze()
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        pl_worker_init_function(worker_id)
