"""The grid of `compare` as cells, their dependencies, and the one builder of their run configs.

Three kinds of cell, run in this order:
- `pretrain`: one pretraining (the one a model at a label fraction and seed starts from; models
  that share a pretraining share its cell);
- `finetune`: one model at one label fraction, all its seeds together (the lr search chooses one
  rate over the seeds);
- `extra`: one distilled student or mutual-learning cohort at one label fraction and seed, once
  the models it needs are finetuned alone.

A cell is named by text (`pretrain:M2:1:0`, `finetune:M1:0.1`, `extra:KD(M3→M1):1:2`) and
`Cell.parse` makes it again from its name, so another process (a cluster job) can run one cell by
name: `medssl compare ... --cell NAME`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from medssl.errors import MedsslError
from medssl.models.foundation import parse_prior
from medssl.names import FOUNDATION, dml_name, kd_name, parse_cohort, parse_distill, prior_of
from medssl.options import RecipeOptions, SSLOptions, part_of
from medssl.records import read_run_record
from medssl.runs import finetune_dir, finetune_finished, ssl_dir, ssl_finished
from medssl.training.finetune import Assigned, FinetuneConfig
from medssl.training.methods import get_method
from medssl.training.pretrain import PretrainConfig
from medssl.experiments.lr_search import lr_choice

KINDS = ("pretrain", "finetune", "frozen", "extra")
ALL_SEEDS = ("finetune", "frozen")  # the kinds whose cell holds every seed


@dataclass(frozen=True)
class Cell:
    kind: str  # one of KINDS
    model: str  # the model (a pretraining: the model that starts from it; extra: KD/DML name)
    label_fraction: float
    seed: int | None = None  # None for a finetune cell: it holds every seed

    @property
    def name(self) -> str:
        seed = () if self.seed is None else (str(self.seed),)
        short = f"{self.label_fraction:g}"  # 0.1, 1; repr where that would round
        fraction = short if float(short) == self.label_fraction else repr(self.label_fraction)
        return ":".join((self.kind, self.model, fraction, *seed))

    @classmethod
    def parse(cls, name: str) -> Cell:
        parts = name.split(":")
        fix = ("Fix: name a cell as `compare` logs it: pretrain:MODEL:FRACTION:SEED, "
               "finetune:MODEL:FRACTION, frozen:MODEL:FRACTION or extra:NAME:FRACTION:SEED.")
        tail = 1 if parts[0] in ALL_SEEDS else 2  # a model's name may hold ':' (F-timm:NAME)
        if (parts[0] not in KINDS or len(parts) < 2 + tail
                or (len(parts) > 2 + tail and not parts[1].startswith(FOUNDATION))):
            raise MedsslError(f"'{name}' is not a cell of the grid. {fix}")
        try:
            seed = int(parts[-1]) if tail == 2 else None
            return cls(parts[0], ":".join(parts[1:-tail]), float(parts[-tail]), seed)
        except ValueError:
            raise MedsslError(f"'{name}': its label fraction or seed is not a number. {fix}") \
                from None


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


def pretraining_of(base: Path, model: str, frac: float, seed: int,
                   per_seed: bool = False) -> tuple[Path, float, int] | None:
    """(folder, label fraction, seed) of the pretraining a finetuning run of `model` at (label
    fraction, seed) starts from: one per init (seed 0), or with `per_seed` one per seed; None
    for a model without one. A method that learns from labels (supcon) at a fraction below 1 is
    pretrained per label fraction and seed, on the very labels that run may use."""
    prior = prior_of(model)
    if not prior.ssl:
        return None
    run = ssl_dir(base, prior.init, prior.method)
    if get_method(prior.method).uses_labels and frac < 1:
        return run / f"frac{frac:g}" / f"seed{seed}", frac, seed
    if per_seed:
        return run / f"seed{seed}", 1.0, seed
    return run, 1.0, 0


def pretraining_dir(base: Path, model: str, frac: float, seed: int,
                    per_seed: bool = False) -> Path | None:
    return (pretraining_of(base, model, frac, seed, per_seed) or (None,))[0]


def pretraining_cell(cfg, model: str, frac: float, seed: int) -> Cell | None:
    """The cell of the pretraining `model` starts from at (label fraction, seed), named as its
    folder is chosen (pretraining_of): every run that shares a pretraining names one cell."""
    prior = prior_of(model)
    if not prior.ssl:
        return None
    if get_method(prior.method).uses_labels and frac < 1:
        return Cell("pretrain", model, frac, seed)
    return Cell("pretrain", model, 1.0, 0 if cfg.shared_ssl else seed)


def plan(cfg, base: Path, models: list[str]) -> list[Cell]:
    """Every cell of the grid over `models` (those not skipped), in an order that runs each after
    the cells it depends on."""
    cells = []
    for frac in cfg.label_fractions:
        for seed in cfg.seeds:
            for model in models:
                cell = pretraining_cell(cfg, model, frac, seed)
                if cell and cell not in cells:
                    cells.append(cell)
    kinds = [k for k, asked in (("finetune", "finetune" in cfg.protocols),
                                ("frozen", set(cfg.protocols) - {"finetune"})) if asked]
    cells += [Cell(k, m, f) for f in cfg.label_fractions for k in kinds for m in models]
    return cells + [Cell("extra", name, f, s) for name, _, _ in extra_runs(cfg)
                    for f in cfg.label_fractions for s in cfg.seeds]


def depends_on(cfg, cell: Cell) -> list[Cell]:
    """The cells that must be finished before `cell` runs."""
    if cell.kind in ALL_SEEDS:
        cells = [pretraining_cell(cfg, cell.model, cell.label_fraction, s) for s in cfg.seeds]
        return list(dict.fromkeys(c for c in cells if c))
    if cell.kind == "extra":
        needed = next((n for name, n, _ in extra_runs(cfg) if name == cell.model), None)
        if needed is None:
            raise MedsslError(f"{cell.name}: {cell.model} is none of this grid's --distill or "
                              "--mutual models. Fix: pass the flags the grid was made with.")
        return [Cell("finetune", m, cell.label_fraction) for m in needed]
    return []


def cell_runs(cfg, base: Path, cell: Cell) -> list[Path]:
    """The run folders a cell writes (a finetune cell's lr-search runs aside)."""
    if cell.kind == "pretrain":
        return [pretraining_dir(base, cell.model, cell.label_fraction, cell.seed,
                                not cfg.shared_ssl)]
    seeds = cfg.seeds if cell.seed is None else [cell.seed]
    protocols = frozen_protocols(cfg) if cell.kind == "frozen" else ["finetune"]
    return [finetune_dir(base, cell.model, s, cell.label_fraction, p) for s in seeds
            for p in protocols]


def frozen_protocols(cfg) -> list[str]:
    return [p for p in cfg.protocols if p != "finetune"]


def finished(cfg, base: Path, cell: Cell) -> bool:
    done = ssl_finished if cell.kind == "pretrain" else finetune_finished
    return all(done(run) for run in cell_runs(cfg, base, cell))


def pretrain_config(cfg, base: Path, cell: Cell, common: dict, resume: bool) -> PretrainConfig:
    """The pretraining of a `pretrain` cell: the grid's SSL recipe with the model's method, from
    its init; a supervised method at a label fraction on that run's labels."""
    prior = prior_of(cell.model)
    folder, ssl_frac, ssl_seed = pretraining_of(base, cell.model, cell.label_fraction, cell.seed,
                                                not cfg.shared_ssl)
    ssl = {**part_of(cfg.ssl, SSLOptions), "method": prior.method}
    return PretrainConfig(init=prior.init, out=str(folder), resume=resume, force=True, **ssl,
                          label_fraction=ssl_frac, seed=ssl_seed,
                          imagenet_weights=weights_of(cfg, prior.init),
                          **own_network(cfg, cell.model, common, pretraining=True))


def frozen_configs(cfg, base: Path, cell: Cell, seed: int, common: dict) -> list[FinetuneConfig]:
    """A `frozen` cell's runs at `seed`: one per frozen protocol, each the model's finetuning
    config but for the protocol, its folder, and the rate (the head has its own grid:
    training.frozen)."""
    alone = finetune_config(cfg, base, Cell("finetune", cell.model, cell.label_fraction), seed,
                            common)
    # No checkpoints (minutes of work at most): an interrupted frozen run starts again.
    return [replace(alone, protocol=p, lr_grid=None, resume=False, out=str(finetune_dir(
        base, cell.model, seed, cell.label_fraction, p))) for p in frozen_protocols(cfg)]


def finetune_config(cfg, base: Path, cell: Cell, seed: int, common: dict) -> FinetuneConfig:
    """The finetuning run of `cell` at `seed`: a model alone (a `finetune` cell, at the grid's
    recipe; its lr search is compare's), a student distilled from this seed's runs of its
    teachers, or a cohort (`extra` cells, at the rates chosen for their models alone)."""
    frac = cell.label_fraction
    recipe = part_of(cfg.recipe, RecipeOptions)
    run = finetune_dir(base, cell.model, seed, frac)
    place = dict(seed=seed, label_fraction=frac, base=str(base), out=str(run), force=True,
                 resume=cfg.resume, **common)
    if cell.kind == "finetune":
        return FinetuneConfig(model=cell.model, **recipe, ssl_checkpoint=ssl_of(cfg, base, cell.model, frac, seed),
                              imagenet_weights=weights_of(cfg, prior_of(cell.model).init),
                              **{**place, **own_network(cfg, cell.model, common)})
    _, needed, student = next(e for e in extra_runs(cfg) if e[0] == cell.model)
    own, given = {}, Assigned()
    if cfg.recipe.lr_grid:  # the student's (or first member's) rate, and its search
        lr, record = chosen_lr(cfg, base, student or needed[0], frac)
        recipe.update(lr=lr, lr_grid=None)
        if record is not None:
            given.lr_choice = lr_choice(cfg.recipe.lr_grid, lr, record)
    if student:  # distillation: the teachers are this seed's runs trained alone
        place.update(own_network(cfg, student, common))
        own.update(model=student, ssl_checkpoint=ssl_of(cfg, base, student, frac, seed),
                   teachers=[str(finetune_dir(base, t, seed, frac)) for t in needed[:-1]])
    else:
        checkpoints = {m: ssl_of(cfg, base, m, frac, seed) for m in needed}
        own["mutual"] = needed
        given.member_checkpoints = {m: c for m, c in checkpoints.items() if c}
        if cfg.recipe.lr_grid:
            given.member_lrs = {m: chosen_lr(cfg, base, m, frac)[0] for m in needed}
    inits = {prior_of(m).init for m in needed}
    return FinetuneConfig(**own, **recipe, **place, assigned=given, imagenet_weights=weights_of(
        cfg, "imagenet" if "imagenet" in inits else "random"))


def prior_files(cfg) -> dict[str, Path | None]:
    """Each `--priors` prior's label -> its weights file (None: the Hugging Face cache)."""
    return {spec.label: spec.file for spec in map(parse_prior, cfg.priors or [])}


def own_network(cfg, model: str, common: dict, pretraining: bool = False) -> dict:
    """A foundation prior's runs (F-<prior>, and the pretraining of F-<prior>+<method>) on the
    prior's own network and with its weights file (a finetuning of F-<prior>+<method> starts
    from its SSL backbone instead); every other run on the grid's --arch."""
    prior = prior_of(model)
    if not prior.foundation:
        return common
    weights = prior_files(cfg).get(prior.init) if pretraining or not prior.ssl else None
    return {**common, "arch": None, "prior_weights": str(weights) if weights else None}


def ssl_of(cfg, base: Path, model: str, frac: float, seed: int) -> str | None:
    found = pretraining_dir(base, model, frac, seed, not cfg.shared_ssl)
    return str(found) if found else None


def weights_of(cfg, init: str):
    """Only the runs that start from ImageNet get --imagenet-weights."""
    return cfg.imagenet_weights if init == "imagenet" else None


def chosen_lr(cfg, base: Path, model: str, frac: float) -> tuple[float, dict | None]:
    """The rate `model` trained alone at `frac` was finetuned at, and its search's record (None
    at a fixed --lr), as its first seed's run records them."""
    done = read_run_record(finetune_dir(base, model, cfg.seeds[0], frac))
    if done.lr_selected is not None:
        return done.lr_selected, done.lr_search
    return done.lr, None
