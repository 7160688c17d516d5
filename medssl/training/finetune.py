"""A finetuning run: one of M1-M4 on one dataset, one seed, one label fraction; or a student
distilled from finished runs (`teachers`), or a cohort trained by deep mutual learning (`mutual`:
one run folder per member inside the cohort's, which holds their ensemble).

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
from medssl.data.prepare import data_config
from medssl.options import DataOptions, HardwareOptions, ModelOptions, RecipeOptions
from medssl.names import SELECT_METRICS, dml_name, kd_name, member_folder, model_folder, prior_of
from medssl.runs import (FINETUNE_OUTPUTS, best_checkpoint, dataset_dir, finetune_dir, mark_finished,
                         open_run_folder)
from medssl.training.run_logs import epoch_curves

log = logging.getLogger("medssl")


@dataclass(kw_only=True)
class FinetuneConfig(DataOptions, HardwareOptions, ModelOptions, RecipeOptions):
    """One finetuning run: the shared parts (medssl.options), and what only this run has."""

    model: str = ""  # the prior: M1-M4 or M2-<method>/M4-<method>; empty for a cohort
    ssl_checkpoint: str | None = None
    allow_other_dataset: bool = False
    seed: int = 0
    label_fraction: float = 1.0
    base: str | None = None  # the dataset's run folder (default runs/<dataset>)
    # Set by an lr search (experiments.lr_search) for the seeds that reuse its choice.
    lr_choice: dict | None = None
    # Knowledge distillation: finished runs on this split whose averaged, temperature-softened
    # predictions the student also learns from (training.objectives.distillation).
    # (--kd-temperature and --kd-alpha are in the recipe: compare's --distill runs use them too.)
    teachers: list[str] | None = None
    # Deep mutual learning: these priors trained together as a cohort (training.cohort).
    mutual: list[str] | None = None
    member_checkpoints: dict[str, str] | None = None  # a member's SSL backbone (compare's)
    member_lrs: dict[str, float] | None = None  # a member's lr (compare's lr search); else lr
    out: str | None = None
    resume: bool = False
    force: bool = False


def resolve(cfg: FinetuneConfig) -> FinetuneConfig:
    """Fill every unset value from the dataset's preset; check the ranges flags cannot."""
    from medssl.presets import preset_for
    from medssl.training.checks import check_run, imagenet_weights_for
    from medssl.training.loaders import fill_training_defaults

    p = preset_for(cfg.dataset)
    fill_training_defaults(cfg, p, p.finetune_epochs, p.finetune_batch_size, p.finetune_lr)
    cfg.base = cfg.base or str(dataset_dir(cfg.dataset))
    if not 0 < cfg.label_fraction <= 1:
        raise MedsslError(f"--label-fraction must lie in (0, 1], got {cfg.label_fraction}.")
    if cfg.select not in SELECT_METRICS:
        raise MedsslError(f"--select '{cfg.select}' is not one of {', '.join(SELECT_METRICS)}.")
    check_members(cfg)
    check_distillation(cfg)
    if cfg.teachers is not None and not cfg.teachers:
        raise MedsslError("--teacher needs at least one finished run.")
    name = run_name(cfg)  # a teacher that is no finished run is refused here, by its folder
    cfg.out = cfg.out or str(finetune_dir(Path(cfg.base), name, cfg.seed, cfg.label_fraction))
    imagenet = [m for m in members_of(cfg) if prior_of(m).init == "imagenet"]
    cfg.imagenet_weights = imagenet_weights_for(
        "imagenet" if imagenet else "random", cfg.imagenet_weights,
        f"{name} ({prior_of(cfg.model).title})" if not cfg.mutual else
        f"every member of {name}")
    if cfg.freeze_epochs >= cfg.epochs:
        log.warning("--freeze-epochs %d is not below --epochs %d: the backbone is never trained, "
                    "only the head (a linear probe)", cfg.freeze_epochs, cfg.epochs)
    check_run(cfg)
    return cfg


