"""The results table: one row per model and label fraction, mean ± sd over seeds, and for M2-M4
the test-accuracy difference to M1 and to M3 with a paired bootstrap 95% interval.

Only finished runs (with their completion marker) are read; unfinished folders are listed as skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from medssl.atomic import atomic_write
from medssl.runs import finetune_finished

# (column, split, metric) in the order of the study's table, then the added metrics.
COLUMNS = [("train_acc", "train", "acc"), ("train_loss", "train", "loss"),
           ("test_acc", "test", "acc"), ("test_loss", "test", "loss"),
           ("test_balanced_acc", "test", "balanced_acc"), ("test_macro_f1", "test", "macro_f1"),
           ("test_auroc", "test", "auroc")]
REFERENCES = ("M1", "M3")
BOOTSTRAP_RESAMPLES = 2000


def collect_runs(base: Path) -> tuple[pd.DataFrame, list[str]]:
    """Every finished finetuning run under `base` as a row; and the unfinished folders skipped."""
    rows, skipped = [], []
    # Every folder but the pretrainings: the model of a run is what its metrics.json says,
    # never guessed from a folder's name (M2-byol, a renamed folder, an older M1-M4 grid alike).
    for model_dir in sorted(p for p in Path(base).iterdir()
                            if p.is_dir() and not p.name.startswith("ssl-")):
        # split.csv is the first file a run writes: a folder with it but no marker is unfinished
        # (so is one with a marker and no split.csv: something was deleted).
        found = {p.parent for name in ("split.csv", "finished.json") for p in model_dir.rglob(name)}
        for run in sorted(found):
            if not finetune_finished(run):
                skipped.append(str(run))
                continue
            try:
                m = json.loads((run / "metrics.json").read_text())
            except (OSError, ValueError):  # the right size, the wrong bytes: not a result
                skipped.append(str(run))
                continue
            row = {"dataset": m["dataset"], "model": m["model"], "seed": m["seed"],
                   "label_fraction": m["label_fraction"], "run": str(run),
                   "selected_epoch": m["selection"]["epoch"],
                   # Older runs recorded no method: M2/M4 were SimCLR's.
                   "method": m["prior"].get("method", "simclr" if m["prior"].get("ssl_checkpoint")
                                            else None),
                   "supervised_prior": bool(m["prior"].get("supervised_prior", False))}
            row.update({col: m[split][metric] for col, split, metric in COLUMNS})
            # Runs before the duplicate search have no record: None, never a guess.
            duplicates = m.get("data", {}).get("duplicates") or {}
            row["duplicate_policy"] = duplicates.get("policy")
            row["duplicates"] = json.dumps(duplicates, sort_keys=True)
            rows.append(row)
    return pd.DataFrame(rows), skipped


def _accuracy_per_seed(runs: pd.DataFrame) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """seed -> (labels, whether each test image was predicted right), rows in path order."""
    out = {}
    for _, r in runs.iterrows():
        pred = pd.read_csv(Path(r["run"]) / "test_predictions.csv").sort_values("path")
        probs = pred.filter(like="prob_").to_numpy()
        classes = [c[len("prob_"):] for c in pred.filter(like="prob_").columns]
        labels = pred["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
        out[int(r["seed"])] = (pred["path"].to_numpy(), probs.argmax(1) == labels)
    return out


def paired_bootstrap(model_runs: pd.DataFrame, ref_runs: pd.DataFrame, seed: int = 0) -> dict | None:
    """Test accuracy of a model minus a reference, averaged over the seeds both have, with a 95%
    interval from resampling test images (the same resample for both: the comparison is paired)."""
    a, b = _accuracy_per_seed(model_runs), _accuracy_per_seed(ref_runs)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    paths = a[seeds[0]][0]
    if any(not np.array_equal(a[s][0], paths) or not np.array_equal(b[s][0], paths) for s in seeds):
        return None  # different test sets: not comparable image by image
    diff = np.mean([a[s][1].astype(float) - b[s][1].astype(float) for s in seeds], axis=0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), (BOOTSTRAP_RESAMPLES, len(diff)))
    resampled = diff[idx].mean(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return {"diff": float(diff.mean()), "low": float(low), "high": float(high), "seeds": len(seeds)}


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over seeds per model and label fraction, plus paired differences."""
    rows = []
    for (frac, model), group in runs.groupby(["label_fraction", "model"], sort=True):
        row = {"label_fraction": frac, "model": model, "seeds": len(group)}
        for col, _, _ in COLUMNS:
            row[f"{col}_mean"] = group[col].mean()
            row[f"{col}_sd"] = group[col].std(ddof=1) if len(group) > 1 else float("nan")
        for ref in REFERENCES:
            ref_runs = runs[(runs["label_fraction"] == frac) & (runs["model"] == ref)]
            result = None if ref == model or ref_runs.empty else paired_bootstrap(group, ref_runs)
            for key in ("diff", "low", "high"):
                row[f"test_acc_vs_{ref}_{key}"] = result[key] if result else float("nan")
        rows.append(row)
    # Full labels first, as in the study's tables; then the smaller fractions.
    return (pd.DataFrame(rows).sort_values(["label_fraction", "model"], ascending=[False, True])
            .reset_index(drop=True))


