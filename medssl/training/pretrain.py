"""A self-supervised pretraining run (any registered method): data, module and Trainer in; `backbone.pt` and its JSON out.

The output folder holds `backbone.pt` (a plain torchvision state_dict, `fc` = Identity),
`backbone.json` (how it was made), `split.csv`, `checkpoints/last.ckpt` for `--resume`, the
TensorBoard and CSV logs and, written last, the completion marker `finished.json`. The method
sees only the train split, never val or test images.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor

from medssl import __version__
from medssl.data import prepare
from medssl.data.prepare import data_config
from medssl.data.splits import label_subset, write_split_csv
from medssl.data.transforms import (Normalize, eval_crop, method_views,
                                     simclr_settings, smallest_crop)
from medssl.errors import MedsslError
from medssl.identity import run_identity
from medssl.models import build_backbone, out_features, save_backbone
from medssl.models.priors import start_backbone
from medssl.models.backbones import stem_note
from medssl.names import INITS
from medssl.options import DataOptions, HardwareOptions, ModelOptions, SSLOptions
from medssl.presets import preset_for
from medssl.ranges import method_setting
from medssl.records import BackboneRecord, read_backbone_record
from medssl.runs import (BACKBONE, LABELLED, SPLIT, SSL_OUTPUTS, cleaned_up_on_failure,
                         dataset_dir, mark_finished, ssl_dir)
from medssl.training.checks import check_run, imagenet_weights_for
from medssl.training.distributed import (barrier, gpu_hours, is_rank_zero, planned_world_size,
                                         scaled_lr, scaling_rule)
from medssl.training.harness import RunStart, fit, keep_identity, make_trainer, open_run
from medssl.training.guards import Guard
from medssl.training.knn import KNNMonitor, readout_gain
from medssl.training.loaders import (fill_training_defaults, foundation_defaults, make_loader,
                                    open_cache, prior_file, run_stats)
from medssl.training.methods import get_method
from medssl.training.run_logs import end_loggers

log = logging.getLogger("medssl")


@dataclass(kw_only=True)
class PretrainConfig(DataOptions, HardwareOptions, ModelOptions, SSLOptions):
    """One pretraining run: the shared parts (medssl.options), and what only this run has."""

    init: str = "random"  # random, imagenet, or a foundation prior (models.foundation)
    prior_weights: str | None = None  # a foundation init's weights file (else the HF cache)
    seed: int = 0
    label_fraction: float = 1.0  # supervised methods only (supcon): the share of labels they see
    out: str | None = None
    resume: bool = False
    force: bool = False
    extra: dict = field(default_factory=dict)
    optimizer_from: str = ""  # resolved: flag (set), method (its published recipe) or study
    # resolved: flag (--epochs) or preset (its ssl_epochs; raised to make the preset's
    # ssl_min_steps on a small dataset once the train images are known: epochs_for)
    epochs_from: str = ""


def resolve(cfg: PretrainConfig) -> PretrainConfig:
    """Fill every unset value from the dataset's preset, then check every value before any work
    is done (a refused flag leaves no run folder behind)."""
    if cfg.init not in INITS:  # a foundation prior, or refused naming the choices
        foundation_defaults(cfg, cfg.init, cfg.prior_weights)
    elif cfg.prior_weights:
        raise MedsslError(f"--prior-weights {cfg.prior_weights}: --init {cfg.init} is no "
                          "foundation prior. Fix: drop it, or --init a prior from `medssl priors`.")
    p = preset_for(cfg.dataset)
    lr_asked = cfg.lr
    cfg.epochs_from = cfg.epochs_from or ("flag" if cfg.epochs is not None else "preset")
    fill_training_defaults(cfg, p, p.ssl_epochs, p.ssl_batch_size, p.ssl_lr)
    cfg.warmup_epochs = p.ssl_warmup_epochs if cfg.warmup_epochs is None else cfg.warmup_epochs
    cfg.augment = cfg.augment or p.augment
    cfg.augment_overrides = fit_crops(cfg, {**dict(p.ssl_aug), **cfg.augment_overrides},
                                      asked=cfg.augment_overrides)
    method = get_method(cfg.method)
    cfg.optimizer_from = optimiser_recipe(cfg, method, lr_asked)
    unknown = sorted(set(cfg.method_options) - set(method.defaults))
    if unknown:
        raise MedsslError(f"{cfg.method} has no setting {unknown[0]}. Its settings: "
                          f"{', '.join(method.defaults)}.")
    for key, value in cfg.method_options.items():
        rng = method_setting(key, method.defaults[key])
        problem = rng.problem(value)
        if problem:
            raise MedsslError(f"--method-opt {key}={value}: {problem} ({rng.why}). Fix: a value "
                              f"like its default, {rng.example}.")
    if cfg.label_fraction != 1.0 and not method.uses_labels:
        raise MedsslError(f"--label-fraction {cfg.label_fraction}: {cfg.method} uses no labels, so "
                          "a label fraction would change nothing. Fix: drop it, or use a method "
                          "that learns from labels (supcon).")
    # The study's 10 warm-up epochs suit its 200-500-epoch runs; a short run warms up for at most
    # a tenth of its epochs, or it would spend most of them warming up.
    asked = cfg.warmup_epochs
    cfg.warmup_epochs = min(asked, cfg.epochs / 10)
    if cfg.warmup_epochs < asked:
        log.info("warm-up: %g of %d epochs (a tenth of the run; %d asked)", cfg.warmup_epochs,
                 cfg.epochs, asked)
    cfg.out = cfg.out or str(ssl_dir(dataset_dir(cfg.dataset), cfg.init, cfg.method))
    cfg.imagenet_weights = imagenet_weights_for(cfg.init, cfg.imagenet_weights,
                                                "pretraining from --init random")
    check_run(cfg)
    simclr_settings(cfg.image_size, cfg.augment, **cfg.augment_overrides)  # checks the knobs
    return cfg


STUDY_WEIGHT_DECAY = 1e-6  # the study's Adam


def fit_crops(cfg: PretrainConfig, overrides: dict, asked: dict) -> dict:
    """The preset's smallest crop raised for small pictures (transforms.smallest_crop), unless
    the user set one (`--aug min_scale`)."""
    preset = simclr_settings(cfg.image_size, cfg.augment, **overrides)["min_scale"]
    fitted = round(smallest_crop(cfg.image_size), 3)
    if "min_scale" in asked or fitted <= preset:
        return overrides
    log.info("crops of at least %g of the picture at %d px (the preset's %g would keep %d px "
             "per side; --aug min_scale sets it)", fitted, cfg.image_size, preset,
             round(cfg.image_size * preset ** 0.5))
    return {**overrides, "min_scale": fitted}


def optimiser_recipe(cfg: PretrainConfig, method, lr_asked: float | None) -> str:
    """Fill the unset optimiser, lr and weight decay: from the method's published recipe where it
    has one (its lr per 256 images scaled linearly to the batch, as its authors scale it), else
    the study's Adam at the preset's lr. A value the user set is kept; the recipe's lr and weight
    decay apply only with the recipe's optimiser. Returns where the optimiser came from."""
    own = method.recipe
    source = "flag" if cfg.optimizer else ("method" if own else "study")
    cfg.optimizer = cfg.optimizer or own.get("optimizer", "adam")
    if own and cfg.optimizer == own["optimizer"]:
        if lr_asked is None:
            cfg.lr = own["lr_per_256"] * cfg.batch_size / 256
        if cfg.weight_decay is None:
            cfg.weight_decay = own["weight_decay"]
    if cfg.weight_decay is None:
        cfg.weight_decay = STUDY_WEIGHT_DECAY
    if source == "method" and lr_asked is not None:
        log.warning("%s: lr %g as set, with its published %s (whose lr is %g per 256 images)",
                    method.title, cfg.lr, cfg.optimizer, own["lr_per_256"])
    elif source == "method":
        log.info("%s: its published optimiser, %s at lr %g (%g per 256 images), weight decay %g "
                 "(--optimizer adam: the study's)", method.title, cfg.optimizer, cfg.lr,
                 own["lr_per_256"], cfg.weight_decay)
    return source


