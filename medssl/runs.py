"""Where every run lives, and whether it finished. One layout for the CLI, compare and report:

    runs/<dataset>/                 (or `--out` of `medssl compare`)
        split.csv                   the split every run below shares
        ssl-random/  ssl-imagenet/  SimCLR runs: backbone.pt + backbone.json when finished
        ssl-byol-random/ ...        other methods' runs: ssl-<method>-<init>
        M1/seed0/ ... M4/seed2/     finetuning runs at label fraction 1: metrics.json when finished
        M1/frac0.1/seed0/ ...       finetuning runs at a smaller label fraction
        KD-M3-to-M1/seed0/          a student distilled from M3's run of the same seed
        DML-M3+M4/seed0/            a mutual-learning cohort (its ensemble), with its members'
            M3/ M4/                 runs inside
        analysis.json               the primary endpoint and equivalence margin, declared
                                    by `compare` before the runs
        results.csv results.md curves.png

Every result file is written to a temporary name and renamed. Last of all a run writes its
completion marker, `finished.json`, with the size of each result file: a run counts as finished
only when the marker is there and every file it lists has that size.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

from medssl.atomic import atomic_write
from medssl.errors import MedsslError
from medssl.names import model_folder
from medssl.records import BACKBONE_JSON, METRICS

RUNS = Path("runs")
MARKER = "finished.json"
CHECKPOINTS = "checkpoints"  # the folder of a run's checkpoints
LAST = "last.ckpt"  # what --resume continues from (training.harness.every_epoch_checkpoint)
BEST = "best.ckpt"  # a finetuning run's selected weights (what a teacher is loaded from)
BACKBONE = "backbone.pt"  # a pretraining's backbone (its record: records.BACKBONE_JSON)
SPLIT = "split.csv"  # the split a run used; in a grid's folder, the split all its runs share
LABELLED = "labelled_train.csv"  # the labelled train images, at a label fraction below 1
SELECTION_VAL = "selection_val.csv"  # the val images selection saw, at a label fraction
TENSORBOARD = "tensorboard"  # a run's TensorBoard events
LR_SEARCH = "lr-search"  # a grid's folder of the learning rates a search tried and did not choose
LOGS = "logs"  # the CSV log's folder; its file, metrics.csv, is Lightning's CSVLogger's name
CURVES = "metrics.csv"
SSL_OUTPUTS = (BACKBONE, BACKBONE_JSON)
FINETUNE_OUTPUTS = (METRICS, "val_predictions.csv", "test_predictions.csv")  # predictions_file
ANALYSIS = "analysis.json"
IDENTITY = "identity.json"  # what makes the run's result what it is (medssl.identity)
SPLIT_IDENTITY = "split.json"  # the flags a grid's shared split was made with
CELLS = "cells"  # a grid's folder of its cells' logs when they run in processes of their own
FAILED = "failed.json"  # a grid's cells that failed in its last parallel call, with their logs
SKIPPED = "skipped.json"  # a grid's models skipped, with why (compare writes, report reads)
DEFAULT_MARGIN = 2.0  # points: the equivalence margin where none is declared


def declare_analysis(base: Path, analysis) -> dict:
    """Write the grid's analysis plan (AnalysisOptions) before its first run; an existing plan
    is kept as declared, and returned. A later flag changes what a report uses, never the record
    of what was declared first."""
    path = Path(base) / ANALYSIS
    if path.is_file():
        return json.loads(path.read_text())
    plan = {"primary_metric": analysis.primary_metric,
            "equivalence_margin": (DEFAULT_MARGIN if analysis.equivalence_margin is None
                                   else analysis.equivalence_margin),
            "declared": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write(path, lambda p: p.write_text(json.dumps(plan, indent=2)))
    return plan


def declared_analysis(base: Path) -> dict | None:
    """The grid's analysis plan, or None for a grid made before plans were written."""
    path = Path(base) / ANALYSIS
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        return None


def dataset_dir(dataset: str) -> Path:
    return RUNS / dataset


def ssl_dir(base: Path, init: str, method: str = "simclr") -> Path:
    """SimCLR, the study's method, keeps the study's folder names (ssl-random, ssl-imagenet);
    every other method carries its name: ssl-<method>-<init>. A foundation prior's label is its
    init (timm:NAME spelt timm-NAME: no colon in a folder name)."""
    init = init.replace(":", "-")
    return Path(base) / (f"ssl-{init}" if method == "simclr" else f"ssl-{method}-{init}")


def finetune_dir(base: Path, model: str, seed: int, label_fraction: float = 1.0,
                 protocol: str = "finetune") -> Path:
    """A model's run at a seed and label fraction; a frozen protocol's (linear, knn) in a
    folder of its own inside the model's."""
    frac = "" if label_fraction == 1.0 else f"frac{label_fraction:g}"
    inside = "" if protocol == "finetune" else protocol
    return Path(base) / model_folder(model) / inside / frac / f"seed{seed}"








