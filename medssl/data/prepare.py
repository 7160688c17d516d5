"""From a dataset name and a data root to a checked, split table of samples ready to train on."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pandas as pd

from medssl.data.images import find_bad_images
from medssl.data.registry import SPLITS, Problem, ReadOptions, SampleTable, get_adapter
from medssl.data.splits import assign_splits, read_split_csv
from medssl.errors import MedsslError

MAX_LISTED = 20
log = logging.getLogger("medssl")


@dataclass
class DataConfig:
    dataset: str
    data_root: str | None = None
    seed: int = 0
    val_fraction: float | None = None
    test_fraction: float | None = None
    split_file: str | None = None
    read_options: ReadOptions = field(default_factory=ReadOptions)


def open_dataset(cfg: DataConfig) -> SampleTable:
    """Read the download's layout and give every sample a split (carved, or from a split file)."""
    adapter = get_adapter(cfg.dataset)
    root = adapter.find_root(cfg.data_root)
    table = adapter.read(root, cfg.read_options or ReadOptions())
    if table.samples.empty:
        raise MedsslError(f"No usable images found for {cfg.dataset} under {table.root}."
                          + _listing(table.problems, cfg.dataset))
    if cfg.split_file:
        table.samples = read_split_csv(cfg.split_file, table)
        table.notes.append(f"split read from {cfg.split_file}")
    else:
        table.samples = assign_splits(table.samples, cfg.seed, cfg.val_fraction, cfg.test_fraction)
    return table


def check_images(table: SampleTable, workers: int | None = None, progress: bool = True) -> list[Problem]:
    """Decode every image; the broken ones are added to the table's problems and returned."""
    bad = find_bad_images(table.root, table.samples["path"].tolist(), workers, progress)
    table.problems.extend(bad)
    return bad


def prepare(cfg: DataConfig, skip_bad_images: bool = False, workers: int | None = None,
            progress: bool = True) -> tuple[SampleTable, dict]:
    """A table that is safe to train on, and facts for the run's metadata.

    Any error in the layout (unknown label, missing image) stops here with the list. Broken images
    stop here too unless `skip_bad_images`, in which case they are dropped and counted.
    """
    table = open_dataset(cfg)
    layout_errors = table.errors
    if layout_errors:
        raise MedsslError(f"The {cfg.dataset} dataset at {table.root} has "
                          f"{len(layout_errors)} problem(s):" + _listing(layout_errors, cfg.dataset))
    bad = check_images(table, workers, progress)
    if bad and not skip_bad_images:
        raise MedsslError(
            f"{len(bad)} image(s) of {cfg.dataset} at {table.root} cannot be decoded:"
            + _listing(bad, cfg.dataset)
            + "\nFix: replace them from the download, or pass --skip-bad-images to leave them out.")
    if bad:
        bad_paths = {p.path for p in bad}
        table.samples = table.samples[~table.samples["path"].isin(bad_paths)].reset_index(drop=True)
        table.notes.append(f"skipped {len(bad)} unreadable image(s)")
        log.warning("--skip-bad-images: left out %d unreadable image(s) of %s:%s", len(bad),
                    cfg.dataset, _listing(bad, cfg.dataset))
    info = {"dataset": cfg.dataset, "root": str(table.root), "images": len(table.samples),
            "skipped_bad_images": sorted(p.path for p in bad), "notes": list(table.notes)}
    return table, info


def summary(table: SampleTable) -> dict:
    """The `medssl check --json` object: counts per split and class, groups, every problem."""
    counts = pd.crosstab(table.samples["split"], table.samples["label"])
    splits = {s: {c: int(counts.at[s, c]) if s in counts.index and c in counts.columns else 0
                  for c in table.classes}
              for s in SPLITS}
    return {
        "dataset": table.dataset,
        "root": str(table.root),
        "total": int(len(table.samples)),
        "classes": list(table.classes),
        "splits": splits,
        "groups": int(table.samples["group"].nunique()),
        "problems": [p.as_dict() for p in table.problems],
        "notes": list(table.notes),
        "usable": not table.errors,
    }


def _listing(problems: list[Problem], dataset: str) -> str:
    lines = [f"\n  {p.path}: {p.problem}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"\n  ... and {len(problems) - MAX_LISTED} more "
                     f"(`medssl check --dataset {dataset}` lists them all)")
    return "".join(lines)