def run_pretrain(cfg: PretrainConfig) -> Path:
    cfg = resolve(cfg)  # every flag checked: nothing is written before this passes
    with cleaned_up_on_failure(Path(cfg.out), owner=is_rank_zero()):
        return _train(cfg)


def fitted_options(method, options: dict, asked: dict, train_images: int, batch_size: int,
                   image_size: int) -> dict:
    """The method's settings for this dataset: its defaults fitted to the data
    (`SSLMethod.fit_to_data`), a value the user set kept as set."""
    fitted = method.fit_to_data(dict(options), train_images, batch_size, image_size)
    data = f"{train_images} train images per process at {image_size} px"
    for key, value in fitted.items():
        if value == options[key]:
            continue
        if key in asked:
            log.warning("%s=%s kept as set; for %s %s would use %s",
                        key, options[key], data, method.title, value)
            fitted[key] = options[key]
        else:
            log.info("%s: %s=%s for %s (default %s)", method.title, key, value, data,
                     options[key])
    return fitted


def _train(cfg: PretrainConfig) -> Path:
    run = open_run(cfg, SSL_OUTPUTS)
    keep_identity(run, identity_of(cfg))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    table, data_info = prepare_split(cfg, run)
    method = get_method(cfg.method)
    rows = train_rows(cfg, method, table, run)
    batch_size = batch_for(cfg, len(rows))
    share = math.ceil(len(rows) / planned_world_size(cfg))  # the train images of each process
    length = epochs_for(cfg, share, batch_size)
    options = fitted_options(method, {**method.defaults, **cfg.method_options},
                             cfg.method_options, share, batch_size, cfg.image_size)
    settings = simclr_settings(cfg.image_size, cfg.augment, **cfg.augment_overrides)
    views = method.views(cfg.image_size, settings, **options)
    p = preset_for(cfg.dataset)
    crops, colour = method_views(views, cfg.image_size, settings,
                                 *run_stats(cfg.init, p, cfg.in_channels))
    cache = open_cache(table, cfg)
    train_loader = make_loader(table, rows, crops, cfg, cache, train=True, drop_last=True,
                               start_epoch=run.resume_at[0] if run.resume_at else 0,
                               batch_size=batch_size)
    knn = knn_monitor(cfg, table, cache, batch_size)
    backbone, found = start_backbone(cfg.arch, cfg.init, cfg.imagenet_weights, cfg.in_channels,
                                     cfg.image_size, cfg.prior_weights)
    module = method(backbone, out_features(backbone), cfg, cfg, seed=cfg.seed,
                    batch_transform=colour, **options)
    guard = Guard(method.title, cfg.lr, method.guard_hint)
    # The guard first: its epoch-end look comes before the read-outs, which a NaN would break.
    trainer = make_trainer(replace(cfg, epochs=length[0]), run,
                           callbacks=[guard, knn, LearningRateMonitor("step")])
    fit(trainer, run.out, module, train_loader, ckpt_path=run.resume_from, weights_only=True)
    if trainer.is_global_zero:
        used = Used(method, options, views, settings, batch_size, len(rows), data_info, length,
                    found)
        record = backbone_record(cfg, used, trainer, module, knn, run.started)
        save_backbone(module.backbone, run.out / BACKBONE, record)
        mark_finished(run.out, SSL_OUTPUTS)
        say_readout(record)
    end_loggers(trainer)
    barrier()  # the other ranks return once the backbone is there (compare goes on to use it)
    check_gain(run.out, read_backbone_record(run.out / BACKBONE), cfg.min_gain)
    return run.out


