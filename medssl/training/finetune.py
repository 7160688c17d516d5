"""A finetuning run: one of M1-M4 on one dataset, one seed, one label fraction; or a student
distilled from finished runs (`teachers`), or a cohort trained by deep mutual learning (`mutual`:
one run folder per member inside the cohort's, which holds their ensemble).

Selection happens on val only (best val loss by default). The test split is predicted once, by the
selected checkpoint, after training. The run folder holds `metrics.json`, `test_predictions.csv`,
`val_predictions.csv`, `split.csv`, checkpoints, TensorBoard logs, a CSV of the per-epoch curves
(`logs/metrics.csv`) and, written last, the completion marker `finished.json`.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from medssl.data import prepare
from medssl.data.prepare import data_config
from medssl.data.splits import label_subset, write_split_csv
from medssl.data.transforms import Normalize, channel_stats, eval_crop, finetune_crops
from medssl.errors import MedsslError
from medssl.models import out_features
from medssl.identity import run_identity
from medssl.models.priors import load_prior, ssl_backbone_path
from medssl.names import PROTOCOLS, SELECT_METRICS, dml_name, kd_name, member_folder, prior_of
from medssl.options import DataOptions, HardwareOptions, ModelOptions, RecipeOptions
from medssl.presets import preset_for
from medssl.runs import (IDENTITY, FINETUNE_OUTPUTS, LABELLED, SELECTION_VAL, SPLIT, best_checkpoint,
                         cleaned_up_on_failure, dataset_dir, finetune_dir, member_checkpoint)
from medssl.training.checks import check_run, imagenet_weights_for
from medssl.training.classifier import Classifier
from medssl.training.cohort import Cohort
from medssl.training.distributed import barrier, is_rank_zero
from medssl.training.finetune_results import RunResults, write_cohort
from medssl.training.harness import RunStart, fit, keep_identity, make_trainer, open_run
from medssl.training.loaders import (fill_training_defaults, foundation_defaults, make_loader,
                                    open_cache, prior_file, run_stats)
from medssl.training.objectives import objective_for
from medssl.training.run_logs import end_loggers, epoch_curves
from medssl.training.teachers import teacher_model

log = logging.getLogger("medssl")


@dataclass(kw_only=True)
class Assigned:
    """What a grid (experiments.grid) assigns one of its runs beyond the flags a single run
    takes: none of it is a flag of `medssl finetune`."""

    lr_choice: dict | None = None  # the lr search this run's rate comes from (for metrics.json)
    member_checkpoints: dict[str, str] | None = None  # a cohort member's SSL backbone
    member_lrs: dict[str, float] | None = None  # a cohort member's rate (its search's); else lr


@dataclass(kw_only=True)
class FinetuneConfig(DataOptions, HardwareOptions, ModelOptions, RecipeOptions):
    """One finetuning run: the shared parts (medssl.options), and what only this run has."""

    model: str = ""  # the prior: M1-M4, M2-<method>/M4-<method>, F-<prior>; empty for a cohort
    ssl_checkpoint: str | None = None
    prior_weights: str | None = None  # an F-<prior>'s weights file (else the HF cache)
    allow_other_dataset: bool = False
    seed: int = 0
    label_fraction: float = 1.0
    base: str | None = None  # the dataset's run folder (default runs/<dataset>)
    # Knowledge distillation: finished runs on this split whose averaged, temperature-softened
    # predictions the student also learns from (training.objectives.distillation).
    # (--kd-temperature and --kd-alpha are in the recipe: compare's --distill runs use them too.)
    teachers: list[str] | None = None
    # Deep mutual learning: these priors trained together as a cohort (training.cohort).
    mutual: list[str] | None = None
    assigned: Assigned | None = None  # what a grid gives this run beyond flags (compare's)
    # finetune (every weight trained), or a frozen protocol on the backbone's features
    # (training.frozen: linear, knn; compare --protocols)
    protocol: str = "finetune"
    out: str | None = None
    resume: bool = False
    force: bool = False


def resolve(cfg: FinetuneConfig) -> FinetuneConfig:
    """Fill every unset value from the dataset's preset; check the ranges flags cannot."""
    p = preset_for(cfg.dataset)
    if cfg.protocol not in PROTOCOLS or (cfg.protocol != "finetune" and
                                         (cfg.teachers or cfg.mutual)):
        raise MedsslError(f"protocol {cfg.protocol!r}: one of {', '.join(PROTOCOLS)}; a frozen "
                          "protocol judges one prior alone (no teachers, no cohort).")
    check_foundation(cfg)
    fill_training_defaults(cfg, p, p.finetune_epochs, p.finetune_batch_size, p.finetune_lr)
    cfg.base = cfg.base or str(dataset_dir(cfg.dataset))
    if cfg.select not in SELECT_METRICS:
        raise MedsslError(f"--select '{cfg.select}' is not one of {', '.join(SELECT_METRICS)}.")
    check_members(cfg)
    if cfg.teachers is not None and not cfg.teachers:
        raise MedsslError("--teacher needs at least one finished run.")
    name = run_name(cfg)  # a teacher that is no finished run is refused here, by its folder
    cfg.out = cfg.out or str(finetune_dir(Path(cfg.base), name, cfg.seed, cfg.label_fraction,
                                          cfg.protocol))
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


