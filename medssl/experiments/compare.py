"""`medssl compare`: run what is missing of the M1-M4 grid, reuse what finished, report.

Order: one split for everything (`split.csv`) and the analysis plan (`analysis.json`: the primary
endpoint and equivalence margin, declared before any run), then the grid's cells
(`experiments.grid`): the pretrainings the asked-for models need (SimCLR for M2 and M4; each of
`--ssl-methods` for M2-<method> and M4-<method>; one per seed unless `--shared-ssl`), then for
every (label fraction, model) its seeds, each at every rate of the learning-rate grid with the
rate chosen on the mean val value over the seeds (unless `--lr` fixes one), then the distilled and
mutual models. Without ImageNet weights M3 and M4 are skipped with the reason and the fix, and the
rest still runs. `--cell NAME` runs one cell alone, once the cells it depends on are finished.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from medssl.atomic import atomic_write
from medssl.data import open_dataset
from medssl.data.prepare import data_config
from medssl.data.splits import write_split_csv
from medssl.errors import MedsslError
from medssl.experiments.grid import (Cell, cell_runs, depends_on, extra_runs, finetune_config,
                                     finished, frozen_configs, plan, pretrain_config,
                                     pretraining_dir, prior_files)
from medssl.experiments.lr_search import adopt, check_grid, same_choice, search_lr
from medssl.identity import (FIX_REUSE, check_same_run, differences, read_identity,
                             run_identity, write_identity)
from medssl.models.backbones import imagenet_state_dict
from medssl.models.foundation import parse_prior, prior_spec
from medssl.models.foundation_load import PriorUnavailable, check_loadable
from medssl.names import (PROTOCOLS, foundation_model, method_names, model_name, prior_of,
                          task_metrics)
from medssl.options import (AnalysisOptions, DataOptions, HardwareOptions, LaunchOptions,
                            ModelOptions, RecipeOptions, SSLOptions, part_of)
from medssl.oserrors import writable_folder
from medssl.presets import preset_for
from medssl.ranges import check_values
from medssl.records import UnreadableRecord, read_backbone_record, read_run_record
from medssl.runs import (BACKBONE, FAILED, SKIPPED, SPLIT, SPLIT_IDENTITY, cleaned_up_on_failure, dataset_dir,
                         declare_analysis, finetune_dir, finetune_finished, is_interrupted,
                         last_checkpoint, ssl_finished)
from medssl.training.checks import check_hardware, check_places, imagenet_weights_for
from medssl.training.distributed import is_rank_zero, wait_for_rank_zero
from medssl.training import finetune, pretrain
from medssl.training.finetune import FinetuneConfig, run_finetune
from medssl.training.frozen import run_frozen
from medssl.training.pretrain import run_pretrain

log = logging.getLogger("medssl")


@dataclass(kw_only=True)
class CompareConfig(DataOptions, HardwareOptions, ModelOptions):
    """The grid: the shared parts, the pretraining recipe every SSL run gets (`ssl`: each of
    `ssl_methods` with the same settings) and the finetuning recipe every model gets (`recipe`)."""

    models: list[str] = field(default_factory=lambda: ["M1", "M2", "M3", "M4"])
    ssl_methods: list[str] | None = None  # M2 and M4 from each (default: simclr, the study's)
    # Foundation priors (models.foundation): a row F-<prior> each, finetuned from it; and with
    # continue_ssl, F-<prior>+<method>: each method on the target data from the prior first.
    priors: list[str] | None = None
    continue_ssl: list[str] | None = None
    # How each prior is judged (names.PROTOCOLS): finetuned whole, and/or frozen (a linear head,
    # kNN) on features computed once per prior and seed (training.frozen)
    protocols: list[str] = field(default_factory=lambda: ["finetune"])
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
    cell: str | None = None  # run this cell of the grid alone (experiments.grid.Cell's name)
    launch: LaunchOptions = field(default_factory=LaunchOptions)  # how many cells at once, where


def resolve(cfg: CompareConfig) -> CompareConfig:
    """Every unset value of the grid filled, once, before any work: the models (M2/M4 per SSL
    method; the models distilled and mutual runs need trained alone), the grid's folder, the
    label fractions, the arch, and the lr grid (the fair default: a search per prior)."""
    preset = preset_for(cfg.dataset)
    models = list(dict.fromkeys(grid_models(cfg.models, cfg.ssl_methods)
                                + foundation_rows(cfg)))  # a row named twice runs once
    for name, needed, _ in extra_runs(cfg):  # teachers, students and members trained alone too
        added = [m for m in needed if m not in models]
        if added:
            log.info("%s needs %s trained alone: added to the grid", name, ", ".join(added))
            models += added
    recipe = cfg.recipe
    if recipe.lr is None and not recipe.lr_grid:
        recipe = replace(recipe, lr_grid=list(preset.lr_grid))
    return replace(cfg, models=models, recipe=recipe, arch=cfg.arch or preset.arch,
                   out=str(Path(cfg.out) if cfg.out else dataset_dir(cfg.dataset)),
                   label_fractions=cfg.label_fractions or list(preset.label_fractions))


def run_compare(cfg: CompareConfig, runner=None) -> tuple[Path, dict[str, str]]:
    """Run what is missing of the grid (or its one `--cell`); return its folder and the models
    skipped, with why (the report is the next layer's: cli calls report.build.build_report).
    `runner`: how the cells run (run_cells's signature; default one after another here)."""
    cfg = resolve(cfg)
    base = Path(cfg.out)
    check_grid_flags(cfg, base)
    cell = Cell.parse(cfg.cell) if cfg.cell else None
    if not any(prior_of(m).init == "imagenet" for m in cfg.models):
        imagenet_weights_for("random", cfg.imagenet_weights, f"none of {', '.join(cfg.models)}")
    if not cfg.resume:  # as a plain rerun of one run would, refuse to restart interrupted ones
        extra = [finetune_dir(base, name, s, f) for name, _, _ in extra_runs(cfg)
                 for f in cfg.label_fractions for s in cfg.seeds]
        # A cell looks at its own runs only: the other cells' may be running in other jobs.
        runs = cell_runs(cfg, base, cell) if cell else expected_runs(
            base, cfg.models, cfg.seeds, cfg.label_fractions, not cfg.shared_ssl) + extra
        interrupted = [run for run in runs if is_interrupted(run)]
        if interrupted:
            raise MedsslError(f"{len(interrupted)} run(s) of this grid were interrupted (first: "
                              f"{interrupted[0]}). Fix: pass --resume to continue them where they "
                              "stopped, or delete their folders to start them again.")
    with cleaned_up_on_failure(base, owner=is_rank_zero()):
        return _run_grid(cfg, base, cell, runner)


def _run_grid(cfg: CompareConfig, base: Path, only: Cell | None,
              runner=None) -> tuple[Path, dict[str, str]]:
    """The grid's shared work (skips, split, analysis plan), then its cells: one after another,
    or by `runner(cfg, base, cells, common, skipped)` (experiments.launch: in other processes).
    A --dry-run writes nothing of the grid: its split is made aside, nothing is declared."""
    planning = cfg.launch.dry_run
    skipped = imagenet_skips(cfg)
    foundation_skips(cfg, skipped)
    models = [m for m in cfg.models if m not in skipped]
    extra_skips(cfg, skipped)
    if planning:
        split = planned_split(cfg, base)
    else:
        base.mkdir(parents=True, exist_ok=True)
        record_skips(base, skipped, only)
        split = shared_split(cfg, base)
    check_primary_metric(cfg, split)
    if is_rank_zero() and not planning:  # declared before any run: what results are judged by
        declare_analysis(base, cfg.analysis)
    # Every run of the grid gets the grid's data, hardware and model parts whole, on its split.
    common = {**part_of(cfg, DataOptions, HardwareOptions, ModelOptions),
              "split_file": str(split)}
    del common["imagenet_weights"]  # given only to the runs that start from ImageNet
    cells = plan(cfg, base, models)
    if only is not None:
        cells = [check_runnable(cfg, base, only, cells, skipped)]
    (runner or run_cells)(cfg, base, cells, common, skipped)
    return base, skipped


def record_skips(base: Path, skipped: dict, only: Cell | None) -> None:
    """skipped.json, remembered for `medssl report`, which rebuilds the table without rerunning
    the checks (every --cell job writes the whole of it: each knows every reason); a whole
    grid's call clears the failures of an earlier one (failed.json): they are its to redo."""
    if is_rank_zero():
        atomic_write(base / SKIPPED, lambda p: p.write_text(json.dumps(skipped, indent=2)))
        if only is None:
            (base / FAILED).unlink(missing_ok=True)


def planned_split(cfg: CompareConfig, base: Path) -> Path:
    """The grid's split for a plan: its own where it has one, else made in a folder of its own
    that the grid never reads (a plan must not fix the split a later call would make)."""
    if (base / SPLIT).is_file():
        return base / SPLIT
    path = Path(tempfile.mkdtemp(prefix="medssl-plan-")) / SPLIT
    table = open_dataset(data_config(cfg), cfg.workers, progress=cfg.progress)
    write_split_csv(table.samples, path, cfg.duplicates)
    return path


def run_cells(cfg: CompareConfig, base: Path, cells: list[Cell], common: dict,
              skipped: dict) -> None:
    """The cells one after another, in the plan's order (each after what it needs)."""
    finetunes = [c for c in cells if c.kind == "finetune"]
    for cell in cells:
        if cell.kind == "finetune":
            log.info("[%d/%d] %s at label fraction %g, seeds %s (cell %s)",
                     finetunes.index(cell) + 1, len(finetunes), cell.model, cell.label_fraction,
                     " ".join(map(str, cfg.seeds)), cell.name)
        run_cell(cfg, base, cell, common, skipped)


def run_cell(cfg: CompareConfig, base: Path, cell: Cell, common: dict, skipped: dict) -> None:
    """One cell, here: what it needs is finished (its order, or check_runnable)."""
    if cell.kind == "pretrain":
        run_pretrain_cell(cfg, base, cell, common)
    elif cell.kind == "frozen":
        run_frozen_cell(cfg, base, cell, common)
    elif cell.kind == "finetune":
        run_finetune_cell(cfg, base, cell, common)
    else:
        run_extra_cell(cfg, base, cell, common, skipped)


def extra_skips(cfg: CompareConfig, skipped: dict) -> None:
    """The distilled and mutual models that need a skipped model, added to `skipped` with why."""
    for name, needed, _ in extra_runs(cfg):
        missing = [m for m in needed if m in skipped]
        if missing:
            skipped[name] = f"it needs {', '.join(missing)}: {skipped[missing[0]]}"
            log.warning("skipping %s: %s is skipped", name, ", ".join(missing))


def check_runnable(cfg: CompareConfig, base: Path, cell: Cell, cells: list[Cell],
                   skipped: dict) -> Cell:
    """`--cell`: one of this grid's cells, whose dependencies are finished (a skipped model's
    cell runs nothing, at once)."""
    if cell not in cells:
        listed = ", ".join(c.name for c in cells[:4]) + (", ..." if len(cells) > 4 else "")
        raise MedsslError(f"--cell {cell.name} is not a cell of this grid (its cells: {listed}). "
                          "Fix: name one that `compare` logs with these flags.")
    if cell.model in skipped:
        return cell
    waiting = [d.name for d in depends_on(cfg, cell) if not finished(cfg, base, d)]
    if waiting:
        raise MedsslError(f"--cell {cell.name} needs {', '.join(waiting)} finished first. Fix: "
                          "run those cells (or the whole grid) first.")
    return cell


def run_pretrain_cell(cfg: CompareConfig, base: Path, cell: Cell, common: dict) -> None:
    """A pretraining, unless it finished or every run that starts from it is finished."""
    run = pretraining_dir(base, cell.model, cell.label_fraction, cell.seed, not cfg.shared_ssl)
    pre = pretrain_config(cfg, base, cell, common, cfg.resume and last_checkpoint(run).is_file())
    if ssl_finished(run):  # checked even where nothing trains from it: it is in the results
        check_same_run(run, pretrain.identity_of(pretrain.resolve(replace(pre))), "reuse")
        log.info("reusing finished pretraining %s", run)
        pretrain.check_gain(run, read_backbone_record(run / BACKBONE), cfg.ssl.min_gain,
                            "--ssl-min-gain")
        return
    if not pretraining_needed(cfg, base, run):
        return
    prior = prior_of(cell.model)
    log.info("%s pretraining from %s init, seed %d -> %s (cell %s)", prior.method, prior.init,
             pre.seed, run, cell.name)
    run_pretrain(replace(pre, min_gain=None))  # judged here, where the flag is --ssl-min-gain
    pretrain.check_gain(run, read_backbone_record(run / BACKBONE), cfg.ssl.min_gain,
                        "--ssl-min-gain")


def pretraining_needed(cfg: CompareConfig, base: Path, run: Path) -> bool:
    """Whether an unfinished finetuning of the grid (or a distilled or mutual run it takes part
    in) starts from this pretraining: one nothing trains from is not looked at."""
    for frac in cfg.label_fractions:
        for seed in cfg.seeds:
            for model in cfg.models:
                if pretraining_dir(base, model, frac, seed, not cfg.shared_ssl) != run:
                    continue
                if not finetune_finished(finetune_dir(base, model, seed, frac)) or any(
                        model in needed and not finetune_finished(finetune_dir(base, name, seed,
                                                                               frac))
                        for name, needed, _ in extra_runs(cfg)):
                    return True
    return False


def run_finetune_cell(cfg: CompareConfig, base: Path, cell: Cell, common: dict) -> None:
    """Every seed of one model at one label fraction: at the given --lr, or at the rate of the
    grid with the best mean val value over the seeds."""
    cfgs = {seed: finetune_config(cfg, base, cell, seed, common) for seed in cfg.seeds}
    runs = {seed: Path(c.out) for seed, c in cfgs.items()}
    for run, run_cfg in zip(runs.values(), cfgs.values()):
        check_same_prior(run, base, run_cfg.ssl_checkpoint)
    if all(finetune_finished(run) for run in runs.values()):
        for seed, run in runs.items():
            reuse(run, cfgs[seed], cfg.recipe.lr_grid)
        return
    if not cfg.recipe.lr_grid:
        for seed, run in runs.items():
            if finetune_finished(run):
                reuse(run, cfgs[seed], None)
            else:
                run_finetune(replace(cfgs[seed],
                                     resume=cfg.resume and last_checkpoint(run).is_file()))
        return
    # `resume` is the flag as given: each run (a search run too) resumes where it has a
    # checkpoint of its own.
    lr, record, search = search_lr(cfgs, base)
    for seed, run in runs.items():
        # A seed finished by an earlier call reuses its run only where the choice over the
        # seeds now is the one it was made at: a row never mixes two rates.
        if finetune_finished(run) and same_choice(run, lr, record):
            reuse(run, cfgs[seed], cfg.recipe.lr_grid)
        else:
            adopt(search[lr][seed], run, cfg.recipe.lr_grid, lr, record)


def run_frozen_cell(cfg: CompareConfig, base: Path, cell: Cell, common: dict) -> None:
    """The frozen protocols of one model at one label fraction, seed by seed: finished runs
    reused (as the runs they are: medssl.identity), the others run together on one set of
    features."""
    for seed in cfg.seeds:
        todo = []
        for c in frozen_configs(cfg, base, cell, seed, common):
            if finetune_finished(Path(c.out)):
                reuse(Path(c.out), c, None)  # a protocol added later runs alone
            else:
                todo.append(c)
        if todo:
            log.info("%s, frozen (%s), seed %d, label fraction %g (cell %s)", cell.model,
                     ", ".join(c.protocol for c in todo), seed, cell.label_fraction, cell.name)
            run_frozen(todo)


def run_extra_cell(cfg: CompareConfig, base: Path, cell: Cell, common: dict,
                   skipped: dict) -> None:
    """A distilled student or a cohort at one seed, once the models it needs are trained."""
    if cell.model in skipped:  # it needs a skipped model (extra_skips)
        return
    run = finetune_dir(base, cell.model, cell.seed, cell.label_fraction)
    run_cfg = finetune_config(cfg, base, cell, cell.seed, common)
    if finetune_finished(run):
        reuse(run, run_cfg, None)  # its rate is the one chosen for its models: in run_cfg
        return
    log.info("%s seed %d label fraction %g -> %s (cell %s)", cell.model, cell.seed,
             cell.label_fraction, run, cell.name)
    run_finetune(replace(run_cfg, resume=cfg.resume and last_checkpoint(run).is_file()))


def reuse(run: Path, run_cfg: FinetuneConfig, grid: list[float] | None) -> None:
    """Reuse the finished `run` only where it is the run `run_cfg` would make now (medssl.identity);
    after an lr search, at the rate the search chose, among the same rates."""
    if grid:
        done = read_run_record(run)
        if done.lr_grid is None:
            raise MedsslError(f"Cannot reuse {run}: it ran at the fixed rate {done.lr:g}, and "
                              f"this grid searches {' '.join(f'{v:g}' for v in grid)}. Fix: pass "
                              f"--lr {done.lr:g} to reuse it, or delete the folder to search, or "
                              "--out another folder.")
        if done.lr_grid != list(grid):
            raise MedsslError(f"Cannot reuse {run}: its rate was chosen among {done.lr_grid}, "
                              f"and this grid searches {list(grid)}. {FIX_REUSE}")
        run_cfg = replace(run_cfg, lr=done.lr, lr_grid=None, assigned=None)
    check_same_run(run, finetune.identity_of(finetune.resolve(replace(run_cfg))), "reuse")
    log.info("reusing finished %s", run)


def expected_runs(base: Path, models, seeds, fractions, per_seed: bool = False) -> list[Path]:
    pre = {pretraining_dir(base, m, f, s, per_seed) for f in fractions for s in seeds
           for m in models}
    return sorted(p for p in pre if p) + [finetune_dir(base, m, s, f) for f in fractions
                                          for s in seeds for m in models]


def imagenet_unavailable(arch: str, weights: str) -> str | None:
    """None when the ImageNet weights load, else why not and how to fix it."""
    try:
        imagenet_state_dict(arch, weights)
    except MedsslError as exc:
        return str(exc)
    return None


def shared_split(cfg: CompareConfig, base: Path) -> Path:
    """The split every pretraining and finetuning of the grid uses, written once."""
    path = base / SPLIT
    made_with = run_identity(DataOptions(**part_of(cfg, DataOptions)),
                             {"split_file": cfg.split_file})
    if not is_rank_zero():  # the other processes of a distributed run read rank 0's
        wait_for_rank_zero(path)
    elif not path.is_file():
        table = open_dataset(data_config(cfg), cfg.workers, progress=cfg.progress)
        write_split_csv(table.samples, path, cfg.duplicates)
        write_identity(base, made_with, SPLIT_IDENTITY)
    elif read_identity(base, SPLIT_IDENTITY) is None:  # a grid made before splits recorded theirs
        write_identity(base, made_with, SPLIT_IDENTITY)
    else:
        changed = differences(read_identity(base, SPLIT_IDENTITY), made_with)
        if changed:
            raise MedsslError(f"{path} was made with other split settings ({'; '.join(changed)}), "
                              "and every run of the grid uses it. Fix: pass the split settings it "
                              "was made with, or --out another folder for a grid on a new split.")
    return path


def check_grid_flags(cfg: CompareConfig, base: Path) -> None:
    """What every run of the grid would refuse, refused once before the grid starts."""
    check_values(cfg)  # every number of the grid and its parts against its range
    check_protocols(cfg)
    if cfg.recipe.lr_grid:
        check_grid(cfg.recipe.lr_grid, cfg.recipe.lr)
    if cfg.launch.launcher != "slurm":  # a SLURM grid's driver needs no GPU: its jobs do
        check_hardware(cfg)
    check_places(base, cfg.cache, cfg)
    if cfg.images_dir:
        writable_folder(cfg.images_dir, "--images-dir")


def check_protocols(cfg: CompareConfig) -> None:
    """Known protocols, each once; distilled and mutual rows are finetunings of finetuned runs."""
    unknown = [p for p in cfg.protocols if p not in PROTOCOLS]
    if unknown or not cfg.protocols or len(set(cfg.protocols)) < len(cfg.protocols):
        raise MedsslError(f"--protocols {' '.join(cfg.protocols)}: name each of "
                          f"{', '.join(PROTOCOLS)} at most once, one at least.")
    if (cfg.distill or cfg.mutual) and "finetune" not in cfg.protocols:
        raise MedsslError("--distill and --mutual train from finetuned runs, and --protocols "
                          f"{' '.join(cfg.protocols)} finetunes none. Fix: add finetune to "
                          "--protocols.")


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


def foundation_rows(cfg: CompareConfig) -> list[str]:
    """F-<prior> for each of --priors, and F-<prior>+<method> for each of --continue-ssl."""
    unknown = [m for m in cfg.continue_ssl or [] if m not in method_names()]
    if unknown:
        raise MedsslError(f"Unknown --continue-ssl {', '.join(unknown)}. Choose from: "
                          f"{', '.join(method_names())}.")
    if cfg.continue_ssl and not cfg.priors:
        raise MedsslError("--continue-ssl pretrains from the foundation priors of --priors, and "
                          "none is given. Fix: add --priors NAME ... (`medssl priors`).")
    labels = [parse_prior(p).label for p in cfg.priors or []]
    repeated = sorted({x for x in labels if labels.count(x) > 1})
    if repeated:
        raise MedsslError(f"--priors names {repeated[0]} more than once (a row per prior). Fix: "
                          "name each prior once.")
    return [foundation_model(label, method) for label in labels
            for method in (None, *(cfg.continue_ssl or []))]


def foundation_skips(cfg: CompareConfig, skipped: dict) -> None:
    """The rows of the foundation priors whose weights, or library, are not on this machine,
    added to `skipped` with what is missing, where to put it and the license (PriorUnavailable);
    the rest of the grid runs. An F-<prior>+<method> row pretrains from the prior: skipped too."""
    files = prior_files(cfg)
    # Every prior of the grid's F- rows, those named in --models too (the cache's weights).
    labels = dict.fromkeys([*files, *(prior_of(m).init for m in cfg.models
                                      if prior_of(m).foundation)])
    for label in labels:
        file = files.get(label)
        try:
            check_loadable(prior_spec(label, file))
        except PriorUnavailable as exc:
            rows = [m for m in cfg.models if m.startswith(foundation_model(label))
                    and prior_of(m).init == label]
            skipped.update({m: str(exc) for m in rows})
            log.warning("skipping %s: %s", ", ".join(rows), exc)


def imagenet_skips(cfg: CompareConfig) -> dict[str, str]:
    """The models that start from ImageNet, with the reason, where its weights do not load."""
    skipped: dict[str, str] = {}
    if any(prior_of(m).init == "imagenet" for m in cfg.models):
        reason = imagenet_unavailable(cfg.arch, cfg.imagenet_weights)
        if reason:
            skipped = {m: reason for m in cfg.models if prior_of(m).init == "imagenet"}
            log.warning("skipping %s: %s", ", ".join(skipped), reason)
    return skipped


def check_primary_metric(cfg: CompareConfig, split: Path) -> None:
    """A --primary-metric the task has, refused before any run rather than at the report."""
    primary = cfg.analysis.primary_metric
    if primary is None:
        return
    n_classes = pd.read_csv(split, usecols=["label"], dtype=str)["label"].nunique()
    metrics = task_metrics(preset_for(cfg.dataset).ordinal, n_classes == 2)
    if primary not in metrics:
        raise MedsslError(f"--primary-metric {primary} does not apply to {cfg.dataset} "
                          f"({n_classes} classes{', graded' if preset_for(cfg.dataset).ordinal else ''}"
                          f"). Fix: choose one of {', '.join(m for m in metrics if m != 'ece')}.")


def check_same_prior(run: Path, base: Path, ssl_checkpoint: str | None) -> None:
    """A finished run of the grid must have started from the pretraining this call would give
    it: a grid made with --shared-ssl and rerun without it (or the reverse) is refused, never
    mixed. Paths are compared within the grid (ssl-random/seed1/backbone.pt), so a grid folder
    that was moved still matches."""
    if not finetune_finished(run) or not ssl_checkpoint:
        return
    try:
        used = read_run_record(run).prior.get("ssl_checkpoint")
    except UnreadableRecord:  # no record at all: the run's own check refuses it
        return
    expected = Path(ssl_checkpoint) / BACKBONE
    tail = len(expected.relative_to(base).parts)
    if used and Path(used).parts[-tail:] != expected.parts[-tail:]:
        raise MedsslError(
            f"{run} finetuned from {used}, and this call would use {expected}: the grid was made "
            "with the other pretraining mode (one per seed, or --shared-ssl for one). Fix: pass "
            "the flag it was made with, or --out another folder.")

