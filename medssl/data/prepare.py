"""From a dataset name and a data root to a checked, split table of samples ready to train on."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import pandas as pd

from medssl.data.scan_cache import findings_file, keep_findings, kept_findings
from medssl.data.duplicates import find_duplicates
from medssl.data.files import unread_kinds, unread_note
from medssl.data.dicom import patient_groups
from medssl.data.images import inspect_images
from medssl.data.windowing import parse_window
from medssl.data.registry import SPLITS, DatasetAdapter, Problem, ReadOptions, SampleTable, get_adapter
from medssl.data.splits import EXCLUDED, assign_splits, read_split_csv, reason_kind
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
    duplicates: str = "drop"  # the duplicate policy: splits.DUPLICATE_POLICIES
    window: str = "auto"  # DICOM and 16-bit pictures to 8 bits: windowing.parse_window


def data_config(options) -> DataConfig:
    """The DataConfig of a configuration's DataOptions (medssl.options)."""
    return DataConfig(dataset=options.dataset, data_root=options.data_root,
                      seed=options.split_seed, val_fraction=options.val_fraction,
                      test_fraction=options.test_fraction, split_file=options.split_file,
                      read_options=options.read_options, duplicates=options.duplicates,
                      window=options.window)


def read_layout(cfg: DataConfig) -> tuple[DatasetAdapter, SampleTable]:
    """The download's layout as a table of samples (splits as published; nothing decoded yet)."""
    adapter = get_adapter(cfg.dataset)
    root = adapter.find_root(cfg.data_root)
    table = adapter.read(root, cfg.read_options or ReadOptions())
    try:
        table.window = str(parse_window(cfg.window))
    except ValueError as exc:
        raise MedsslError(f"{exc}. Fix: --window auto (the default), minmax, or C,W.") from None
    patient_groups(table)  # DICOM pictures grouped by PatientID where the layout has no group
    if table.samples.empty:
        raise MedsslError(f"No usable images found for {cfg.dataset} under {table.root}."
                          + _listing(table.problems, cfg.dataset))
    unread = unread_note(unread_kinds(table.root))
    if unread:  # nothing skipped in silence (a folder of DICOMs beside the PNGs, say)
        table.notes.append(unread)
        log.warning("%s: %s", table.root, unread)
    if len(table.classes) < 2:  # nothing to tell apart: an error in `check` and in training
        table.problems.append(Problem(
            str(table.root), f"one class only ({', '.join(table.classes)}): a classifier needs "
            "two or more. Fix: point --data-root at the folder that holds every class"))
    return adapter, table


def scan_images(table: SampleTable, adapter: DatasetAdapter, workers: int | None = None,
                progress: bool = True) -> list[Problem]:
    """The one decode pass: every image decoded, the broken ones added to the table's problems
    (and returned), and the copies among the rest found (`table.duplicates`). A group of copies
    filed under different labels is also a warning. Its findings are kept (data.scan_cache): a
    later run on the same, unchanged files reuses them."""
    paths = table.samples["path"].tolist()
    kept_at = findings_file(table.root, paths, table.window, type(adapter).__name__)
    kept = kept_findings(kept_at)
    if kept:  # decoded and compared before, every file unchanged
        found, table.duplicates = kept
    else:
        found, prints = inspect_images(table.root, paths, workers, progress, table.window)
        table.duplicates = find_duplicates(table.root, prints, adapter.image_id, progress,
                                           table.window)
        keep_findings(kept_at, len(paths), found, table.duplicates)
    table.problems.extend(found)
    bad = [p for p in found if p.severity == "error"]  # warnings: a multi-frame DICOM
    label_of = dict(zip(table.samples["path"], table.samples["label"]))
    for group in table.duplicates:
        labels = sorted({label_of[p] for p in group.paths})
        if len(labels) > 1:
            table.problems.append(Problem(
                group.paths[0], f"the same picture ({group.kind} copies) is filed under "
                f"different labels ({', '.join(labels)}): {', '.join(group.paths)}", "warning"))
    return bad


def assign(table: SampleTable, cfg: DataConfig) -> None:
    """Give every sample a split: carved under the duplicate policy, or read from a split file."""
    table.duplicate_policy = cfg.duplicates
    if cfg.split_file:
        table.samples = read_split_csv(cfg.split_file, table, cfg.duplicates)
        table.notes.append(f"split read from {cfg.split_file}")
    else:
        table.samples = assign_splits(table.samples, cfg.seed, cfg.val_fraction,
                                      cfg.test_fraction, table.duplicates, cfg.duplicates)


def open_dataset(cfg: DataConfig, workers: int | None = None, progress: bool = False) -> SampleTable:
    """Read the download's layout, decode every image once (broken files and copies found),
    and give every sample a split."""
    adapter, table = read_layout(cfg)
    scan_images(table, adapter, workers, progress)
    assign(table, cfg)
    table.problems.extend(doubtful(table))
    return table