def _pm(mean: float, sd: float, percent: bool) -> str:
    scale = 100 if percent else 1
    text = f"{mean * scale:.2f}" if percent else f"{mean:.3f}"
    if not np.isnan(sd):
        text += f" ± {sd * scale:.2f}" if percent else f" ± {sd:.3f}"
    return text


def _diff(row: pd.Series, ref: str) -> str:
    d = row[f"test_acc_vs_{ref}_diff"]
    if np.isnan(d):
        return "—"
    return f"{d * 100:+.2f} [{row[f'test_acc_vs_{ref}_low'] * 100:+.2f}, {row[f'test_acc_vs_{ref}_high'] * 100:+.2f}]"


def markdown_table(summary: pd.DataFrame, skipped_models: dict[str, str] | None = None) -> str:
    """The table as Markdown: accuracies in %, losses as is, differences in points with 95% CI."""
    head = ["label fraction", "model", "seeds", "train acc %", "train loss", "test acc %",
            "test loss", "balanced acc %", "macro-F1 %", "AUROC %", "Δ test acc vs M1",
            "Δ test acc vs M3"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        cells = [f"{r['label_fraction']:g}", r["model"], str(r["seeds"])]
        for col, _, metric in COLUMNS:
            cells.append(_pm(r[f"{col}_mean"], r[f"{col}_sd"], metric != "loss"))
        cells += [_diff(r, "M1"), _diff(r, "M3")]
        lines.append("| " + " | ".join(cells) + " |")
    by_reason: dict[str, list[str]] = {}
    for model, reason in (skipped_models or {}).items():
        by_reason.setdefault(reason, []).append(model)
    for reason, models in by_reason.items():
        lines.append(f"\n{' and '.join(models)} skipped: {reason}")
    lines.append("\nmean ± sd over seeds; Δ: test accuracy difference in points, averaged over "
                 "seeds, with a paired bootstrap 95% interval over test images.")
    return "\n".join(lines) + "\n"


def duplicates_line(runs: pd.DataFrame) -> str:
    """What the duplicate policy of the runs did, from their metadata; one policy per table."""
    from medssl.errors import MedsslError

    records = runs["duplicates"].unique()
    if len(records) > 1:
        policies = sorted(str(p) for p in runs["duplicate_policy"].unique())
        raise MedsslError(f"The runs in this folder were split differently (duplicate policies or "
                          f"counts differ: {', '.join(policies)}), so they cannot share one table. "
                          "Fix: report each split from its own folder (`medssl compare --out`).")
    info = json.loads(records[0])
    if not info:
        return "Duplicates: not searched (runs made before medssl looked for copies)."
    groups = f"{info['groups']} group(s) of copies of one picture found"
    if info["policy"] == "keep":
        return (f"Duplicates (--duplicates keep): {groups}, kept where the download files them "
                "(the published splits, as the study used them).")
    kinds = ", ".join(f"{n} {kind}" for kind, n in info["excluded"].items())
    left = (f"; {info['excluded_images']} image(s) left out of train, val and SSL ({kinds})"
            if info["excluded_images"] else "; nothing needed leaving out")
    return f"Duplicates (--duplicates drop): {groups}{left}."


def write_results(base: Path, skipped_models: dict[str, str] | None = None) -> tuple[pd.DataFrame, str, list[str]]:
    """results.csv and results.md in `base`, from its finished runs; returns (summary, md, skipped)."""
    runs, skipped = collect_runs(base)
    if runs.empty:
        return pd.DataFrame(), "", skipped
    summary = summarise(runs)
    summary["duplicate_policy"] = runs["duplicate_policy"].iloc[0]
    md = markdown_table(summary, skipped_models) + "\n" + duplicates_line(runs) + "\n"
    supervised = sorted(runs.loc[runs["supervised_prior"], "model"].unique())
    if supervised:  # not self-supervised: a fair reader must know which priors saw labels
        md += (f"\n{', '.join(supervised)}: a supervised prior (its pretraining learned from the "
               "labels of the labelled train images, no others), not a self-supervised one.\n")
    if skipped:  # said in the table itself, so that it never looks complete when it is not
        names = ", ".join(str(Path(r).relative_to(base)) for r in skipped)
        md += f"\nNot included, unfinished (`medssl report` says why): {names}\n"
    atomic_write(Path(base) / "results.csv", lambda p: summary.to_csv(p, index=False))
    atomic_write(Path(base) / "results.md", lambda p: p.write_text(md))
    return summary, md, skipped