def mark_finished(run: Path, outputs: tuple[str, ...]) -> None:
    """Write the completion marker: call it after every file in `outputs` is in place."""
    run = Path(run)
    marker = {"finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "files": {name: (run / name).stat().st_size for name in outputs}}
    atomic_write(run / MARKER, lambda p: p.write_text(json.dumps(marker, indent=2)))


def is_finished(run: Path) -> bool:
    """Whether `run` has its marker and every file the marker lists, at the listed size."""
    return unfinished_reason(run) is None


def last_checkpoint(run: Path) -> Path:
    """`<run>/checkpoints/last.ckpt`: the checkpoint --resume continues from."""
    return Path(run) / CHECKPOINTS / LAST


def best_checkpoint(run: Path) -> Path:
    """`<run>/checkpoints/best.ckpt`: a finetuning run's selected weights."""
    return Path(run) / CHECKPOINTS / BEST


def member_checkpoint(run: Path, model: str) -> Path:
    """`<cohort run>/checkpoints/best-<model>.ckpt`: a cohort member's selected weights, from
    which its own folder's best.ckpt is written."""
    return Path(run) / CHECKPOINTS / f"best-{model_folder(model)}.ckpt"


def predictions_file(run: Path, split: str) -> Path:
    """`<run>/<split>_predictions.csv`: a finetuning run's probabilities per image (val, test)."""
    return Path(run) / f"{split}_predictions.csv"


def curves_file(run: Path) -> Path:
    """`<run>/logs/metrics.csv`: the per-epoch curves (training.run_logs)."""
    return Path(run) / LOGS / CURVES


def unfinished_reason(run: Path) -> str | None:
    """Why `run` does not count as finished, in words (None when it does)."""
    run = Path(run)
    try:
        files = json.loads((run / MARKER).read_text())["files"]
    except FileNotFoundError:
        if last_checkpoint(run).is_file():
            return "interrupted: a checkpoint but no completion marker (continue it with --resume)"
        return f"no completion marker ({MARKER})"
    except (OSError, ValueError, KeyError, TypeError):
        return f"its completion marker {MARKER} is unreadable or cut short"
    for name, size in files.items():
        try:
            actual = (run / name).stat().st_size
        except OSError:
            return f"{name} is missing, although its completion marker lists it"
        if actual != size:
            return (f"{name} is {actual} bytes, its completion marker says {size}: changed or "
                    "cut short after the run finished")
    return None


def is_interrupted(run: Path) -> bool:
    """A run that saved a checkpoint and did not finish: --resume continues it."""
    return last_checkpoint(run).is_file() and not is_finished(run)


def ssl_finished(run: Path) -> bool:
    return is_finished(run) and all((Path(run) / f).is_file() for f in SSL_OUTPUTS)


def finetune_finished(run: Path) -> bool:
    return is_finished(run) and all((Path(run) / f).is_file() for f in FINETUNE_OUTPUTS)


def open_run_folder(out: Path, outputs: tuple[str, ...], force: bool, resume: bool,
                    owner: bool = True) -> Path | None:
    """Refuse to overwrite a finished run without `force`; return the checkpoint to resume from
    (None for a fresh start), refusing `resume` when there is none.

    Whatever goes ahead, the marker and the result files of an earlier run are removed first: a
    forced rerun cut off half-way must not look finished with the old run's results. Only the
    `owner` (rank 0 of a distributed run) checks and cleans; the other ranks follow it."""
    out = Path(out)
    if not owner:
        return last_checkpoint(out) if resume else None
    if is_finished(out) and not force:
        raise MedsslError(f"{out} already holds a finished run ({MARKER}). "
                          "Fix: pass --force to run it again, or --out another folder.")
    last = last_checkpoint(out)
    if not resume and not force and is_interrupted(out):
        raise MedsslError(f"{out} holds an interrupted run (checkpoints/last.ckpt, no completion "
                          "marker). Fix: pass --resume to continue it where it stopped, --force to "
                          "start it again from epoch 1, or --out another folder.")
    if resume and not last.is_file():
        raise MedsslError(f"--resume: no checkpoint at {last}. Fix: drop --resume to start anew.")
    for name in (MARKER, *outputs):
        (out / name).unlink(missing_ok=True)
    if resume:
        return last
    # A fresh start: what an earlier, unfinished or forced-over run left must not be mistaken
    # for this run's (a stale last.ckpt would be what a later --resume continues from).
    for owned in (CHECKPOINTS, "logs", "tensorboard"):
        shutil.rmtree(out / owned, ignore_errors=True)
    return None


@contextlib.contextmanager
def cleaned_up_on_failure(folder: Path, owner: bool = True):
    """Remove `folder` if this run created it and fails before anything worth keeping is in it
    (a checkpoint to resume from, or a finished run): a refused input or an early crash leaves
    no half-made folder behind. A folder that was there before is never removed."""
    folder = Path(folder)
    existed = folder.exists()
    try:
        yield
    except BaseException:
        if owner and not existed and folder.is_dir() and not _worth_keeping(folder):
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _worth_keeping(folder: Path) -> bool:
    return any(folder.rglob(LAST)) or any(folder.rglob(MARKER))