def prepare(cfg: DataConfig, skip_bad_images: bool = False, workers: int | None = None,
            progress: bool = True) -> tuple[SampleTable, dict]:
    """A table that is safe to train on, and facts for the run's metadata.

    Any error in the layout (unknown label, missing image) stops here with the list. Broken images
    stop here too unless `skip_bad_images`, in which case they are dropped and counted.
    """
    adapter, table = read_layout(cfg)
    layout_errors = table.errors
    if layout_errors:
        raise MedsslError(f"The {cfg.dataset} dataset at {table.root} has "
                          f"{len(layout_errors)} problem(s):" + _listing(layout_errors, cfg.dataset))
    bad = scan_images(table, adapter, workers, progress)
    if bad and not skip_bad_images:
        raise MedsslError(
            f"{len(bad)} image(s) of {cfg.dataset} at {table.root} cannot be decoded:"
            + _listing(bad, cfg.dataset)
            + "\nFix: replace them from the download, or pass --skip-bad-images to leave them out.")
    assign(table, cfg)
    if bad:
        bad_paths = {p.path for p in bad}
        table.samples = table.samples[~table.samples["path"].isin(bad_paths)].reset_index(drop=True)
        table.notes.append(f"skipped {len(bad)} unreadable image(s)")
        log.warning("--skip-bad-images: left out %d unreadable image(s) of %s:%s", len(bad),
                    cfg.dataset, _listing(bad, cfg.dataset))
    for p in doubtful(table):  # allowed, but rarely meant: said at the start of training
        table.problems.append(p)
        log.warning("%s: %s", p.path, p.problem)
    excluded = duplicates_info(table)
    if excluded["excluded_images"]:
        log.info("--duplicates %s: %d image(s) left out of training (%s)", cfg.duplicates,
                 excluded["excluded_images"],
                 ", ".join(f"{n} {kind}" for kind, n in excluded["excluded"].items()))
    info = {"dataset": cfg.dataset, "root": str(table.root), "images": len(table.samples),
            "skipped_bad_images": sorted(p.path for p in bad), "duplicates": excluded,
            "notes": list(table.notes)}
    return table, info


def doubtful(table: SampleTable) -> list[Problem]:
    """Labels that work but are rarely meant, as warnings: classes whose names differ only by
    case (`covid` and `Covid` are two classes) or are the same number (`1`, `1.0`), and a class no train image has (no model can
    learn it, yet val and test count it)."""
    found = []
    for names, how in ((alike(table.classes, str.lower), "differ only by case"),
                       (alike(table.classes, as_number), "are the same number")):
        found += [Problem("labels", f"{' and '.join(repr(n) for n in group)} {how}, so they are "
                          "separate classes. Fix: spell them alike in the folders or the CSV if "
                          "they are one class", "warning") for group in names]
    counts = pd.crosstab(table.samples["label"], table.samples["split"])
    for c in table.classes:
        row = counts.loc[c] if c in counts.index else pd.Series(dtype=int)
        held = {s: int(row.get(s, 0)) for s in ("val", "test") if row.get(s, 0)}
        if not row.get("train", 0) and held:
            where = ", ".join(f"{n} in {s}" for s, n in held.items())
            found.append(Problem("labels", f"class '{c}' has no train images ({where}): no model "
                                 "can learn it. Fix: add train images of it, or leave it out of "
                                 "the dataset", "warning"))
    return found


def alike(classes: list[str], key) -> list[list[str]]:
    """The groups of two or more class names that `key` maps to one value (None: no value)."""
    groups: dict = {}
    for c in classes:
        value = key(c)
        if value is not None:
            groups.setdefault(value, []).append(c)
    return [names for names in groups.values() if len(names) > 1]


def as_number(name: str) -> float | None:
    """A label's value as a number (`1`, `1.0`, `01` -> 1.0), None for one that is none; read
    from a CSV, `1` and `1.0` are two classes unless someone says so."""
    try:
        value = float(name)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def duplicates_info(table: SampleTable) -> dict:
    """For run metadata and reports: the policy, the groups found by kind, what was left out."""
    excluded = table.samples[table.samples["split"] == EXCLUDED]
    by_kind: dict[str, int] = {}
    for group in table.duplicates:
        by_kind[group.kind] = by_kind.get(group.kind, 0) + 1
    left_out: dict[str, int] = {}
    for reason in excluded.get("reason", []):
        left_out[reason_kind(reason)] = left_out.get(reason_kind(reason), 0) + 1
    return {"policy": table.duplicate_policy, "groups": len(table.duplicates),
            "groups_by_kind": by_kind, "images_in_groups": sum(len(g.paths) for g in table.duplicates),
            "excluded_images": len(excluded), "excluded": left_out}


def summary(table: SampleTable) -> dict:
    """The `medssl check --json` object: counts per split and class, groups, duplicate groups,
    what the duplicate policy left out, every problem."""
    counts = pd.crosstab(table.samples["split"], table.samples["label"])
    splits = {s: {c: int(counts.at[s, c]) if s in counts.index and c in counts.columns else 0
                  for c in table.classes}
              for s in SPLITS}
    row_of = table.samples.set_index("path")
    duplicates = [{"paths": list(g.paths), "kind": g.kind,
                   "labels": [row_of.at[p, "label"] for p in g.paths],
                   "splits": [row_of.at[p, "split"] for p in g.paths]}
                  for g in table.duplicates]
    excluded = table.samples[table.samples["split"] == EXCLUDED]
    return {
        "dataset": table.dataset,
        "root": str(table.root),
        "total": int(len(table.samples)),
        "classes": list(table.classes),
        "splits": splits,
        "groups": int(table.samples["group"].nunique()),
        "duplicate_policy": table.duplicate_policy,
        "duplicates": duplicates,
        "excluded": [{"path": r.path, "label": r.label, "reason": r.reason}
                     for r in excluded.itertuples(index=False)],
        "excluded_by_reason": duplicates_info(table)["excluded"],
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
