"""`medssl compare`: run what is missing of the M1-M4 grid, reuse what finished, report.

Order: one split for everything (`split.csv`) and the analysis plan (`analysis.json`: the primary
endpoint and equivalence margin, declared before any run), the pretrainings the asked-for models
need (SimCLR for M2 and M4; each of `--ssl-methods` for M2-<method> and M4-<method>; one per seed
unless `--shared-ssl`), then for every (label fraction, model) its seeds, each at every rate of
the learning-rate grid with the rate chosen on the mean val value over the seeds (unless `--lr`
fixes one). Without ImageNet weights M3 and M4 are skipped with the reason and the fix, and the
rest still runs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from medssl.errors import MedsslError
from medssl.options import (AnalysisOptions, DataOptions, HardwareOptions, ModelOptions,
                            RecipeOptions, SSLOptions, part_of)
from medssl.data.prepare import data_config
from medssl.atomic import atomic_write
from medssl.names import dml_name, kd_name, method_names, model_name, parse_cohort, parse_distill, prior_of
from medssl.runs import (cleaned_up_on_failure, dataset_dir, finetune_dir, finetune_finished,
                         is_interrupted, last_checkpoint, ssl_dir, ssl_finished)
from medssl.training.checks import imagenet_weights_for
from medssl.training.distributed import is_rank_zero, wait_for_rank_zero

log = logging.getLogger("medssl")


@dataclass(kw_only=True)
class CompareConfig(DataOptions, HardwareOptions, ModelOptions):
    """The grid: the shared parts, the pretraining recipe every SSL run gets (`ssl`: each of
    `ssl_methods` with the same settings) and the finetuning recipe every model gets (`recipe`)."""

    models: list[str] = field(default_factory=lambda: ["M1", "M2", "M3", "M4"])
    ssl_methods: list[str] | None = None  # M2 and M4 from each (default: simclr, the study's)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    label_fractions: list[float] | None = None  # default: the preset's (1.0; demo 1.0 and 0.1)
    ssl: SSLOptions = field(default_factory=SSLOptions)
    # One pretraining for every seed; by default each seed finetunes from its own pretraining,
    # so that the sd and intervals of M2/M4 include the variance of pretraining.
    shared_ssl: bool = False
    distill: list[str] | None = None  # TEACHER:STUDENT specs: KD(teacher→student) rows
    mutual: list[str] | None = None  # MODEL+MODEL cohorts: DML rows
    recipe: RecipeOptions = field(default_factory=RecipeOptions)
    analysis: AnalysisOptions = field(default_factory=AnalysisOptions)
    out: str | None = None
    images_dir: str | None = None
    resume: bool = False






def extra_runs(cfg) -> list[tuple[str, list[str], str | None]]:
    """The grid's distilled and mutual models: (name, models they need trained alone first,
    student or None for a cohort)."""
    out = []
    for spec in cfg.distill or []:
        teachers, student = parse_distill(spec)
        out.append((kd_name(teachers, student), [*teachers, student], student))
    for spec in cfg.mutual or []:
        members = parse_cohort(spec)
        out.append((dml_name(members), members, None))
    return out


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
    from medssl.data import open_dataset
    from medssl.data.splits import write_split_csv

    path = base / "split.csv"
    if not is_rank_zero():  # the other processes of a distributed run read rank 0's
        wait_for_rank_zero(path)
    elif not path.is_file():
        table = open_dataset(data_config(cfg), cfg.workers, progress=cfg.progress)
        write_split_csv(table.samples, path, cfg.duplicates)
    return path


def run_compare(cfg: CompareConfig) -> tuple[Path, dict[str, str]]:
    """Run what is missing of the grid; return its folder and the models skipped, with why (the
    report is the next layer's: cli calls report.build.build_report)."""
    from medssl.presets import preset_for

    cfg.models = grid_models(cfg.models, cfg.ssl_methods)
    for name, needed, _ in extra_runs(cfg):  # teachers, students and members trained alone too
        added = [m for m in needed if m not in cfg.models]
        if added:
            log.info("%s needs %s trained alone: added to the grid", name, ", ".join(added))
            cfg.models += added
    base = Path(cfg.out) if cfg.out else dataset_dir(cfg.dataset)
    preset = preset_for(cfg.dataset)
    if cfg.recipe.lr is None and not cfg.recipe.lr_grid:  # the fair default: search per prior
        cfg.recipe.lr_grid = list(preset.lr_grid)
    check_grid_flags(cfg, base)
    arch = cfg.arch or preset.arch
    fractions = cfg.label_fractions or list(preset.label_fractions)
    if not any(prior_of(m).init == "imagenet" for m in cfg.models):
        imagenet_weights_for("random", cfg.imagenet_weights, f"none of {', '.join(cfg.models)}")
    if not cfg.resume:  # as a plain rerun of one run would, refuse to restart interrupted ones
        extra = [finetune_dir(base, name, s, f) for name, _, _ in extra_runs(cfg)
                 for f in fractions for s in cfg.seeds]
        interrupted = [run for run in expected_runs(base, cfg.models, cfg.seeds, fractions,
                                                    not cfg.shared_ssl) + extra
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

    from medssl.training.finetune import check_distillation

    for flag, lr in (("--lr", cfg.recipe.lr), ("--ssl-lr", cfg.ssl.lr)):
        if lr is not None:
            check_lr(lr, flag)
    check_distillation(cfg.recipe)
    if cfg.recipe.lr_grid:
        from medssl.experiments.lr_search import check_grid

        check_grid(cfg.recipe.lr_grid, cfg.recipe.lr)
    check_hardware(cfg)
    check_places(base, cfg.cache)
    if cfg.images_dir:
        writable_folder(cfg.images_dir, "--images-dir")


def grid_models(models: list[str], methods: list[str] | None) -> list[str]:
    """The models of the grid: M2 and M4 once per SSL method (M2 for SimCLR, M2-byol for BYOL,
    ...), every other model as named; each once, in the order asked."""
    unknown = [m for m in methods or [] if m not in method_names()]
    if unknown:
        raise MedsslError(f"Unknown --ssl-methods {', '.join(unknown)}. Choose from: "
                          f"{', '.join(method_names())}.")
    out: list[str] = []
    for m in models:
        prior_of(m)  # refuses unknown names
        expanded = [model_name(m, x) for x in methods] if methods and m in ("M2", "M4") else [m]
        out += [e for e in expanded if e not in out]
    return out


def pretraining_dir(base: Path, model: str, frac: float, seed: int,
                    per_seed: bool = False) -> Path | None:
    """The pretraining a finetuning run of `model` at (label fraction, seed) starts from: one
    per init (seed 0), or with `per_seed` one per seed. A method that learns from labels
    (supcon) at a fraction below 1 is pretrained per label fraction and seed, on the very labels
    that run may use."""
    return (pretraining_of(base, model, frac, seed, per_seed) or (None,))[0]


def pretraining_of(base: Path, model: str, frac: float, seed: int,
                   per_seed: bool = False) -> tuple[Path, float, int] | None:
    """(folder, label fraction, seed) of that pretraining; None for a model without one."""
    from medssl.training.methods import get_method

    prior = prior_of(model)
    if not prior.ssl:
        return None
    run = ssl_dir(base, prior.init, prior.method)
    if get_method(prior.method).uses_labels and frac < 1:
        return run / f"frac{frac:g}" / f"seed{seed}", frac, seed
    if per_seed:
        return run / f"seed{seed}", 1.0, seed
    return run, 1.0, 0


def expected_runs(base: Path, models, seeds, fractions, per_seed: bool = False) -> list[Path]:
    pre = {pretraining_dir(base, m, f, s, per_seed) for f in fractions for s in seeds
           for m in models}
    return sorted(p for p in pre if p) + [finetune_dir(base, m, s, f) for f in fractions
                                          for s in seeds for m in models]


def _run_grid(cfg: CompareConfig, base: Path, arch: str,
              fractions: list[float]) -> tuple[Path, dict[str, str]]:
    from medssl.runs import declare_analysis

    base.mkdir(parents=True, exist_ok=True)
    skipped = imagenet_skips(cfg, arch)
    models = [m for m in cfg.models if m not in skipped]
    # Remembered for `medssl report`, which rebuilds the table without rerunning this check.
    if is_rank_zero():
        atomic_write(base / "skipped.json", lambda p: p.write_text(json.dumps(skipped, indent=2)))
    split = shared_split(cfg, base)
    check_primary_metric(cfg, split)
    if is_rank_zero():  # declared before any run: what the results will be judged by
        declare_analysis(base, cfg.analysis)
    # Every run of the grid gets the grid's data, hardware and model parts whole, on its split.
    common = {**part_of(cfg, DataOptions, HardwareOptions, ModelOptions), "arch": arch,
              "split_file": str(split)}
    del common["imagenet_weights"]  # given only to the runs that start from ImageNet
    pretrain_all(cfg, base, [(f, s, m) for f in fractions for s in cfg.seeds for m in models],
                 common)
    chosen: dict[tuple, tuple] = {}  # (label fraction, model) -> the lr search's choice
    cells = [(f, m) for f in fractions for m in models]
    for i, (frac, model) in enumerate(cells, start=1):
        log.info("[%d/%d] %s at label fraction %g, seeds %s", i, len(cells), model, frac,
                 " ".join(map(str, cfg.seeds)))
        found = finetune_model(cfg, base, frac, model, common)
        if found:
            chosen[(frac, model)] = found
    run_extras(cfg, base, fractions, skipped, chosen, common)
    if is_rank_zero():  # the distilled and mutual models' reasons too
        atomic_write(base / "skipped.json", lambda p: p.write_text(json.dumps(skipped, indent=2)))
    return base, skipped


def imagenet_skips(cfg: CompareConfig, arch: str) -> dict[str, str]:
    """The models that start from ImageNet, with the reason, where its weights do not load."""
    skipped: dict[str, str] = {}
    if any(prior_of(m).init == "imagenet" for m in cfg.models):
        reason = imagenet_unavailable(arch, cfg.imagenet_weights)
        if reason:
            skipped = {m: reason for m in cfg.models if prior_of(m).init == "imagenet"}
            log.warning("skipping %s: %s", ", ".join(skipped), reason)
    return skipped


def check_primary_metric(cfg: CompareConfig, split: Path) -> None:
    """A --primary-metric the task has, refused before any run rather than at the report."""
    import pandas as pd

    from medssl.presets import preset_for
    from medssl.names import task_metrics

    primary = cfg.analysis.primary_metric
    if primary is None:
        return
    n_classes = pd.read_csv(split, usecols=["label"], dtype=str)["label"].nunique()
    metrics = task_metrics(preset_for(cfg.dataset).ordinal, n_classes == 2)
    if primary not in metrics:
        raise MedsslError(f"--primary-metric {primary} does not apply to {cfg.dataset} "
                          f"({n_classes} classes{', graded' if preset_for(cfg.dataset).ordinal else ''}"
                          f"). Fix: choose one of {', '.join(m for m in metrics if m != 'ece')}.")


def weights_of(cfg: CompareConfig, init: str):
    """Only the runs that start from ImageNet get --imagenet-weights."""
    return cfg.imagenet_weights if init == "imagenet" else None


def pretrain_all(cfg: CompareConfig, base: Path, grid: list[tuple], common: dict) -> None:
    """Every pretraining that an unfinished finetuning of the grid (label fraction, seed, model;
    or a distilled or mutual run it takes part in) starts from."""
    from medssl.training.pretrain import PretrainConfig, run_pretrain

    pretrainings: dict[Path, tuple] = {}
    for frac, seed, model in grid:
        if finetune_finished(finetune_dir(base, model, seed, frac)) and not any(
                model in needed and not finetune_finished(finetune_dir(base, name, seed, frac))
                for name, needed, _ in extra_runs(cfg)):
            continue  # nothing left to train from it
        found = pretraining_of(base, model, frac, seed, not cfg.shared_ssl)
        if found is not None and found[0] not in pretrainings:
            pretrainings[found[0]] = (prior_of(model), *found[1:])
    for run, (prior, ssl_frac, ssl_seed) in pretrainings.items():
        if ssl_finished(run):
            log.info("reusing finished pretraining %s", run)
            continue
        log.info("%s pretraining from %s init, seed %d -> %s", prior.method, prior.init,
                 ssl_seed, run)
        resume = cfg.resume and last_checkpoint(run).is_file()
        ssl = {**part_of(cfg.ssl, SSLOptions), "method": prior.method}
        run_pretrain(PretrainConfig(init=prior.init, out=str(run), resume=resume, force=True,
                                    **ssl,
                                    # supcon at a fraction: that run's labels
                                    label_fraction=ssl_frac, seed=ssl_seed,
                                    imagenet_weights=weights_of(cfg, prior.init), **common))


def finetune_model(cfg: CompareConfig, base: Path, frac: float, model: str,
                   common: dict) -> tuple | None:
    """Every seed of one model at one label fraction: at the given --lr, or at the rate of the
    grid with the best mean val value over the seeds. Returns the search's (lr, record, runs)
    where one ran, else None (fixed rate, or every seed already finished)."""
    from medssl.experiments.lr_search import adopt, same_choice, search_lr
    from medssl.training.finetune import FinetuneConfig, run_finetune

    runs = {seed: finetune_dir(base, model, seed, frac) for seed in cfg.seeds}
    # `resume` is the flag as given: each run (a search run too) resumes where it has a
    # checkpoint of its own.
    cfgs = {seed: FinetuneConfig(
        model=model, seed=seed, label_fraction=frac, **part_of(cfg.recipe, RecipeOptions),
        ssl_checkpoint=str(pretraining_dir(base, model, frac, seed, not cfg.shared_ssl) or "")
        or None, base=str(base), out=str(run), force=True, resume=cfg.resume,
        imagenet_weights=weights_of(cfg, prior_of(model).init), **common)
        for seed, run in runs.items()}
    for run, run_cfg in zip(runs.values(), cfgs.values()):
        check_same_prior(run, base, run_cfg.ssl_checkpoint)
    if all(finetune_finished(run) for run in runs.values()):
        for run in runs.values():
            log.info("reusing finished %s", run)
        return None
    if not cfg.recipe.lr_grid:
        for seed, run in runs.items():
            if finetune_finished(run):
                log.info("reusing finished %s", run)
            else:
                run_finetune(replace(cfgs[seed], resume=cfg.resume and last_checkpoint(run).is_file()))
        return None
    lr, record, search = search_lr(cfgs, base)
    for seed, run in runs.items():
        # A seed finished by an earlier call reuses its run only where the choice over the
        # seeds now is the one it was made at: a row never mixes two rates.
        if finetune_finished(run) and same_choice(run, lr, record):
            log.info("reusing finished %s", run)
        else:
            adopt(search[lr][seed], run, cfg.recipe.lr_grid, lr, record)
    return lr, record, search


def check_same_prior(run: Path, base: Path, ssl_checkpoint: str | None) -> None:
    """A finished run of the grid must have started from the pretraining this call would give
    it: a grid made with --shared-ssl and rerun without it (or the reverse) is refused, never
    mixed. Paths are compared within the grid (ssl-random/seed1/backbone.pt), so a grid folder
    that was moved still matches."""
    if not finetune_finished(run) or not ssl_checkpoint:
        return
    try:
        used = json.loads((Path(run) / "metrics.json").read_text())["prior"].get("ssl_checkpoint")
    except (OSError, ValueError, KeyError):
        return
    expected = Path(ssl_checkpoint) / "backbone.pt"
    tail = len(expected.relative_to(base).parts)
    if used and Path(used).parts[-tail:] != expected.parts[-tail:]:
        raise MedsslError(
            f"{run} finetuned from {used}, and this call would use {expected}: the grid was made "
            "with the other pretraining mode (one per seed, or --shared-ssl for one). Fix: pass "
            "the flag it was made with, or --out another folder.")


def run_extras(cfg: CompareConfig, base: Path, fractions: list[float], skipped: dict,
               chosen: dict, common: dict) -> None:
    """The distilled and mutual models, seed by seed, once the models they need are trained."""
    from medssl.experiments.lr_search import lr_choice
    from medssl.training.finetune import FinetuneConfig, run_finetune

    def choice(model, frac):  # the rate of that model trained alone, and its search if any
        if (frac, model) not in chosen:  # made by an earlier call: in its seeds' runs
            m = json.loads((finetune_dir(base, model, cfg.seeds[0], frac)
                            / "metrics.json").read_text())
            searched = m.get("lr_selected") is not None  # else it ran at a fixed --lr
            chosen[(frac, model)] = ((m["lr_selected"], m["lr_search"], None) if searched
                                     else (m["lr"], None, None))
        return chosen[(frac, model)]

    for name, needed, student in extra_runs(cfg):
        missing = [m for m in needed if m in skipped]
        if missing:
            skipped[name] = f"it needs {', '.join(missing)}: {skipped[missing[0]]}"
            log.warning("skipping %s: %s is skipped", name, ", ".join(missing))
            continue
        for frac, seed in [(f, s) for f in fractions for s in cfg.seeds]:
            run = finetune_dir(base, name, seed, frac)
            if finetune_finished(run):
                log.info("reusing finished %s", run)
                continue
            log.info("%s seed %d label fraction %g -> %s", name, seed, frac, run)

            def ssl_of(model):
                found = pretraining_dir(base, model, frac, seed, not cfg.shared_ssl)
                return str(found) if found else None

            recipe = part_of(cfg.recipe, RecipeOptions)
            own = {}
            if cfg.recipe.lr_grid:  # the student's (or first member's) rate, and its search
                lr, record, _ = choice(student or needed[0], frac)
                recipe.update(lr=lr, lr_grid=None)
                if record is not None:
                    own["lr_choice"] = lr_choice(cfg.recipe.lr_grid, lr, record)
            if student:  # distillation: the teachers are this seed's runs trained alone
                own.update(model=student, ssl_checkpoint=ssl_of(student),
                           teachers=[str(finetune_dir(base, t, seed, frac))
                                     for t in needed[:-1]])
            else:
                own.update(mutual=needed,
                           member_checkpoints={m: ssl_of(m) for m in needed if ssl_of(m)},
                           member_lrs={m: choice(m, frac)[0] for m in needed}
                           if cfg.recipe.lr_grid else None)
            inits = {prior_of(m).init for m in needed}
            run_finetune(FinetuneConfig(
                **own, seed=seed, label_fraction=frac, **recipe, base=str(base), out=str(run),
                force=True, resume=cfg.resume and last_checkpoint(run).is_file(),
                imagenet_weights=weights_of(cfg, "imagenet" if "imagenet" in inits else "random"),
                **common))