def check_distillation(recipe) -> None:
    """--kd-alpha and --kd-temperature, for a finetuning run or a grid's recipe."""
    if not 0 <= recipe.kd_alpha <= 1:
        raise MedsslError(f"--kd-alpha must lie in [0, 1], got {recipe.kd_alpha}.")
    if recipe.kd_temperature <= 0:
        raise MedsslError(f"--kd-temperature must be above 0, got {recipe.kd_temperature}.")


def check_members(cfg: FinetuneConfig) -> None:
    """One model (`--model`), or a cohort of two or more different ones (`--mutual`)."""
    if cfg.mutual is None:
        if not cfg.model:
            raise MedsslError("Which model? Fix: pass --model (M1-M4, M2-<method>), or --mutual "
                              "with two or more models to train as a cohort.")
        prior_of(cfg.model)
        return
    members = list(cfg.mutual)
    if cfg.model:
        raise MedsslError(f"--model {cfg.model} and --mutual {' '.join(members)}: a cohort names "
                          "its members with --mutual alone. Fix: drop --model.")
    if len(members) < 2:
        raise MedsslError(f"--mutual {' '.join(members)}: a cohort needs two or more models; one "
                          "alone is plain finetuning. Fix: --mutual M3 M4, or --model "
                          f"{members[0] if members else 'M1'}.")
    repeated = sorted({m for m in members if members.count(m) > 1})
    if repeated:
        raise MedsslError(f"--mutual names {', '.join(repeated)} more than once; each member of a "
                          "cohort is a different prior. Fix: name each model once.")
    if cfg.teachers:
        raise MedsslError("--teacher and --mutual cannot be combined: distil into one model, or "
                          "train a cohort. Fix: drop one of them.")
    ssl_members = [m for m in members if prior_of(m).ssl]
    if cfg.ssl_checkpoint and len(ssl_members) > 1:
        raise MedsslError(f"--ssl-checkpoint names one backbone, and {', '.join(ssl_members)} each "
                          "need their own. Fix: drop --ssl-checkpoint: each member finds its "
                          "pretraining in the dataset's run folder (ssl-<init>, "
                          "ssl-<method>-<init>).")


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
            "pretraining).")


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


def run_name(cfg: FinetuneConfig) -> str:
    """The model's name in the table: its prior (M1, M2-byol), a distilled student
    (KD(M3→M1)) or a mutual-learning cohort's ensemble (DML(M3+M4))."""
    if cfg.mutual:
        return dml_name(cfg.mutual)
    if cfg.teachers:
        from medssl.training.teachers import teacher_model

        return kd_name([teacher_model(run) for run in cfg.teachers], cfg.model)
    return cfg.model


def members_of(cfg: FinetuneConfig) -> list[str]:
    """The networks a run trains: the cohort's members, or its one model."""
    return list(cfg.mutual) if cfg.mutual else [cfg.model]



