"""A finetuning run: one of M1-M4 on one dataset, one seed, one label fraction.

Selection happens on val only (best val loss by default). The test split is predicted once, by the
selected checkpoint, after training. The run folder holds `metrics.json`, `test_predictions.csv`,
`val_predictions.csv`, `split.csv`, checkpoints, TensorBoard logs, a CSV of the per-epoch curves
(`logs/metrics.csv`) and, written last, the completion marker `finished.json`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from medssl.errors import MedsslError
from medssl.options import (DataOptions, HardwareOptions, ModelOptions, RecipeOptions,
                            data_config)
from medssl.runs import FINETUNE_OUTPUTS, dataset_dir, finetune_dir, mark_finished, open_run_folder

log = logging.getLogger("medssl")
SELECT_METRICS = {"loss": "min", "acc": "max", "balanced_acc": "max", "macro_f1": "max",
                  "auroc": "max"}


@dataclass(kw_only=True)
class FinetuneConfig(DataOptions, HardwareOptions, ModelOptions, RecipeOptions):
    """One finetuning run: the shared parts (medssl.options), and what only this run has."""

    model: str
    ssl_checkpoint: str | None = None
    allow_other_dataset: bool = False
    seed: int = 0
    label_fraction: float = 1.0
    base: str | None = None  # the dataset's run folder (default runs/<dataset>)
    # Set by an lr search (experiments.lr_search) for the seeds that reuse its choice.
    lr_choice: dict | None = None
    # Knowledge distillation: finished runs on this split whose averaged, temperature-softened
    # predictions the student also learns from (training.objectives.distillation).
    teachers: list[str] | None = None
    kd_temperature: float = 4.0
    kd_alpha: float = 0.9
    out: str | None = None
    resume: bool = False
    force: bool = False


def resolve(cfg: FinetuneConfig) -> FinetuneConfig:
    """Fill every unset value from the dataset's preset; check the ranges flags cannot."""
    from medssl.models.priors import prior_of
    from medssl.presets import preset_for
    from medssl.training.checks import check_run, imagenet_weights_for
    from medssl.training.loaders import fill_training_defaults

    p = preset_for(cfg.dataset)
    fill_training_defaults(cfg, p, p.finetune_epochs, p.finetune_batch_size, p.finetune_lr)
    cfg.base = cfg.base or str(dataset_dir(cfg.dataset))
    cfg.out = cfg.out or str(finetune_dir(Path(cfg.base), cfg.model, cfg.seed, cfg.label_fraction))
    if not 0 < cfg.label_fraction <= 1:
        raise MedsslError(f"--label-fraction must lie in (0, 1], got {cfg.label_fraction}.")
    if cfg.select not in SELECT_METRICS:
        raise MedsslError(f"--select '{cfg.select}' is not one of {', '.join(SELECT_METRICS)}.")
    prior = prior_of(cfg.model)
    cfg.imagenet_weights = imagenet_weights_for(prior.init, cfg.imagenet_weights,
                                                f"{cfg.model} ({prior.title})")
    if cfg.teachers is not None and not cfg.teachers:
        raise MedsslError("--teacher needs at least one finished run.")
    if not 0 <= cfg.kd_alpha <= 1:
        raise MedsslError(f"--kd-alpha must lie in [0, 1], got {cfg.kd_alpha}.")
    if cfg.kd_temperature <= 0:
        raise MedsslError(f"--kd-temperature must be above 0, got {cfg.kd_temperature}.")
    if cfg.freeze_epochs >= cfg.epochs:
        log.warning("--freeze-epochs %d is not below --epochs %d: the backbone is never trained, "
                    "only the head (a linear probe)", cfg.freeze_epochs, cfg.epochs)
    check_run(cfg)
    return cfg


