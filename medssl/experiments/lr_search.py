"""The learning-rate search: each model's finetuning learning rate chosen on val.

`compare` searches by default, over the preset's grid (`--lr-grid` sets another, `--lr` fixes one
rate and searches nothing): every seed is finetuned at every rate, each run scored by its own
selection value (the val metric of `--select` at its selected checkpoint), and the rate with the
best **mean over the seeds** is chosen. Each seed's run at that rate then is that seed's result:
no seed is favoured (choosing on seed 0 alone and keeping its winning run made seed 0 a
selected best-of-grid and the others not). The test split plays no part: a search run's test
metrics are written (every run writes them) but never read here. `medssl finetune --lr-grid`
searches its one seed.

Search runs live under `<base>/lr-search/<model>/[frac<f>/]lr<lr>/seed<seed>`, out of the table;
the chosen ones are copied to the model's own folders, so none is trained twice.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

from medssl.errors import MedsslError
from medssl.identity import check_same_run
from medssl.names import model_folder
from medssl.ranges import check_value
from medssl.records import UnreadableRecord, read_run_record, write_run_record
from medssl.runs import (CHECKPOINTS, FINETUNE_OUTPUTS, LR_SEARCH, dataset_dir, finetune_dir,
                         finetune_finished, last_checkpoint, mark_finished)
from medssl.training import finetune  # called as finetune.run_finetune: tests replace it
from medssl.training.run_logs import log_hparams

log = logging.getLogger("medssl")
SEARCH_FOLDER = LR_SEARCH


def search_dir(base: Path, model: str, frac: float, lr: float, seed: int) -> Path:
    frac_part = () if frac == 1.0 else (f"frac{frac:g}",)
    return Path(base, SEARCH_FOLDER, model, *frac_part, f"lr{lr:g}", f"seed{seed}")


def check_grid(grid: list[float], lr: float | None) -> list[float]:
    if lr is not None:
        raise MedsslError(f"--lr {lr:g} and --lr-grid both given. Fix: pass one; with --lr-grid "
                          "the learning rate is chosen among the grid's.")
    for value in grid:
        check_value("lr_grid", value)
    if len(set(grid)) != len(grid):
        raise MedsslError(f"--lr-grid lists a learning rate twice: {' '.join(map(str, grid))}.")
    return list(grid)


def choose_lr(runs: dict[float, dict[int, Path]]) -> tuple[float, dict]:
    """The learning rate whose runs have the best mean selection value on val over the seeds
    (the first of the grid on a tie), and the record of the search."""
    values, per_seed, mode, metric = {}, {}, None, None
    for lr, seeds in runs.items():
        scores = {}
        for seed, run in seeds.items():
            selection = read_run_record(run).selection
            scores[seed], mode, metric = selection["value"], selection["mode"], selection["metric"]
        values[lr], per_seed[lr] = sum(scores.values()) / len(scores), scores
    # A rate whose runs diverged (a NaN val value) cannot be chosen.
    usable = {lr: v for lr, v in values.items() if v is not None and math.isfinite(v)}
    if not usable:
        raise MedsslError(f"Every learning rate of the search diverged (val {metric} not a "
                          f"number at {', '.join(f'{lr:g}' for lr in values)}). Fix: search "
                          "smaller rates with --lr-grid.")
    best = (min if mode == "min" else max)(usable.values())
    chosen = next(lr for lr, v in usable.items() if v == best)
    return chosen, {"metric": metric, "mode": mode, "on": "mean over seeds",
                    "seeds": sorted(next(iter(per_seed.values()))),
                    "values": {f"{lr:g}": v for lr, v in values.items()},
                    "per_seed": {f"{lr:g}": {str(k): v for k, v in scores.items()}
                                 for lr, scores in per_seed.items()}}


def search_lr(cfgs: dict, base: Path) -> tuple[float, dict, dict[float, dict[int, Path]]]:
    """Run (or reuse) one finetuning per learning rate of the grid and per seed (`cfgs`: seed ->
    that seed's run config, all of one model and label fraction); return the chosen rate, the
    search record and the runs."""
    first = next(iter(cfgs.values()))
    if first.mutual:  # one rate per member: compare chooses each on that member trained alone
        raise MedsslError("--lr-grid with --mutual: a cohort has one learning rate per member. "
                          "Fix: pass --lr, or run `medssl compare --lr-grid ... --mutual ...`, "
                          "which gives each member the rate chosen for it trained alone.")
    # A distilled student searches apart from its prior trained alone.
    name = finetune.run_name(first)
    runs: dict[float, dict[int, Path]] = {}
    for lr in first.lr_grid:
        for seed, cfg in cfgs.items():
            run = search_dir(base, model_folder(name), cfg.label_fraction, lr, seed)
            if finetune_finished(run):
                search_run = replace(cfg, lr=lr, lr_grid=None, assigned=None, out=str(run))
                check_same_run(run, finetune.identity_of(finetune.resolve(search_run)), "reuse")
                log.info("reusing finished lr-search run %s", run)
            else:
                log.info("lr search: %s seed %d at lr %g -> %s", name, seed, lr, run)
                resume = cfg.resume and last_checkpoint(run).is_file()
                finetune.run_finetune(replace(cfg, lr=lr, lr_grid=None, assigned=None,
                                              out=str(run), resume=resume, force=True))
            runs.setdefault(lr, {})[seed] = run
    lr, record = choose_lr(runs)
    log.info("lr search for %s: %g chosen on the mean val value over %d seed(s) (%s)", name, lr,
             len(cfgs), ", ".join(f"{k}: {v:.4f}" for k, v in record["values"].items()))
    return lr, record, runs


def same_choice(run: Path, lr: float, record: dict) -> bool:
    """Whether a finished run was adopted at this rate by a search over these seeds."""
    try:
        done = read_run_record(run)
    except UnreadableRecord:
        return False
    return done.lr_selected == lr and (done.lr_search or {}).get("seeds") == record["seeds"]


def adopt(search_run: Path, out: Path, grid: list[float], lr: float, record: dict) -> Path:
    """The chosen search run becomes the model's run for its seed: copied, its metrics.json
    told what was searched, and marked finished again."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(search_run, out, copy_function=link_checkpoints)
    chosen = read_run_record(out)
    adopted = replace(chosen, **lr_choice(grid, lr, record),
                      config={**chosen.config, "out": str(out)})
    write_run_record(out, adopted)
    # Its HParams line was the search's candidate's: now the table's run, at the rate chosen.
    log_hparams(out, adopted, chosen.config.get("loggers") or [], role="chosen on val")
    mark_finished(out, FINETUNE_OUTPUTS)
    return out


def link_checkpoints(src: str, dst: str) -> None:
    """copytree's copy: the checkpoints (hundreds of MB, never written again) as hard links
    where the file system allows, every other file copied (metrics.json is rewritten here, and
    a link would rewrite the search run's too)."""
    if Path(src).parent.name == CHECKPOINTS:
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or none that links: copy
            pass
    shutil.copy2(src, dst)


def lr_choice(grid: list[float], lr: float, record: dict) -> dict:
    """What metrics.json records of a chosen learning rate."""
    return {"lr_selected": lr, "lr_grid": list(grid), "lr_search": record}


def finetune_with_lr_grid(cfg) -> Path:
    """`medssl finetune --lr-grid ...`: search on this run's seed, keep the chosen run."""
    grid = check_grid(cfg.lr_grid, cfg.lr)
    base = Path(cfg.base or dataset_dir(cfg.dataset))
    cfg = replace(cfg, base=str(base))
    finetune.check_members(cfg)
    out = Path(cfg.out or finetune_dir(base, finetune.run_name(cfg), cfg.seed,
                                       cfg.label_fraction))
    if finetune_finished(out) and not cfg.force:
        raise MedsslError(f"{out} already holds a finished run (finished.json). "
                          "Fix: pass --force to run it again, or --out another folder.")
    lr, record, runs = search_lr({cfg.seed: cfg}, base)
    return adopt(runs[lr][cfg.seed], out, grid, lr, record)