def _train(cfg: FinetuneConfig) -> Path:
    import shutil

    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint

    from medssl.data import prepare
    from medssl.data.splits import label_subset, write_split_csv
    from medssl.data.transforms import Normalize, eval_crop, finetune_crops
    from medssl.models import feature_dim
    from medssl.models.priors import load_prior
    from medssl.presets import preset_for
    from medssl.training.classifier import Classifier
    from medssl.training.loaders import (AtomicCheckpointIO, SamplerEpochCheck, default_precision,
                                         every_epoch_checkpoint, fit, make_loader, open_cache,
                                         resume_point)
    from medssl.training.distributed import barrier, is_rank_zero, trainer_options
    from medssl.training.run_logs import run_loggers

    out = Path(cfg.out)
    writer = is_rank_zero()  # in a distributed run, rank 0 alone writes files
    resume_from = open_run_folder(out, FINETUNE_OUTPUTS, cfg.force, cfg.resume, owner=writer)
    members = members_of(cfg)
    if cfg.mutual and writer:  # members' folders are written from the cohort's checkpoints, last
        for member in members:
            shutil.rmtree(member_folder(out, member), ignore_errors=True)
    resume_at = resume_point(resume_from)
    started = time.time()
    # Seeded before anything random is drawn: the heads, and random backbones (a cohort's
    # members draw theirs one after the other, so two random inits differ).
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    # The priors first: a missing SSL backbone or ImageNet file should fail before data work.
    sources = {}
    backbones = {}
    for member in members:
        backbones[member], sources[member] = load_prior(
            member, cfg.arch, cfg.dataset, (cfg.member_checkpoints or {}).get(member,
                                                                            cfg.ssl_checkpoint),
            cfg.imagenet_weights, cfg.allow_other_dataset, Path(cfg.base))
    split_file = cfg.split_file
    if cfg.resume and (out / "split.csv").is_file():
        split_file = str(out / "split.csv")
    # An SSL backbone of this dataset brings its split (nothing it trained on is held out here);
    # one of another dataset (--allow-other-dataset) never saw these images: this dataset's own.
    same_data = {m: "ssl_split_file" in s and s.get("ssl_dataset") == cfg.dataset
                 for m, s in sources.items()}
    for member in members:
        ssl_split = sources[member].get("ssl_split_file")
        if not split_file and same_data[member] and Path(ssl_split).is_file():
            split_file = ssl_split  # the split SimCLR trained on: nothing held out leaks
    table, data_info = prepare(replace(data_config(cfg), split_file=split_file),
                               skip_bad_images=cfg.skip_bad_images, workers=cfg.workers,
                               progress=cfg.progress)
    for member in members:
        if same_data[member]:
            check_no_ssl_leak(table, Path(sources[member]["ssl_split_file"]))
        check_supervised_prior(sources[member], cfg)
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

    def classifier(member: str, **kwargs) -> Classifier:
        return Classifier(backbones[member], feature_dim(cfg.arch), table.classes,
                          lr=(cfg.member_lrs or {}).get(member, cfg.lr),
                          weight_decay=cfg.weight_decay, head=cfg.head,
                          freeze_epochs=cfg.freeze_epochs, bn_eval=cfg.bn_eval,
                          class_weights=weights, compile_model=cfg.compile, seed=cfg.seed,
                          lr_scaling=cfg.lr_scaling, lr_schedule=cfg.lr_schedule, **kwargs)

    def selection_checkpoint(tag: str, filename: str, **kwargs) -> ModelCheckpoint:
        return ModelCheckpoint(dirpath=str(best_checkpoint(out).parent), filename=filename,
                               monitor=f"{tag}val/{cfg.select}", mode=SELECT_METRICS[cfg.select],
                               save_top_k=1, enable_version_counter=False,
                               save_on_train_epoch_end=True, **kwargs)

    if cfg.mutual:
        from medssl.training.cohort import Cohort

        module = Cohort({m: classifier(m) for m in members}, objective,
                        input_transform=Normalize(p.mean, p.std), seed=cfg.seed,
                        lr_schedule=cfg.lr_schedule)
        # Each member selected on val on its own; weights only (the optimiser lives in last.ckpt).
        selectors = [selection_checkpoint(f"{m}/", f"best-{model_folder(m)}",
                                          save_weights_only=True) for m in members]
    else:
        module = classifier(cfg.model, input_transform=Normalize(p.mean, p.std),
                            objective=objective)
        # Weights only: the optimiser lives in last.ckpt; best.ckpt is read for its weights alone
        # (predictions, teachers), and a third of the bytes makes every save that much cheaper.
        selectors = [selection_checkpoint("", best_checkpoint(out).stem, save_weights_only=True)]
    trainer = pl.Trainer(
        max_epochs=cfg.epochs, max_steps=cfg.max_steps, accelerator=cfg.accelerator,
        precision=cfg.precision or default_precision(), **trainer_options(cfg),
        default_root_dir=str(out), deterministic=cfg.deterministic or None,
        logger=run_loggers(out, resume_at),
        callbacks=[*selectors, every_epoch_checkpoint(out, cfg.checkpoint_interval), SamplerEpochCheck()],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=cfg.progress, log_every_n_steps=1, enable_model_summary=False,
        num_sanity_val_steps=0)
    fit(trainer, out, module, train_loader, val_loaders, ckpt_path=resume_from,
        weights_only=True)

    # Only now is the test split looked at: by the last epoch's weights (recorded beside, to
    # show what selection changed; never used to select), then once by the selected checkpoint.
    # (Every process predicts, as a distributed Trainer needs them all; rank 0 writes.)
    # Probabilities come as (networks, images, classes): a single model is a cohort of one here.
    def predict(loader_list):
        batches = trainer.predict(module, loader_list, return_predictions=True)
        if len(loader_list) == 1:
            batches = [batches]
        return [torch.cat(b, dim=1) if cfg.mutual else torch.cat(b)[None] for b in batches]

    (last_test,) = predict([loaders["test"]])
    chosen = []
    for k, selector in enumerate(selectors):
        selected = torch.load(selector.best_model_path, map_location="cpu", weights_only=True)
        if cfg.mutual:
            module.members[k].load_state_dict(module.member_state(k, selected["state_dict"]))
        else:
            module.load_state_dict(selected["state_dict"])
        chosen.append((int(selected["epoch"]) + 1, float(selector.best_model_score)))
    names = list(loaders)
    probs = dict(zip(names, predict([loaders[s] for s in names])))
    if trainer.is_global_zero:
        run = RunResults(cfg, table, p, loaders, labelled, val_rows, data_info, trainer,
                         train_loader, started)
        if cfg.mutual:
            _write_cohort(run, module, out, members, sources, probs, last_test, chosen,
                          objective_record)
        else:
            run.write(out, run_name(cfg), {s: v[0] for s, v in probs.items()}, last_test[0],
                      run.selection(*chosen[0]), sources[cfg.model], objective_record,
                      epoch_curves(out), lr=cfg.lr,
                      base_models=[cfg.model] if cfg.teachers else None)
    barrier()  # the other ranks return once the results are there
    return out