def check_foundation(cfg: FinetuneConfig) -> None:
    """An F-<prior> run: on the prior's arch, its weights found before any work (an F-<prior>+
    <method> run starts from its SSL backbone instead); --prior-weights for those runs only."""
    foundation = [m for m in members_of(cfg) if m and prior_of(m).foundation]
    if cfg.mutual and foundation:
        raise MedsslError(f"--mutual {' '.join(cfg.mutual)}: a cohort's members share one "
                          f"network, and {foundation[0]} runs on its prior's. Fix: a cohort of "
                          "M1-M4 models.")
    if not foundation:
        if cfg.prior_weights:
            raise MedsslError(f"--prior-weights {cfg.prior_weights}: {cfg.model or 'a cohort'} "
                              "starts from no foundation prior. Fix: drop it, or --model "
                              "F-<prior>.")
        return
    prior = prior_of(cfg.model)
    if prior.ssl and cfg.prior_weights:
        raise MedsslError(f"--prior-weights {cfg.prior_weights}: {cfg.model} starts from its "
                          f"{prior.method} backbone, not from the prior's file. Fix: drop it (it "
                          f"goes to `medssl pretrain --init {prior.init}`).")
    foundation_defaults(cfg, prior.init, cfg.prior_weights, check_weights=not prior.ssl)


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
    if cfg.lr_grid:  # a search is several runs: the experiments layer runs it
        raise MedsslError("--lr-grid runs one finetuning per learning rate: use "
                          "medssl.experiments.lr_search.finetune_with_lr_grid (the CLI does), or "
                          "set one --lr here.")
    if cfg.protocol != "finetune":
        raise MedsslError(f"protocol {cfg.protocol} trains no network: training.frozen.run_frozen "
                          "runs it.")
    cfg = resolve(cfg)  # every flag checked: nothing is written before this passes
    with cleaned_up_on_failure(Path(cfg.out), owner=is_rank_zero()):
        return _train(cfg)


def run_name(cfg: FinetuneConfig) -> str:
    """The model's name in the table: its prior (M1, M2-byol), a distilled student
    (KD(M3→M1)) or a mutual-learning cohort's ensemble (DML(M3+M4))."""
    if cfg.mutual:
        return dml_name(cfg.mutual)
    if cfg.teachers:
        return kd_name([teacher_model(run) for run in cfg.teachers], cfg.model)
    return cfg.model


def assigned(cfg: FinetuneConfig) -> Assigned:
    """What the grid assigned the run; nothing for a single run."""
    return cfg.assigned or Assigned()


def members_of(cfg: FinetuneConfig) -> list[str]:
    """The networks a run trains: the cohort's members, or its one model."""
    return list(cfg.mutual) if cfg.mutual else [cfg.model]



@dataclass
class Splits:
    """The images of one finetuning: the dataset's table and what of it this run uses."""

    table: object  # data.prepare's SplitTable
    data_info: dict  # how the table was made (for metrics.json)
    labelled: object  # the labelled train rows (a label fraction of train)
    val_rows: object  # the val rows selection sees
    train_eval_rows: object  # a fixed sample of `labelled`, passed clean beside val


@dataclass
class Loaders:
    train: object  # augmented, shuffled (or class-balanced), resumable
    during: list  # val and train_eval while training: each process a share
    predict: dict  # train, val, test for the selected checkpoint: every image, every process