def check_no_ssl_leak(table, ssl_split_file: Path) -> None:
    """SimCLR must not have seen this run's val or test images, even without their labels, nor
    a copy of one: pictures are compared by content (the table's duplicate groups), not by path.

    Under `--duplicates keep` (the study's leaky protocol, asked for on purpose) copies are only
    a warning; the very same file is refused under either policy."""
    import pandas as pd

    if not ssl_split_file.is_file():
        return
    ssl = pd.read_csv(ssl_split_file, dtype=str, keep_default_na=False)
    seen = set(ssl.loc[ssl["split"] == "train", "path"])
    held_out = table.samples[table.samples["split"].isin(["val", "test"])]
    held_out_paths = set(held_out["path"])
    leaks = [(p, p) for p in sorted(held_out_paths & seen)]
    copies = []
    for group in table.duplicates:
        trained = [p for p in group.paths if p in seen]
        held = [p for p in group.paths if p in held_out_paths]
        copies += [(t, h) for t in trained[:1] for h in held if t != h]
    if copies and table.duplicate_policy == "keep" and not leaks:
        log.warning("--duplicates keep: the SSL backbone was pretrained on %d copies of images "
                    "this run holds out for val/test (first: %s, a copy of %s)", len(copies),
                    *copies[0])
        return
    leaks += copies
    if leaks:
        trained, held = leaks[0]
        first = held if trained == held else f"{trained}, a copy of {held}"
        raise MedsslError(
            f"The SSL backbone was pretrained on {len(leaks)} image(s) that this run holds out for "
            f"val/test, or copies of them (first: {first}; the SSL split is {ssl_split_file}).\n"
            f"Fix: finetune with --split-file {ssl_split_file}, or pretrain again with this run's "
            "split and duplicate policy (--duplicates drop keeps copies of held-out images out of "
            "SimCLR).")


def check_supervised_prior(source: dict, cfg: FinetuneConfig) -> None:
    """A prior pretrained with labels (supcon) may have seen no label this run may not use: at a
    label fraction below 1, it must come from the same fraction and seed (the same labelled
    subset); a prior from fewer labels is always fair."""
    if not source.get("supervised_prior"):
        return
    fraction, seed = source.get("ssl_label_fraction", 1.0), source.get("ssl_seed")
    if fraction > cfg.label_fraction or (cfg.label_fraction < 1 and fraction < 1 and seed != cfg.seed):
        raise MedsslError(
            f"{source['ssl_checkpoint']} was pretrained with {source['method']} on the labels of "
            f"{fraction:g} of the train images (seed {seed}); this run may use only {cfg.label_fraction:g} "
            f"(seed {cfg.seed}), so the prior would bring labels the run does not have. Fix: "
            f"pretrain with --label-fraction {cfg.label_fraction:g} --seed {cfg.seed}.")


def run_finetune(cfg: FinetuneConfig) -> Path:
    from medssl.runs import cleaned_up_on_failure
    from medssl.training.distributed import is_rank_zero

    if cfg.lr_grid:  # a search is several runs: the experiments layer runs it
        raise MedsslError("--lr-grid runs one finetuning per learning rate: use "
                          "medssl.experiments.lr_search.finetune_with_lr_grid (the CLI does), or "
                          "set one --lr here.")
    cfg = resolve(cfg)  # every flag checked: nothing is written before this passes
    with cleaned_up_on_failure(Path(cfg.out), owner=is_rank_zero()):
        return _train(cfg)