def _write_cohort(run: RunResults, module, out: Path, members: list[str], sources: dict,
                  probs: dict, last_test, chosen: list[tuple[int, float]],
                  objective_record: dict) -> None:
    """Each member's run folder (its selected weights, curves, predictions and metrics), then
    the ensemble's (the mean of the members' selected probabilities) in the cohort's folder,
    whose completion marker comes last of all."""
    import shutil

    import torch

    from medssl.atomic import atomic_write

    import pandas as pd

    curves = pd.read_csv(out / "logs" / "metrics.csv")  # written by rank 0, this process
    member_runs = {}
    for k, member in enumerate(members):
        folder = member_folder(out, member)
        best_checkpoint(folder).parent.mkdir(parents=True, exist_ok=True)
        for name in ("split.csv", "labelled_train.csv", "selection_val.csv"):
            if (out / name).is_file():
                shutil.copy(out / name, folder / name)
        # The member's selected weights as a single run's best.ckpt: loadable as a teacher.
        state = module.member_state(k, module.state_dict())
        atomic_write(best_checkpoint(folder), lambda path: torch.save(
            {"state_dict": {key: v.cpu() for key, v in state.items()},
             "epoch": chosen[k][0] - 1}, path))
        # Its curves: the cohort's log columns under its name, as a single run logs them.
        prefix = f"{member}/"
        own = curves[[c for c in curves if c in ("epoch", "step") or c.startswith(prefix)]]
        own = own.rename(columns=lambda c: c[len(prefix):] if c.startswith(prefix) else c)
        (folder / "logs").mkdir(exist_ok=True)
        atomic_write(folder / "logs" / "metrics.csv", lambda path: own.to_csv(path, index=False))
        record = {**objective_record, "cohort_run": str(out)}
        run.write(folder, dml_name(members, member), {s: v[k] for s, v in probs.items()},
                  last_test[k], run.selection(*chosen[k]), sources[member], record,
                  epoch_curves(folder), lr=module.members[k].hparams.lr, base_models=[member],
                  log_prefix=f"{member}/")
        member_runs[member] = str(folder)
    mean = {s: v.mean(dim=0) for s, v in probs.items()}
    selection = {**run.selection(None, None), "members": {m: chosen[k][0] for k, m
                                                          in enumerate(members)}}
    ssl_seeds = [s["ssl_seed"] for s in sources.values() if s.get("ssl_seed") is not None]
    ensemble_source = {"model": dml_name(members), "members": sources,
                       # what the report says its sd includes: its SSL members' pretraining
                       "ssl_seed": ssl_seeds[0] if ssl_seeds else None,
                       "ssl_images_seen": sum(s.get("ssl_images_seen") or 0
                                              for s in sources.values())}
    lrs = {m: module.members[k].hparams.lr for k, m in enumerate(members)}
    run.write(out, dml_name(members), mean, last_test.mean(dim=0), selection, ensemble_source,
              {**objective_record, "member_runs": member_runs, "member_lrs": lrs},
              epoch_curves(out), lr=lrs[members[0]] if len(set(lrs.values())) == 1 else None,
              base_models=members)