def _train(cfg: FinetuneConfig) -> Path:
    run = open_run(cfg, FINETUNE_OUTPUTS)
    keep_identity(run, identity_of(cfg))
    members = members_of(cfg)
    if cfg.mutual and run.writer:  # members' folders are written from the cohort's checkpoints, last
        for member in members:
            shutil.rmtree(member_folder(run.out, member), ignore_errors=True)
    # Seeded before anything random is drawn: the heads, and random backbones (a cohort's
    # members draw theirs one after the other, so two random inits differ).
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    # The priors first: a missing SSL backbone or ImageNet file should fail before data work.
    backbones, sources = load_priors(cfg, members)
    data = prepare_splits(cfg, run, sources)
    loaders = build_loaders(cfg, data, run)
    module, selectors, objective_record = build_module(cfg, data, loaders, backbones)
    trainer = make_trainer(cfg, run, checkpoints=selectors, num_sanity_val_steps=0)
    fit(trainer, run.out, module, loaders.train, loaders.during, ckpt_path=run.resume_from,
        weights_only=True)
    probs, last_test, chosen = predict_selected(cfg, trainer, module, selectors, loaders.predict)
    if trainer.is_global_zero:
        results = RunResults(cfg, data, loaders, trainer, run.started)
        if cfg.mutual:
            write_cohort(results, module, run.out, members, sources, probs, last_test, chosen,
                         objective_record)
        else:
            results.write(run.out, run_name(cfg), {s: v[0] for s, v in probs.items()},
                          last_test[0], results.selection(*chosen[0]), sources[cfg.model],
                          objective_record, epoch_curves(run.out), lr=cfg.lr,
                          base_models=[cfg.model] if cfg.teachers else None)
    end_loggers(trainer)
    barrier()  # the other ranks return once the results are there
    return run.out


def identity_of(cfg: FinetuneConfig) -> dict:
    """The run's identity (medssl.identity) from its resolved config: its settings, and by
    content its split file, each member's SSL backbone and each teacher (its own identity)."""
    given = assigned(cfg)
    priors = {f"prior {m}": ssl_backbone_path(m, cfg.dataset, (given.member_checkpoints or {})
                                              .get(m, cfg.ssl_checkpoint), Path(cfg.base))
              for m in members_of(cfg) if prior_of(m).ssl}
    start = prior_of(cfg.model) if cfg.model and not cfg.mutual else None
    weights = prior_file(start.init, cfg.prior_weights) if start and not start.ssl else None
    files = {"split_file": cfg.split_file, **priors, "prior_weights": weights,
             "teachers": [Path(t) / IDENTITY for t in cfg.teachers or []]}
    return run_identity(cfg, files, {"member_lrs": given.member_lrs} if given.member_lrs else {})


def load_priors(cfg: FinetuneConfig, members: list[str]) -> tuple[dict, dict]:
    """Each member's backbone with its prior loaded, and where the prior came from."""
    backbones, sources = {}, {}
    for member in members:
        ssl = (assigned(cfg).member_checkpoints or {}).get(member, cfg.ssl_checkpoint)
        backbones[member], sources[member] = load_prior(
            member, cfg, cfg.dataset, ssl, allow_other_dataset=cfg.allow_other_dataset,
            base=Path(cfg.base), prior_weights=cfg.prior_weights)
    return backbones, sources


def prepare_splits(cfg: FinetuneConfig, run: RunStart, sources: dict) -> Splits:
    """The split (a resumed run's own, else an SSL prior's of this dataset, else the dataset's),
    checked against what the priors saw, cut to the label fraction and written to the run."""
    split_file = cfg.split_file
    if cfg.resume and (run.out / SPLIT).is_file():
        split_file = str(run.out / SPLIT)
    # An SSL backbone of this dataset brings its split (nothing it trained on is held out here);
    # one of another dataset (--allow-other-dataset) never saw these images: this dataset's own.
    same_data = {m: "ssl_split_file" in s and s.get("ssl_dataset") == cfg.dataset
                 for m, s in sources.items()}
    for member, source in sources.items():
        if not split_file and same_data[member] and Path(source["ssl_split_file"]).is_file():
            split_file = source["ssl_split_file"]  # the split SimCLR trained on: nothing leaks
    table, data_info = prepare(replace(data_config(cfg), split_file=split_file),
                               skip_bad_images=cfg.skip_bad_images, workers=cfg.workers,
                               progress=cfg.progress)
    for member, source in sources.items():
        if same_data[member]:
            check_no_ssl_leak(table, Path(source["ssl_split_file"]))
        check_supervised_prior(source, cfg)
    labelled = label_subset(table.samples, cfg.label_fraction, cfg.seed)
    # Model selection at a label fraction sees as few val labels as a user with that fraction
    # would have: the same fraction of val, stratified, at least one image per class.
    val_rows = label_subset(table.samples, 1.0 if cfg.full_val else cfg.label_fraction, cfg.seed,
                            "val")
    if run.writer:
        run.out.mkdir(parents=True, exist_ok=True)
        write_split_csv(table.samples, run.out / SPLIT, cfg.duplicates)
        if cfg.label_fraction < 1:
            write_split_csv(labelled, run.out / LABELLED, cfg.duplicates)
            if not cfg.full_val:
                write_split_csv(val_rows, run.out / SELECTION_VAL, cfg.duplicates)
    return Splits(table, data_info, labelled, val_rows,
                  train_eval_sample(labelled, len(val_rows), cfg.seed))