def _train(cfg: FinetuneConfig) -> Path:
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint

    from medssl import __version__
    from medssl.data import prepare
    from medssl.data.splits import label_subset, write_split_csv
    from medssl.data.transforms import Normalize, eval_crop, finetune_crops
    from medssl.models import feature_dim
    from medssl.atomic import atomic_write
    from medssl.models.priors import load_prior
    from medssl.presets import preset_for
    from medssl.training.classifier import Classifier
    from medssl.training.loaders import (AtomicCheckpointIO, SamplerEpochCheck, default_precision,
                                         every_epoch_checkpoint, fit, make_loader, open_cache,
                                         resume_point)
    from medssl.training.metrics import classification_metrics, metric_options
    from medssl.training.distributed import (barrier, is_rank_zero, scaled_lr, scaling_rule,
                                             trainer_options)
    from medssl.training.run_logs import epoch_curves, run_loggers

    out = Path(cfg.out)
    writer = is_rank_zero()  # in a distributed run, rank 0 alone writes files
    resume_from = open_run_folder(out, FINETUNE_OUTPUTS, cfg.force, cfg.resume, owner=writer)
    resume_at = resume_point(resume_from)
    started = time.time()
    # Seeded before anything random is drawn: the head, and M1's random backbone.
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    # The prior first: a missing SSL backbone or ImageNet file should fail before data work.
    backbone, source = load_prior(cfg.model, cfg.arch, cfg.dataset, cfg.ssl_checkpoint,
                                  cfg.imagenet_weights, cfg.allow_other_dataset, Path(cfg.base))
    split_file = cfg.split_file
    if cfg.resume and (out / "split.csv").is_file():
        split_file = str(out / "split.csv")
    # An SSL backbone of this dataset brings its split (nothing it trained on is held out here);
    # one of another dataset (--allow-other-dataset) never saw these images: this dataset's own.
    same_data = "ssl_split_file" in source and source.get("ssl_dataset") == cfg.dataset
    if not split_file and same_data and Path(source["ssl_split_file"]).is_file():
        split_file = source["ssl_split_file"]  # the split SimCLR trained on: nothing held out leaks
    table, data_info = prepare(replace(data_config(cfg), split_file=split_file),
                               skip_bad_images=cfg.skip_bad_images, workers=cfg.workers,
                               progress=cfg.progress)
    if same_data:
        check_no_ssl_leak(table, Path(source["ssl_split_file"]))
    check_supervised_prior(source, cfg)
    labelled = label_subset(table.samples, cfg.label_fraction, cfg.seed)
    # Model selection at a label fraction sees as few val labels as a user with that fraction
    # would have: the same fraction of val, stratified, at least one image per class.
    val_rows = label_subset(table.samples, 1.0 if cfg.full_val else cfg.label_fraction, cfg.seed,
                            "val")
    train_eval_rows = train_eval_sample(labelled, len(val_rows), cfg.seed)
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        write_split_csv(table.samples, out / "split.csv", cfg.duplicates)
        if cfg.label_fraction < 1:
            write_split_csv(labelled, out / "labelled_train.csv", cfg.duplicates)
            if not cfg.full_val:
                write_split_csv(val_rows, out / "selection_val.csv", cfg.duplicates)

    p = preset_for(cfg.dataset)
    plain = eval_crop(cfg.image_size)
    n_classes = len(table.classes)
    cache = open_cache(table, cfg)
    train_loader = make_loader(table, labelled, finetune_crops(cfg.image_size, p.flips), cfg, cache,
                               train=True, balanced=cfg.balanced_sampling,
                               start_epoch=resume_at[0] if resume_at else 0)
    # For the predictions of the selected checkpoint: every image, in every process.
    loaders = {split: make_loader(table, rows, plain, cfg, cache)
               for split, rows in (("train", labelled), ("val", val_rows),
                                   ("test", table.samples[table.samples["split"] == "test"]))}
    # Validation while training: each process a share, metrics reduced over them; and the same
    # clean pass over a fixed sample of the labelled train images (train_eval, for the gap).
    val_loaders = [make_loader(table, rows, plain, cfg, cache, shard=True)
                   for rows in (val_rows, train_eval_rows)]
    for split, loader in loaders.items():
        if len(loader.dataset) == 0:
            raise MedsslError(f"The {split} split of {cfg.dataset} is empty. Fix: check the split "
                              "with `medssl check`, or change --val-fraction/--test-fraction.")
    weights = None
    if cfg.class_weights:
        counts = torch.bincount(torch.tensor(train_loader.dataset.targets), minlength=n_classes)
        weights = len(labelled) / (n_classes * counts.clamp_min(1).float())

    objective, objective_record = training_objective(cfg, table)
    module = Classifier(backbone, feature_dim(cfg.arch), table.classes, lr=cfg.lr,
                        weight_decay=cfg.weight_decay, head=cfg.head,
                        freeze_epochs=cfg.freeze_epochs, bn_eval=cfg.bn_eval, class_weights=weights,
                        input_transform=Normalize(p.mean, p.std), compile_model=cfg.compile,
                        seed=cfg.seed, lr_scaling=cfg.lr_scaling, lr_schedule=cfg.lr_schedule,
                        objective=objective)
    monitor, mode = f"val/{cfg.select}", SELECT_METRICS[cfg.select]
    best = ModelCheckpoint(dirpath=str(out / "checkpoints"), filename="best", monitor=monitor,
                           mode=mode, save_top_k=1, enable_version_counter=False,
                           save_on_train_epoch_end=True)
    trainer = pl.Trainer(
        max_epochs=cfg.epochs, max_steps=cfg.max_steps, accelerator=cfg.accelerator,
        precision=cfg.precision or default_precision(), **trainer_options(cfg),
        default_root_dir=str(out), deterministic=cfg.deterministic or None,
        logger=run_loggers(out, resume_at),
        callbacks=[best, every_epoch_checkpoint(out), SamplerEpochCheck()],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=cfg.progress, log_every_n_steps=1, enable_model_summary=False,
        num_sanity_val_steps=0)
    fit(trainer, out, module, train_loader, val_loaders, ckpt_path=resume_from,
        weights_only=True)

    # Only now is the test split looked at: by the last epoch's weights (recorded beside, to
    # show what selection changed; never used to select), then once by the selected checkpoint.
    # (Every process predicts, as a distributed Trainer needs them all; rank 0 writes.)
    last_test = trainer.predict(module, loaders["test"], return_predictions=True)
    selected = torch.load(best.best_model_path, map_location="cpu", weights_only=True)
    module.load_state_dict(selected["state_dict"])
    names = list(loaders)
    outputs = trainer.predict(module, [loaders[s] for s in names], return_predictions=True)
    if trainer.is_global_zero:
        predictions = {split: torch.cat(batches) for split, batches in zip(names, outputs)}
        truth = {split: torch.tensor(loaders[split].dataset.targets) for split in names}
        task = metric_options(p, table.classes, predictions["val"], truth["val"])
        results = {split: classification_metrics(predictions[split], truth[split], table.classes,
                                                 **task) for split in names}
        results["test_last"] = classification_metrics(torch.cat(last_test), truth["test"],
                                                      table.classes, **task)
        for split in ("val", "test"):
            write_predictions(out / f"{split}_predictions.csv", loaders[split].dataset, table,
                              predictions[split])
        for logger in trainer.loggers:
            logger.log_metrics({f"selected/test_{k}": results["test"][k]
                                for k in ("acc", "balanced_acc", "macro_f1", "auroc", "loss")},
                               step=trainer.global_step)
            logger.save()

        metrics = {
            "dataset": cfg.dataset, "model": cfg.model, "seed": cfg.seed,
            "label_fraction": cfg.label_fraction, "labelled_train_images": len(labelled),
            "selection": {"metric": monitor, "mode": mode, "epoch": int(selected["epoch"]) + 1,
                          "value": float(best.best_model_score),
                          "val_images": len(val_rows),
                          "val": "full" if cfg.full_val or cfg.label_fraction >= 1 else
                                 f"fraction {cfg.label_fraction:g} of val (selection_val.csv)"},
            "epochs_trained": trainer.current_epoch, "classes": table.classes,
            "world_size": trainer.world_size, "lr": cfg.lr,
            "lr_used": scaled_lr(cfg.lr, trainer.world_size, cfg.lr_scaling),
            "lr_scaling": scaling_rule(cfg.lr_scaling, "adam"), "lr_schedule": cfg.lr_schedule,
            "train": results["train"], "val": results["val"], "test": results["test"],
            "test_last": results["test_last"], "objective": objective_record,
            **(cfg.lr_choice or {"lr_selected": None, "lr_grid": None}),
            "overfitting": overfitting(epoch_curves(out), int(selected["epoch"]) + 1),
            # No batch is dropped: every epoch sees every labelled image once (or, cut short by
            # --max-steps, its steps' batches).
            "compute": compute_record(source, trainer, wall_time_s=time.time() - started,
                                      images_seen=trainer.current_epoch * len(labelled)
                                      if cfg.max_steps < 0 else
                                      trainer.global_step * train_loader.batch_size),
            "prior": source, "split_file": "split.csv", "data": data_info,
            "medssl_version": __version__, "wall_time_s": round(time.time() - started, 1),
            "config": asdict(cfg),
        }
        atomic_write(out / "metrics.json",
                     lambda path: path.write_text(json.dumps(metrics, indent=2)))
        mark_finished(out, FINETUNE_OUTPUTS)
        log.info("%s %s seed %d: selected epoch %d, test acc %.3f, balanced acc %.3f",
                 cfg.dataset, cfg.model, cfg.seed, metrics["selection"]["epoch"],
                 results["test"]["acc"], results["test"]["balanced_acc"])
    barrier()  # the other ranks return once the results are there
    return out