class RunResults:
    """What every run folder of one training writes: metrics of the predictions, the prediction
    CSVs, metrics.json and, last, the completion marker."""

    def __init__(self, cfg, table, preset, loaders, labelled, val_rows, data_info, trainer,
                 train_loader, started: float):
        self.cfg, self.table, self.preset, self.loaders = cfg, table, preset, loaders
        self.labelled, self.val_rows, self.data_info = labelled, val_rows, data_info
        self.trainer, self.train_loader, self.started = trainer, train_loader, started

    def selection(self, epoch: int | None, value: float | None) -> dict:
        cfg = self.cfg
        return {"metric": f"val/{cfg.select}", "mode": SELECT_METRICS[cfg.select],
                "epoch": epoch, "value": value, "val_images": len(self.val_rows),
                "val": "full" if cfg.full_val or cfg.label_fraction >= 1 else
                       f"fraction {cfg.label_fraction:g} of val (selection_val.csv)"}

    def write(self, out: Path, name: str, probs: dict, last_test, selection: dict, source: dict,
              objective: dict, curves, lr: float | None, base_models: list[str] | None,
              log_prefix: str = "") -> None:
        import torch

        from medssl import __version__
        from medssl.atomic import atomic_write
        from medssl.training.distributed import scaled_lr, scaling_rule
        from medssl.training.metrics import classification_metrics, metric_options

        cfg, table, trainer = self.cfg, self.table, self.trainer
        truth = {split: torch.tensor(self.loaders[split].dataset.targets) for split in probs}
        task = metric_options(self.preset, table.classes, probs["val"], truth["val"])
        results = {split: classification_metrics(probs[split], truth[split], table.classes,
                                                 **task) for split in probs}
        results["test_last"] = classification_metrics(last_test, truth["test"], table.classes,
                                                      **task)
        for split in ("val", "test"):
            write_predictions(out / f"{split}_predictions.csv", self.loaders[split].dataset,
                              table, probs[split])
        for logger in trainer.loggers:
            logger.log_metrics({f"selected/{log_prefix}test_{k}": results["test"][k]
                                for k in ("acc", "balanced_acc", "macro_f1", "auroc", "loss")},
                               step=trainer.global_step)
            logger.save()
        wall = time.time() - self.started
        metrics = {
            "dataset": cfg.dataset, "model": name, "seed": cfg.seed,
            "label_fraction": cfg.label_fraction, "labelled_train_images": len(self.labelled),
            "selection": selection,
            "epochs_trained": trainer.current_epoch, "classes": table.classes,
            "world_size": trainer.world_size, "lr": lr,
            "lr_used": None if lr is None else scaled_lr(lr, trainer.world_size,
                                                         cfg.lr_scaling),
            "lr_scaling": scaling_rule(cfg.lr_scaling, "adam"), "lr_schedule": cfg.lr_schedule,
            "train": results["train"], "val": results["val"], "test": results["test"],
            "test_last": results["test_last"], "objective": objective,
            # What this model is compared with as its own base: a distilled student with its
            # prior trained alone, a cohort member likewise, a cohort's ensemble with the
            # ensemble of its members trained alone (report.tables).
            **({"base_models": base_models} if base_models else {}),
            **(cfg.lr_choice or {"lr_selected": None, "lr_grid": None}),
            "overfitting": overfitting(curves, selection["epoch"]),
            # No batch is dropped: every epoch sees every labelled image once (or, cut short by
            # --max-steps, its steps' batches).
            "compute": compute_record(source, trainer, wall_time_s=wall,
                                      images_seen=trainer.current_epoch * len(self.labelled)
                                      if cfg.max_steps < 0 else
                                      trainer.global_step * self.train_loader.batch_size),
            "prior": source, "split_file": "split.csv", "data": self.data_info,
            "medssl_version": __version__, "wall_time_s": round(wall, 1),
            "config": {**asdict(cfg), **({"model": name} if cfg.mutual else {})},
        }
        atomic_write(out / "metrics.json", lambda path: path.write_text(json.dumps(metrics,
                                                                                   indent=2)))
        mark_finished(out, FINETUNE_OUTPUTS)
        log.info("%s %s seed %d: selected epoch %s, test acc %.3f, balanced acc %.3f",
                 cfg.dataset, name, cfg.seed, selection["epoch"] or "per member",
                 results["test"]["acc"], results["test"]["balanced_acc"])


