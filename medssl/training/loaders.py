"""What every training run shares: preset defaults, data loaders and the default precision."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO
from torch.utils.data import DataLoader

from medssl.data.sampling import EpochSampler, ShardSampler
from medssl.data.torch_dataset import ImageDataset
from medssl.runs import LAST, last_checkpoint

log = logging.getLogger("medssl")


def fill_training_defaults(cfg, preset, epochs: int, batch_size: int, lr: float):
    """Unset arch, image size, epochs, batch size, lr and workers from the preset's values."""
    import os

    from medssl.errors import MedsslError

    cfg.arch = cfg.arch or preset.arch
    cfg.image_size = cfg.image_size or preset.image_size
    cfg.epochs = epochs if cfg.epochs is None else cfg.epochs
    cfg.batch_size = batch_size if cfg.batch_size is None else cfg.batch_size
    cfg.lr = lr if cfg.lr is None else cfg.lr  # an lr of 0 given is refused, never replaced
    if cfg.num_workers is None:
        cfg.num_workers = default_workers(cfg.accelerator, cfg.cache, os.cpu_count() or 1)
    if cfg.epochs < 1:
        raise MedsslError(f"--epochs must be at least 1, got {cfg.epochs}.")
    if cfg.batch_size < 1:
        raise MedsslError(f"--batch-size must be at least 1, got {cfg.batch_size}.")
    return cfg


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
    from medssl.data.splits import EXCLUDED

    used = table.samples.loc[table.samples["split"] != EXCLUDED, "path"]  # never read: not cached
    return ImageCache.build(table.root, list(used), cache_side(cfg.image_size),
                            progress=cfg.progress)


def every_epoch_checkpoint(out: Path, interval_s: float = 0.0):
    """`<out>/checkpoints/last.ckpt` for `--resume`: at the end of an epoch once `interval_s`
    seconds have passed since the last save (0: every epoch), and always after the last epoch.

    Not Lightning's `save_last`: that copies only when another checkpoint is saved (with
    `save_top_k=0`, only when training ends), so a run cut off later would repeat epochs. Saved
    at the very end of the train epoch, after validation and after `run_logs.log_now`. Not every
    epoch by default: a ResNet-50 with Adam's state is 300 MB, and saved after each of 200 short
    epochs it made the disk the bottleneck (the demo's quick start spent a third of its time in
    the kernel writing checkpoints). A resumed run replays from the saved epoch exactly as an
    uninterrupted one, so the interval bounds the work a kill loses, never the result."""
    import warnings

    # A resumed run finds its own checkpoints there: expected, not worth a warning.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    return IntervalCheckpoint(interval_s, dirpath=str(last_checkpoint(out).parent),
                              filename=Path(LAST).stem, save_top_k=1, enable_version_counter=False,
                              save_on_train_epoch_end=True)