def say_readout(record: BackboneRecord) -> None:
    """One line on whether the pretraining learned: its val read-outs against a random init's."""
    if record.readout_gain is None:
        return
    what = (f"val kNN {record.random_knn_acc:.3f} -> {record.final_knn_acc:.3f}, few-shot "
            f"{record.random_fewshot_acc:.3f} -> {record.final_fewshot_acc:.3f} (a random init "
            "-> this backbone)")
    if record.learned:
        log.info("%s: %+.1f points over a random init (%s)", record.method_title,
                 record.readout_gain, what)
    else:
        log.warning("%s ended at or below a random init: %+.1f points (%s). A model finetuned "
                    "from it measures this pretraining recipe, not %s. Fix: more pretraining "
                    "epochs (pretrain --epochs, compare --ssl-epochs), or the method's settings "
                    "(docs/methods.md)", record.method_title, record.readout_gain, what,
                    record.method_title)


def check_gain(run: Path, record: BackboneRecord, min_gain: float | None,
               flag: str = "--min-gain") -> None:
    """`--min-gain`: refuse a pretraining whose read-out gain over a random init is below it
    (it stays finished: a rerun with another --min-gain judges it again without training)."""
    if min_gain is None or record.readout_gain is None or record.readout_gain >= min_gain:
        return
    raise MedsslError(f"The pretraining in {run} ({record.method_title}) ends "
                      f"{record.readout_gain:+.1f} points over a random init on the val "
                      f"read-outs, below {flag} {min_gain:g}: nothing will be finetuned "
                      "from it. Fix: a recipe that learns on this data (more pretraining "
                      "epochs, the method's settings: docs/methods.md), or a lower "
                      f"{flag} to accept it.")