def training_objective(cfg: FinetuneConfig, table):
    """Plain cross-entropy, distillation from `cfg.teachers`, or mutual learning in a cohort;
    and its record for metrics.json."""
    from medssl.training.objectives import get_objective

    if cfg.mutual:
        return get_objective("mutual")(), {"name": "mutual", "members": list(cfg.mutual)}
    if not cfg.teachers:
        return get_objective("plain")(), {"name": "plain"}
    from medssl.training.teachers import load_teacher

    loaded = [load_teacher(run, table.samples, table.classes, cfg.dataset, cfg.image_size)
              for run in cfg.teachers]
    objective = get_objective("distillation")([t for t, _ in loaded], cfg.kd_temperature,
                                              cfg.kd_alpha)
    return objective, {"name": "distillation", "temperature": cfg.kd_temperature,
                       "alpha": cfg.kd_alpha, "student": cfg.model,
                       "teachers": [info for _, info in loaded]}


def train_eval_sample(labelled, size: int, seed: int):
    """The labelled train images of the train_eval pass: a fixed seeded sample as large as the
    val split used for selection (all of them when there are fewer), so the two are measured
    with the same precision."""
    if len(labelled) <= size:
        return labelled
    return labelled.sample(n=size, random_state=seed).sort_index()


def overfitting(curves, selected_epoch: int | None) -> dict:
    """The generalisation gap (train_eval minus val, accuracy and loss) at the selected and at
    the last epoch, and how far val loss rose after its minimum. Epochs count from 1. A cohort's
    ensemble has no one selected epoch (each member has its own): its gaps at the last only."""
    needed = ["train_eval/acc", "train_eval/loss", "val/acc", "val/loss"]
    if curves.empty or any(c not in curves for c in needed):
        return {}
    last = int(curves.index.max()) + 1

    def gap(epoch: int | None, metric: str) -> float | None:
        if epoch is None:
            return None
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