def training_objective(cfg: FinetuneConfig, table):
    """Plain cross-entropy, or distillation from `cfg.teachers`; and its record for metrics.json."""
    from medssl.training.objectives import get_objective

    if not cfg.teachers:
        return get_objective("plain")(), {"name": "plain"}
    from medssl.training.teachers import load_teacher

    loaded = [load_teacher(run, table.samples, table.classes, cfg.dataset, cfg.image_size)
              for run in cfg.teachers]
    objective = get_objective("distillation")([t for t, _ in loaded], cfg.kd_temperature,
                                              cfg.kd_alpha)
    return objective, {"name": "distillation", "temperature": cfg.kd_temperature,
                       "alpha": cfg.kd_alpha, "teachers": [info for _, info in loaded]}


def train_eval_sample(labelled, size: int, seed: int):
    """The labelled train images of the train_eval pass: a fixed seeded sample as large as the
    val split used for selection (all of them when there are fewer), so the two are measured
    with the same precision."""
    if len(labelled) <= size:
        return labelled
    return labelled.sample(n=size, random_state=seed).sort_index()


def overfitting(curves, selected_epoch: int) -> dict:
    """The generalisation gap (train_eval minus val, accuracy and loss) at the selected and at
    the last epoch, and how far val loss rose after its minimum. Epochs count from 1."""
    needed = ["train_eval/acc", "train_eval/loss", "val/acc", "val/loss"]
    if curves.empty or any(c not in curves for c in needed):
        return {}
    last = int(curves.index.max()) + 1

    def gap(epoch: int, metric: str) -> float:
        row = curves.loc[epoch - 1]
        return float(row[f"train_eval/{metric}"] - row[f"val/{metric}"])

    val_loss = curves["val/loss"].dropna()
    return {"selected_epoch": selected_epoch, "last_epoch": last,
            "acc_gap_selected": gap(selected_epoch, "acc"),
            "loss_gap_selected": gap(selected_epoch, "loss"),
            "acc_gap_last": gap(last, "acc"), "loss_gap_last": gap(last, "loss"),
            "val_loss_min": float(val_loss.min()), "val_loss_last": float(val_loss.iloc[-1]),
            "val_loss_rise": float(val_loss.iloc[-1] - val_loss.min())}


def compute_record(source: dict, trainer, wall_time_s: float, images_seen: int) -> dict:
    """What the model cost: images seen in its pretraining (from backbone.json) and finetuning,
    and GPU-hours where GPUs were used (None on a CPU: not measured)."""
    from medssl.training.distributed import gpu_hours

    return {"finetune_images_seen": images_seen,
            "pretrain_images_seen": source.get("ssl_images_seen", 0),
            "finetune_gpu_hours": gpu_hours(trainer, wall_time_s),
            "pretrain_gpu_hours": source.get("ssl_gpu_hours")}


def write_predictions(path: Path, dataset, table, probs) -> None:
    import pandas as pd

    from medssl.atomic import atomic_write

    frame = pd.DataFrame(probs.numpy(), columns=[f"prob_{c}" for c in table.classes])
    frame.insert(0, "label", [table.classes[t] for t in dataset.targets])
    frame.insert(0, "path", dataset.rel_paths)
    atomic_write(path, lambda p: frame.to_csv(p, index=False))