class IntervalCheckpoint(pl.callbacks.ModelCheckpoint):
    """A ModelCheckpoint that skips epoch ends until `interval_s` seconds have passed since its
    last save (or the run's start), except the last epoch's."""

    def __init__(self, interval_s: float, **kwargs):
        super().__init__(**kwargs)
        self.interval_s = interval_s
        self._saved_at = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        import time

        self._saved_at = time.monotonic()
        super().on_train_start(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        import time

        last = (trainer.current_epoch + 1 >= (trainer.max_epochs or 0) or trainer.should_stop
                or 0 < trainer.max_steps <= trainer.global_step)
        if not last and time.monotonic() - self._saved_at < self.interval_s:
            return
        super().on_train_epoch_end(trainer, pl_module)
        self._saved_at = time.monotonic()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written beside their final name, then renamed. (Lightning stages them in the
    system temp folder; where that is another disk, the final copy can be cut off half-way.)"""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        from medssl.atomic import atomic_write

        atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))


def resume_point(checkpoint: Path | None) -> tuple[int, int] | None:
    """(epoch, global step) at which a run resumed from this Lightning checkpoint starts; None
    when fresh. The epoch is its fit loop's `current.processed` count: what Lightning hands to
    `set_epoch`."""
    if checkpoint is None:
        return None
    from medssl.errors import MedsslError

    try:
        # weights_only: a planted or corrupt checkpoint is refused here, its pickle never run.
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise MedsslError(f"{checkpoint} is not a checkpoint this run can resume from: it does not "
                          f"load with weights_only=True ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]}). Fix: delete it and run again "
                          "without --resume.") from None
    try:
        epoch = int(state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except KeyError:
        epoch = int(state["epoch"]) + 1  # written by another Lightning version: epoch-end saves
    return epoch, int(state["global_step"])


def make_loader(table, rows, transform, cfg, cache=None, train: bool = False,
                balanced: bool = False, drop_last: bool = False,
                start_epoch: int = 0, shard: bool = False, persistent: bool = True) -> DataLoader:
    """A loader over `rows` of `table`; shuffled (or class-balanced) when `train`, starting at
    `start_epoch`'s order (see `SamplerEpochCheck` for why a resumed run must say it). Training
    loaders, and `shard` ones, give each process of a distributed run its own share.
    `persistent` keeps the workers between passes: only for loaders that Lightning iterates,
    whose workers it stops when its loop ends. A persistent loader iterated by medssl itself
    keeps its workers until the garbage collector finds it, and there its shutdown waits 5 s per
    worker (torch joins workers whose queues the collector already closed): the quick start
    stalled 25-42 s at a time on the kNN monitor's loaders of earlier pretrainings."""
    from medssl.data.cache import cache_side

    dataset = ImageDataset(table, rows, transform, cache_side(cfg.image_size), cache,
                           augment_seed=cfg.seed if train else None)
    sampler = None
    if train:
        weights = None
        if balanced:  # each class drawn equally often: weight every image by 1 / its class's size
            targets = torch.tensor(dataset.targets)
            weights = 1.0 / torch.bincount(targets).float()[targets]
        sampler = EpochSampler(len(dataset), cfg.seed, weights, epoch=start_epoch)
    elif shard:
        sampler = ShardSampler(len(dataset))
    batch_size = min(cfg.batch_size, max(1, len(dataset)))
    if train and batch_size < cfg.batch_size:
        log.warning("--batch-size %d is above the %d training images: batches of %d instead",
                    cfg.batch_size, len(dataset), batch_size)
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
    import gc
    import os

    gc.freeze()
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning_fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)


class SamplerEpochCheck(pl.Callback):
    """Stops a run whose first batch of an epoch came from another epoch's order.

    Lightning creates the train iterator of a resumed run before it calls `set_epoch`, and with
    loader workers that iterator fetches its first batches at once: without `start_epoch` the
    resumed epoch would replay epoch 0's images and augmentations. This check makes any such
    mismatch (for example after a Lightning upgrade) an error instead of a silent difference.
    """

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        sampler = getattr(trainer.train_dataloader, "sampler", None)
        if batch_idx == 0 and isinstance(sampler, EpochSampler) \
                and sampler.served_epoch != trainer.current_epoch:
            raise RuntimeError(f"epoch {trainer.current_epoch} is training on the image order of "
                               f"epoch {sampler.served_epoch}: a resumed run would not match an "
                               "uninterrupted one. Please report this with your Lightning version.")


def fit(trainer, out: Path, *args, **kwargs) -> None:
    """`trainer.fit`, with Ctrl-C and SIGTERM reported as what they are. Lightning catches the KeyboardInterrupt,
    tears the run down, ignores further Ctrl-C and calls `sys.exit(1)`: without this, the user
    would get exit status 1 and no word of what was saved. Here it becomes `Interrupted` (exit
    130), which names the checkpoint to `--resume` from, if the run got as far as one."""
    import signal

    from medssl.errors import Interrupted

    try:
        trainer.fit(*args, **kwargs)
    except BaseException as exc:
        # SIGTERM (a batch system's time limit, `kill`, `timeout`): Lightning stops after the
        # batch, or the signal reaches the loader's workers first and their death surfaces as
        # an error; either way it is a stop, not a bug, and the saved epoch can be resumed.
        sigterm = trainer.received_sigterm and not isinstance(exc, KeyboardInterrupt)
        if not sigterm and not (isinstance(exc, SystemExit) and trainer.interrupted):
            raise
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning set it to ignore
        # The run is over: torch's SIGCHLD handler would otherwise report the workers the
        # signal killed with a traceback while Python exits.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        what = "stopped (SIGTERM)" if sigterm else "interrupted (Ctrl-C)"
        last = last_checkpoint(out)
        if last.is_file():
            saved = resume_point(last)[0]
            raise Interrupted(f"{what} in epoch {trainer.current_epoch + 1}. The run is saved "
                              f"as of the end of epoch {saved} in {last}. Fix: run the same "
                              "command again with --resume to continue from there.") from None
        raise Interrupted(f"{what} before the first epoch ended: there is nothing to "
                          "resume. Run the same command again to start anew.") from None
