"""`medssl compare`: run what is missing of the M1-M4 grid, reuse what finished, report.

Order: one split for everything (`split.csv`), the SimCLR pretrainings the asked-for models need,
then every (label fraction, seed, model) finetuning. Without ImageNet weights M3 and M4 are
skipped with the reason and the fix, and the rest still runs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from medssl.errors import MedsslError
from medssl.atomic import atomic_write
from medssl.models.priors import MODELS
from medssl.runs import (cleaned_up_on_failure, dataset_dir, finetune_dir, finetune_finished,
                         is_interrupted, ssl_dir, ssl_finished)
from medssl.training.checks import imagenet_weights_for
from medssl.training.distributed import is_rank_zero, wait_for_rank_zero

log = logging.getLogger("medssl")


@dataclass
class CompareConfig:
    dataset: str
    data_root: str | None = None
    models: list[str] = field(default_factory=lambda: ["M1", "M2", "M3", "M4"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    label_fractions: list[float] | None = None  # default: the preset's (1.0; demo 1.0 and 0.1)
    arch: str | None = None
    image_size: int | None = None
    epochs: int | None = None
    ssl_epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    imagenet_weights: str | None = None  # for M3 and M4; default IMAGENET1K_V1
    split_seed: int = 0
    split_file: str | None = None
    val_fraction: float | None = None
    test_fraction: float | None = None
    read_options: object = None  # ReadOptions: csv column names
    duplicates: str = "drop"  # copies of one picture: splits.DUPLICATE_POLICIES
    head: str = "linear"
    select: str = "loss"
    class_weights: bool = False
    balanced_sampling: bool = False
    out: str | None = None
    images_dir: str | None = None
    resume: bool = False
    accelerator: str = "auto"
    devices: int | str = 1  # per node; more than one (or nodes) runs DDP: docs/distributed.md
    num_nodes: int = 1
    strategy: str = "auto"
    lr_scaling: str = "linear"  # the lr for the global batch: training/distributed.py
    precision: str | None = None
    num_workers: int | None = None
    skip_bad_images: bool = False
    cache: bool = True
    compile: bool = False
    deterministic: bool = False  # deterministic algorithms only (slower on GPUs)
    progress: bool = True


def imagenet_unavailable(arch: str, weights: str) -> str | None:
    """None when the ImageNet weights load, else why not and how to fix it."""
    from medssl.models.backbones import imagenet_state_dict

    try:
        imagenet_state_dict(arch, weights)
    except MedsslError as exc:
        return str(exc)
    return None


def shared_split(cfg: CompareConfig, base: Path) -> Path:
    """The split every pretraining and finetuning of the grid uses, written once."""
    from medssl.data import DataConfig, open_dataset
    from medssl.data.splits import write_split_csv

    path = base / "split.csv"
    if not is_rank_zero():  # the other processes of a distributed run read rank 0's
        wait_for_rank_zero(path)
    elif not path.is_file():
        table = open_dataset(DataConfig(cfg.dataset, cfg.data_root, cfg.split_seed, cfg.val_fraction,
                                        cfg.test_fraction, cfg.split_file, cfg.read_options,
                                        cfg.duplicates), progress=cfg.progress)
        write_split_csv(table.samples, path, cfg.duplicates)
    return path


def run_compare(cfg: CompareConfig) -> tuple[str, Path]:
    from medssl.presets import preset_for

    unknown = [m for m in cfg.models if m not in MODELS]
    if unknown:
        raise MedsslError(f"Unknown model(s) {', '.join(unknown)}. Choose from {', '.join(MODELS)}.")
    base = Path(cfg.out) if cfg.out else dataset_dir(cfg.dataset)
    check_grid_flags(cfg, base)
    arch = cfg.arch or preset_for(cfg.dataset).arch
    fractions = cfg.label_fractions or list(preset_for(cfg.dataset).label_fractions)
    if not any(MODELS[m].init == "imagenet" for m in cfg.models):
        imagenet_weights_for("random", cfg.imagenet_weights, f"none of {', '.join(cfg.models)}")
    if not cfg.resume:  # as a plain rerun of one run would, refuse to restart interrupted ones
        interrupted = [run for run in expected_runs(base, cfg.models, cfg.seeds, fractions)
                       if is_interrupted(run)]
        if interrupted:
            raise MedsslError(f"{len(interrupted)} run(s) of this grid were interrupted (first: "
                              f"{interrupted[0]}). Fix: pass --resume to continue them where they "
                              "stopped, or delete their folders to start them again.")
    with cleaned_up_on_failure(base, owner=is_rank_zero()):
        return _run_grid(cfg, base, arch, fractions)


def check_grid_flags(cfg: CompareConfig, base: Path) -> None:
    """What every run of the grid would refuse, refused once before the grid starts."""
    from medssl.training.checks import check_hardware, check_lr, check_places
    from medssl.oserrors import writable_folder

    if cfg.lr is not None:
        check_lr(cfg.lr)
    check_hardware(cfg)
    check_places(base, cfg.cache)
    if cfg.images_dir:
        writable_folder(cfg.images_dir, "--images-dir")


def expected_runs(base: Path, models, seeds, fractions) -> list[Path]:
    runs = [ssl_dir(base, init) for init in sorted({MODELS[m].init for m in models if MODELS[m].ssl})]
    return runs + [finetune_dir(base, m, s, f) for f in fractions for s in seeds for m in models]


def _run_grid(cfg: CompareConfig, base: Path, arch: str, fractions: list[float]) -> tuple[str, Path]:
    from medssl.report.build import build_report
    from medssl.training.finetune import FinetuneConfig, run_finetune
    from medssl.training.pretrain import PretrainConfig, run_pretrain

    base.mkdir(parents=True, exist_ok=True)
    skipped: dict[str, str] = {}
    if any(MODELS[m].init == "imagenet" for m in cfg.models):
        reason = imagenet_unavailable(arch, cfg.imagenet_weights)
        if reason:
            for m in cfg.models:
                if MODELS[m].init == "imagenet":
                    skipped[m] = reason
            log.warning("skipping %s: %s", ", ".join(skipped), reason)
    models = [m for m in cfg.models if m not in skipped]
    # Remembered for `medssl report`, which rebuilds the table without rerunning this check.
    if is_rank_zero():
        atomic_write(base / "skipped.json", lambda p: p.write_text(json.dumps(skipped, indent=2)))
    split = shared_split(cfg, base)
    common = dict(dataset=cfg.dataset, data_root=cfg.data_root, arch=arch,
                  image_size=cfg.image_size,
                  split_file=str(split), accelerator=cfg.accelerator, devices=cfg.devices,
                  num_nodes=cfg.num_nodes, strategy=cfg.strategy, lr_scaling=cfg.lr_scaling,
                  precision=cfg.precision, num_workers=cfg.num_workers,
                  skip_bad_images=cfg.skip_bad_images, read_options=cfg.read_options,
                  duplicates=cfg.duplicates,
                  cache=cfg.cache, compile=cfg.compile, deterministic=cfg.deterministic,
                  progress=cfg.progress)

    def weights_of(init: str):  # only the runs that start from ImageNet get --imagenet-weights
        return cfg.imagenet_weights if init == "imagenet" else None

    for init in sorted({MODELS[m].init for m in models if MODELS[m].ssl}):
        run = ssl_dir(base, init)
        if ssl_finished(run):
            log.info("reusing finished pretraining %s", run)
            continue
        log.info("SimCLR pretraining from %s init -> %s", init, run)
        resume = cfg.resume and (run / "checkpoints" / "last.ckpt").is_file()
        run_pretrain(PretrainConfig(init=init, epochs=cfg.ssl_epochs, out=str(run), resume=resume,
                                    force=True, imagenet_weights=weights_of(init), **common))

    grid = [(f, s, m) for f in fractions for s in cfg.seeds for m in models]
    for i, (frac, seed, model) in enumerate(grid, start=1):
        run = finetune_dir(base, model, seed, frac)
        if finetune_finished(run):
            log.info("[%d/%d] reusing finished %s", i, len(grid), run)
            continue
        log.info("[%d/%d] finetuning %s seed %d label fraction %g -> %s", i, len(grid), model,
                 seed, frac, run)
        resume = cfg.resume and (run / "checkpoints" / "last.ckpt").is_file()
        run_finetune(FinetuneConfig(
            model=model, seed=seed, label_fraction=frac, epochs=cfg.epochs,
            batch_size=cfg.batch_size, lr=cfg.lr, head=cfg.head, select=cfg.select,
            class_weights=cfg.class_weights, balanced_sampling=cfg.balanced_sampling,
            ssl_checkpoint=str(ssl_dir(base, MODELS[model].init)) if MODELS[model].ssl else None,
            base=str(base), out=str(run), resume=resume, force=True,
            imagenet_weights=weights_of(MODELS[model].init), **common))

    if not is_rank_zero():  # one report, from rank 0
        return "", base
    return build_report(base, cfg.dataset, skipped, cfg.images_dir), base