def build_loaders(cfg: FinetuneConfig, data: Splits, run: RunStart) -> Loaders:
    """The training loader (starting at a resumed run's epoch), the two passes while training,
    and the three the selected checkpoint predicts; an empty split is refused here."""
    p = preset_for(cfg.dataset)
    plain = eval_crop(cfg.image_size)
    table = data.table
    cache = open_cache(table, cfg)
    train = make_loader(table, data.labelled, finetune_crops(cfg.image_size, p.flips), cfg, cache,
                        train=True, balanced=cfg.balanced_sampling,
                        start_epoch=run.resume_at[0] if run.resume_at else 0)
    predict = {split: make_loader(table, rows, plain, cfg, cache)
               for split, rows in (("train", data.labelled), ("val", data.val_rows),
                                   ("test", table.samples[table.samples["split"] == "test"]))}
    # Validation while training: each process a share, metrics reduced over them; and the same
    # clean pass over a fixed sample of the labelled train images (train_eval, for the gap).
    during = [make_loader(table, rows, plain, cfg, cache, shard=True)
              for rows in (data.val_rows, data.train_eval_rows)]
    for split, loader in predict.items():
        if len(loader.dataset) == 0:
            raise MedsslError(f"The {split} split of {cfg.dataset} is empty. Fix: check the split "
                              "with `medssl check`, or change --val-fraction/--test-fraction.")
    return Loaders(train, during, predict)


def build_module(cfg: FinetuneConfig, data: Splits, loaders: Loaders, backbones: dict):
    """The LightningModule (one classifier, or a cohort of them), the checkpoints that select
    on val, and the objective's record for metrics.json."""
    classes = data.table.classes
    weights = None
    if cfg.class_weights:
        counts = torch.bincount(torch.tensor(loaders.train.dataset.targets),
                                minlength=len(classes))
        weights = len(data.labelled) / (len(classes) * counts.clamp_min(1).float())
    objective, objective_record = objective_for(cfg, data.table)
    p = preset_for(cfg.dataset)

    def classifier(member: str, **kwargs) -> Classifier:
        return Classifier(backbones[member], out_features(backbones[member]), classes,
                          lr=(assigned(cfg).member_lrs or {}).get(member, cfg.lr), recipe=cfg,
                          hardware=cfg, seed=cfg.seed, class_weights=weights, **kwargs)

    best = best_checkpoint(Path(cfg.out))
    if cfg.mutual:
        module = Cohort({m: classifier(m) for m in cfg.mutual}, objective,
                        input_transform=Normalize(*channel_stats(p.mean, p.std,
                                                                 cfg.in_channels)),
                        seed=cfg.seed,
                        lr_schedule=cfg.lr_schedule)
        # Each member selected on val on its own; weights only (the optimiser lives in last.ckpt).
        selectors = [selection_checkpoint(cfg, best.parent, f"{m}/",
                                          member_checkpoint(cfg.out, m).stem) for m in cfg.mutual]
    else:
        module = classifier(cfg.model, objective=objective, input_transform=Normalize(
            *run_stats(prior_of(cfg.model).init, p, cfg.in_channels)))
        # Weights only: the optimiser lives in last.ckpt; best.ckpt is read for its weights alone
        # (predictions, teachers), and a third of the bytes makes every save that much cheaper.
        selectors = [selection_checkpoint(cfg, best.parent, "", best.stem)]
    return module, selectors, objective_record


def selection_checkpoint(cfg: FinetuneConfig, folder: Path, tag: str,
                         filename: str) -> ModelCheckpoint:
    """The best epoch by `--select` on val (`tag`: a cohort member's log prefix), weights only."""
    return ModelCheckpoint(dirpath=str(folder), filename=filename,
                           monitor=f"{tag}val/{cfg.select}", mode=SELECT_METRICS[cfg.select],
                           save_top_k=1, enable_version_counter=False,
                           save_on_train_epoch_end=True, save_weights_only=True)


def predict_selected(cfg: FinetuneConfig, trainer, module, selectors, loaders: dict):
    """Only now is the test split looked at: by the last epoch's weights (recorded beside, to
    show what selection changed; never used to select), then once by the selected checkpoint.
    Every process predicts, as a distributed Trainer needs them all; rank 0 writes.
    Probabilities come as (networks, images, classes): a single model is a cohort of one here.
    Returns them per split, the last epoch's on test, and each network's (epoch, value)."""
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
    return dict(zip(names, predict([loaders[s] for s in names]))), last_test, chosen


def train_eval_sample(labelled, size: int, seed: int):
    """The labelled train images of the train_eval pass: a fixed seeded sample as large as the
    val split used for selection (all of them when there are fewer), so the two are measured
    with the same precision."""
    if len(labelled) <= size:
        return labelled
    return labelled.sample(n=size, random_state=seed).sort_index()
