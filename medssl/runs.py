"""Where every run lives, and whether it finished. One layout for the CLI, compare and report:

    runs/<dataset>/                 (or `--out` of `medssl compare`)
        split.csv                   the split every run below shares
        ssl-random/  ssl-imagenet/  SimCLR runs: backbone.pt + backbone.json when finished
        M1/seed0/ ... M4/seed2/     finetuning runs at label fraction 1: metrics.json when finished
        M1/frac0.1/seed0/ ...       finetuning runs at a smaller label fraction
        results.csv results.md curves.png
A run counts as finished only when its last, atomically written file exists.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from medssl.errors import MedsslError

RUNS = Path("runs")


def dataset_dir(dataset: str) -> Path:
    return RUNS / dataset


def ssl_dir(base: Path, init: str) -> Path:
    return Path(base) / f"ssl-{init}"


def finetune_dir(base: Path, model: str, seed: int, label_fraction: float = 1.0) -> Path:
    frac = "" if label_fraction == 1.0 else f"frac{label_fraction:g}"
    return Path(base) / model / frac / f"seed{seed}"


def ssl_finished(run: Path) -> bool:
    return (Path(run) / "backbone.pt").is_file() and (Path(run) / "backbone.json").is_file()


def finetune_finished(run: Path) -> bool:
    return (Path(run) / "metrics.json").is_file()


def open_run_folder(out: Path, finished_file: str, force: bool, resume: bool) -> Path | None:
    """Refuse to overwrite a finished run without `force`; return the checkpoint to resume from
    (None for a fresh start), refusing `resume` when there is none."""
    out = Path(out)
    if (out / finished_file).is_file() and not force:
        raise MedsslError(f"{out} already holds a finished run ({finished_file}). "
                          "Fix: pass --force to run it again, or --out another folder.")
    last = out / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise MedsslError(f"--resume: no checkpoint at {last}. Fix: drop --resume to start anew.")
    if resume:
        return last
    # A fresh start: what an earlier, unfinished or forced-over run left must not be mistaken
    # for this run's (a stale last.ckpt would be what a later --resume continues from).
    for owned in ("checkpoints", "logs", "tensorboard"):
        shutil.rmtree(out / owned, ignore_errors=True)
    return None