def identity_of(cfg: PretrainConfig) -> dict:
    """The run's identity (medssl.identity): its resolved settings and its split file's content."""
    return run_identity(cfg, {"split_file": cfg.split_file,
                              "prior_weights": prior_file(cfg.init, cfg.prior_weights)})


def prepare_split(cfg: PretrainConfig, run: RunStart):
    """The dataset's table under the run's split (a resumed run keeps its own), written to the
    run folder."""
    split_file = cfg.split_file
    if cfg.resume and not split_file and (run.out / SPLIT).is_file():
        split_file = str(run.out / SPLIT)  # a resumed run keeps its split
    table, data_info = prepare(replace(data_config(cfg), split_file=split_file),
                               skip_bad_images=cfg.skip_bad_images, workers=cfg.workers,
                               progress=cfg.progress)
    if run.writer:
        run.out.mkdir(parents=True, exist_ok=True)
        write_split_csv(table.samples, run.out / SPLIT, cfg.duplicates)
    return table, data_info


def train_rows(cfg: PretrainConfig, method, table, run: RunStart):
    """The images the method trains on: the train split; a supervised method (supcon) sees the
    labelled train images only, at a label fraction that fraction's (the same seeded subset
    finetuning uses)."""
    rows = label_subset(table.samples, cfg.label_fraction, cfg.seed) if method.uses_labels \
        else table.samples[table.samples["split"] == "train"]
    if run.writer and method.uses_labels and cfg.label_fraction < 1:
        write_split_csv(rows, run.out / LABELLED, cfg.duplicates)
    if len(rows) < 2:
        raise MedsslError(f"The train split of {cfg.dataset} has {len(rows)} image(s); "
                          f"{method.title} needs at least 2.")
    return rows


def epochs_for(cfg: PretrainConfig, share: int, batch_size: int) -> tuple[int, str]:
    """The epochs to run and why: `--epochs` as given (flag); else the preset's (preset),
    raised so that the run makes at least the preset's `ssl_min_steps` optimiser steps
    (min_steps: a small dataset makes few per epoch). The configuration and its identity keep
    the preset's value: the raise follows from the data and the batch, which are in them."""
    minimum = preset_for(cfg.dataset).ssl_min_steps
    if cfg.epochs_from != "preset" or not minimum:
        return cfg.epochs, cfg.epochs_from
    per_epoch = max(1, share // batch_size)  # drop_last: only full batches
    needed = math.ceil(minimum / per_epoch)
    if needed <= cfg.epochs:
        return cfg.epochs, "preset"
    log.info("%d epochs, not the preset's %d: %d steps an epoch (%d train images, batch %d) "
             "and at least %d steps for a pretraining (--epochs sets it)", needed, cfg.epochs,
             per_epoch, share, batch_size, minimum)
    return needed, "min_steps"


def batch_for(cfg: PretrainConfig, n_train: int) -> int:
    """The batch size: `--batch-size`, cut to the train images of each process where it is
    above them (every batch is full: drop_last)."""
    share = math.ceil(n_train / planned_world_size(cfg))  # the train images of each process
    if cfg.batch_size > share:
        log.warning("--batch-size %d is above the %d train images%s: batches of %d instead",
                    cfg.batch_size, share, " of each process" if share < n_train else "", share)
        return share
    return cfg.batch_size


def random_scores(cfg: PretrainConfig, knn: KNNMonitor) -> dict | None:
    """A random init's read-outs: measured by the monitor, or, for a run from random init resumed
    from a checkpoint made before the monitor measured them apart, its own start's."""
    return knn.random or (knn.initial if cfg.init == "random" else None)


def random_init(cfg: PretrainConfig):
    """A function making a random init of the run's network (the read-outs' bar, for a run that
    starts from ImageNet), drawn from the run's seed in a forked generator so that the run's own
    random stream stays what it was."""
    def make():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return build_backbone(cfg.arch, "random", None, cfg.in_channels, cfg.image_size)
    return make


def knn_monitor(cfg: PretrainConfig, table, cache, batch_size: int) -> KNNMonitor:
    """The kNN and few-shot read-outs on val, each epoch. Each process embeds a share; every
    process then holds all the features (knn.embed). Its loaders are iterated by the monitor,
    not by Lightning: workers that end with each pass (make_loader)."""
    plain = eval_crop(cfg.image_size)
    p = preset_for(cfg.dataset)
    return KNNMonitor(*(make_loader(table, split, plain, cfg, cache, shard=True, persistent=False,
                                    batch_size=batch_size) for split in ("train", "val")),
                      num_classes=len(table.classes),
                      normalize=Normalize(*run_stats(cfg.init, p, cfg.in_channels)),
                      random_backbone=random_init(cfg) if cfg.init != "random" else None)


@dataclass
class Used:
    """What a pretraining ran with, beyond its config: the method and its fitted settings, the
    views and augmentation, the batch size, the images it trained on, the data."""

    method: object
    options: dict
    views: list
    settings: dict
    batch_size: int
    n_train: int
    data_info: dict
    length: tuple = (0, "")  # the epochs planned and why (epochs_for)
    foundation: dict | None = None  # the foundation prior it started from (its file, license)


def backbone_record(cfg: PretrainConfig, used: Used, trainer, module, knn,
                    started: float) -> BackboneRecord:
    """backbone.json: how the backbone was made."""
    p = preset_for(cfg.dataset)
    method, batch_size = used.method, used.batch_size
    loss = module.last_epoch_loss
    random = random_scores(cfg, knn)
    gain = readout_gain(knn.last, random)  # points over a random init on the val read-outs
    return BackboneRecord(**{
        "method": cfg.method, "method_title": method.title, "method_settings": used.options,
        "method_settings_asked": {**method.defaults, **cfg.method_options},
        "method_source": method.source,
        "supervised": method.uses_labels, "label_fraction": cfg.label_fraction,
        "labelled_train_images": used.n_train if method.uses_labels else 0,
        "views": [{"size": v.size, "scale": list(v.scale), "colour": v.colour}
                  for v in used.views],
        "warmup_epochs_used": cfg.warmup_epochs,
        "arch": cfg.arch, "init": cfg.init, "dataset": cfg.dataset,
        "imagenet_weights": cfg.imagenet_weights if cfg.init == "imagenet" else None,
        "image_size": cfg.image_size, "in_channels": cfg.in_channels,
        "stem_adapted": stem_note(cfg.init, cfg.in_channels), "foundation": used.foundation,
        "normalize": dict(zip(("mean", "std"), map(list, run_stats(cfg.init, p,
                                                                   cfg.in_channels)))),
        "epochs": trainer.current_epoch, "steps": trainer.global_step,
        "epochs_planned": used.length[0], "epochs_from": used.length[1],
        # drop_last: every step is one full global batch
        "images_seen": trainer.global_step * batch_size * trainer.world_size,
        "gpu_hours": gpu_hours(trainer, time.time() - started),
        "batch_size": batch_size, "world_size": trainer.world_size,
        "global_batch_size": batch_size * trainer.world_size, "lr": cfg.lr,
        "lr_used": scaled_lr(cfg.lr, trainer.world_size, cfg.lr_scaling, cfg.optimizer),
        "lr_scaling": scaling_rule(cfg.lr_scaling, cfg.optimizer),
        "optimizer": cfg.optimizer, "weight_decay": cfg.weight_decay,
        # flag: set by the user; method: the method's published recipe; study: Adam
        "optimizer_from": cfg.optimizer_from,
        "augment": cfg.augment,
        "augment_overrides": cfg.augment_overrides, "augmentation": used.settings,
        "final_loss": float(loss) if loss is not None else None,
        **{f"{when}_{key}": (scores or {}).get(key)
           for when, scores in (("final", knn.last), ("initial", knn.initial), ("random", random))
           for key in ("knn_acc", "fewshot_acc", "knn_balanced_acc", "fewshot_balanced_acc")},
        "readout_gain": gain, "learned": None if gain is None else gain > 0,
        "seed": cfg.seed, "split_file": SPLIT,
        "data": used.data_info, "medssl_version": __version__,
        "wall_time_s": round(time.time() - started, 1),
        # the batch size as run (asked: `batch_size` above is what ran)
        "config": {k: v for k, v in asdict(cfg).items() if k != "extra"}
                  | {"batch_size": batch_size},
    })
