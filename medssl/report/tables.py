"""The results table: one row per model and label fraction, mean ± sd over seeds; for every
model its paired differences to M1 and to M3 in test accuracy, balanced accuracy, macro-F1 and
AUROC, with two-level bootstrap 95% intervals and Holm-adjusted p-values (report.statistics).

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
# Read with a default: runs made before these were recorded give NaN, never a guess.
EXTRA_COLUMNS = {
    "test_ece": ("test", "ece"), "test_brier": ("test", "brier"),
    "test_last_acc": ("test_last", "acc"),
    "acc_gap_selected": ("overfitting", "acc_gap_selected"),
    "acc_gap_last": ("overfitting", "acc_gap_last"),
    "loss_gap_selected": ("overfitting", "loss_gap_selected"),
    "loss_gap_last": ("overfitting", "loss_gap_last"),
    "val_loss_rise": ("overfitting", "val_loss_rise"),
    "pretrain_images_seen": ("compute", "pretrain_images_seen"),
    "finetune_images_seen": ("compute", "finetune_images_seen"),
    "pretrain_gpu_hours": ("compute", "pretrain_gpu_hours"),
    "finetune_gpu_hours": ("compute", "finetune_gpu_hours"),
}
REFERENCES = ("M1", "M3")
PAIRED_METRICS = ("acc", "balanced_acc", "macro_f1", "auroc")
BOOTSTRAP_RESAMPLES = 2000


def collect_runs(base: Path) -> tuple[pd.DataFrame, list[str]]:
    """Every finished finetuning run under `base` as a row; and the unfinished folders skipped."""
    rows, skipped = [], []
    # Every folder but the pretrainings: the model of a run is what its metrics.json says,
    # never guessed from a folder's name (M2-byol, a renamed folder, an older M1-M4 grid alike).
    # (lr-search holds the runs of learning-rate searches: choices, not results.)
    for model_dir in sorted(p for p in Path(base).iterdir()
                            if p.is_dir() and not p.name.startswith("ssl-")
                            and p.name != "lr-search"):
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
            row.update({col: _number((m.get(part) or {}).get(key))
                        for col, (part, key) in EXTRA_COLUMNS.items()})
            row["lr"] = m.get("lr", m["config"].get("lr"))
            # Distilled and mutual models: the model(s) trained alone they are compared with.
            row["base_models"] = "+".join(m.get("base_models") or []) or None
            row["lr_searched"] = bool(m.get("lr_grid"))
            row["ssl_seed"] = m["prior"].get("ssl_seed")
            # Runs before the duplicate search have no record: None, never a guess.
            duplicates = m.get("data", {}).get("duplicates") or {}
            row["duplicate_policy"] = duplicates.get("policy")
            row["duplicates"] = json.dumps(duplicates, sort_keys=True)
            rows.append(row)
    return pd.DataFrame(rows), skipped


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def _test_predictions(runs: pd.DataFrame) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """seed -> (test image paths, labels, probabilities), rows in path order."""
    out = {}
    for _, r in runs.iterrows():
        pred = pd.read_csv(Path(r["run"]) / "test_predictions.csv").sort_values("path")
        probs = pred.filter(like="prob_")
        classes = [c[len("prob_"):] for c in probs.columns]
        labels = pred["label"].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy()
        out[int(r["seed"])] = (pred["path"].to_numpy(), labels, probs.to_numpy())
    return out


def _ensemble_predictions(members: list[pd.DataFrame]) -> dict:
    """seed -> (paths, labels, mean probabilities) of several models trained alone, over the
    seeds all of them have: the reference of a mutual-learning cohort's ensemble, so that what
    ensembling alone brings is not credited to mutual learning."""
    each = [_test_predictions(runs) for runs in members]
    seeds = set.intersection(*(set(e) for e in each))
    out = {}
    for s in sorted(seeds):
        paths, labels = each[0][s][0], each[0][s][1]
        if any(not np.array_equal(e[s][0], paths) for e in each):
            continue  # tested on different images: no ensemble image by image
        out[s] = (paths, labels, np.mean([e[s][2] for e in each], axis=0))
    return out


def paired_bootstrap(model_runs: pd.DataFrame, ref_runs: pd.DataFrame | list[pd.DataFrame],
                     seed: int = 0) -> dict | None:
    """Each headline metric of a model minus a reference over the seeds both have, with a 95%
    interval and p-value from the two-level bootstrap (report.statistics); None when they share
    no seed or were tested on different images. A list of references is their ensemble (the
    mean of their probabilities, seed by seed)."""
    from medssl.report.statistics import paired_difference

    a = _test_predictions(model_runs)
    b = (_ensemble_predictions(ref_runs) if isinstance(ref_runs, list)
         else _test_predictions(ref_runs))
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    paths, labels = a[seeds[0]][0], a[seeds[0]][1]
    if any(not np.array_equal(x[s][0], paths) or not np.array_equal(x[s][1], labels)
           for s in seeds for x in (a, b)):
        return None  # different test sets: not comparable image by image
    return paired_difference(labels, [a[s][2] for s in seeds], [b[s][2] for s in seeds],
                             BOOTSTRAP_RESAMPLES, seed)


def sd_includes(group: pd.DataFrame) -> str:
    """Which variance a model's sd over seeds contains: finetuning's always; pretraining's only
    when each seed finetuned from its own pretraining (--ssl-per-seed)."""
    ssl_seeds = group["ssl_seed"].dropna()
    if ssl_seeds.empty:
        return "finetuning"
    if ssl_seeds.nunique() == len(group) > 1:
        return "finetuning + pretraining"
    return "finetuning (one pretraining)"


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over seeds per model and label fraction, plus paired differences."""
    rows = []
    for (frac, model), group in runs.groupby(["label_fraction", "model"], sort=True):
        row = {"label_fraction": frac, "model": model, "seeds": len(group)}
        for col in [c for c, _, _ in COLUMNS] + list(EXTRA_COLUMNS):
            row[f"{col}_mean"] = group[col].mean()
            row[f"{col}_sd"] = group[col].std(ddof=1) if len(group) > 1 else float("nan")
        row["lr"] = " ".join(f"{v:g}" for v in sorted(group["lr"].dropna().unique()))
        row["lr_searched"] = bool(group["lr_searched"].all())
        row["sd_includes"] = sd_includes(group)
        at_frac = runs[runs["label_fraction"] == frac]
        results = {}
        for ref in REFERENCES:
            ref_runs = at_frac[at_frac["model"] == ref]
            results[ref] = (None if ref == model or ref_runs.empty
                            else paired_bootstrap(group, ref_runs))
        # A distilled or mutual model against its own base trained alone: does KD or DML help?
        bases = group["base_models"].dropna().unique()
        row["base"] = None
        results["base"] = None
        if len(bases) == 1:
            names = bases[0].split("+")
            refs = [at_frac[at_frac["model"] == name] for name in names]
            if all(not r.empty for r in refs):
                row["base"] = names[0] if len(names) == 1 else f"{bases[0]} ensemble"
                # Against M1 or M3 it is that column's comparison: one test, counted once.
                results["base"] = (results[names[0]] if row["base"] in REFERENCES else
                                   paired_bootstrap(group, refs[0] if len(refs) == 1 else refs))
        for ref, result in results.items():
            for metric in PAIRED_METRICS:
                for key in ("diff", "low", "high", "p"):
                    row[f"test_{metric}_vs_{ref}_{key}"] = (result[metric][key] if result
                                                            else float("nan"))
        rows.append(row)
    rows = _holm_over_table(rows)
    # Full labels first, as in the study's tables; then the smaller fractions.
    return (pd.DataFrame(rows).sort_values(["label_fraction", "model"], ascending=[False, True])
            .reset_index(drop=True))


def _holm_over_table(rows: list[dict]) -> list[dict]:
    """`_p_holm` beside every `_p`: Holm-adjusted over all the comparisons of the table (every
    model, reference, metric and label fraction), so that the family-wise error stays at 5%."""
    from medssl.report.statistics import holm

    def repeated(row: dict, key: str) -> bool:  # "vs own base" where the base is M1 or M3
        return "_vs_base_" in key and row.get("base") in REFERENCES

    keys = [(i, k) for i, row in enumerate(rows) for k in row
            if k.endswith("_p") and not repeated(row, k)]
    adjusted = holm([rows[i][k] for i, k in keys])
    for (i, k), value in zip(keys, adjusted):
        rows[i][f"{k}_holm"] = value
    for row in rows:
        for k in [k for k in row if k.endswith("_p") and repeated(row, k)]:
            row[f"{k}_holm"] = row[k.replace("_vs_base_", f"_vs_{row['base']}_") + "_holm"]
    return rows


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
    with_base = "base" in summary and summary["base"].notna().any()
    if with_base:
        head.append("Δ test acc vs own base")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        cells = [f"{r['label_fraction']:g}", r["model"], str(r["seeds"])]
        for col, _, metric in COLUMNS:
            cells.append(_pm(r[f"{col}_mean"], r[f"{col}_sd"], metric != "loss"))
        cells += [_diff(r, "M1"), _diff(r, "M3")]
        if with_base:
            own = isinstance(r["base"], str)
            cells.append(f"{_diff(r, 'base')} vs {r['base']}" if own else "—")
        lines.append("| " + " | ".join(cells) + " |")
    by_reason: dict[str, list[str]] = {}
    for model, reason in (skipped_models or {}).items():
        by_reason.setdefault(reason, []).append(model)
    for reason, models in by_reason.items():
        lines.append(f"\n{' and '.join(models)} skipped: {reason}")
    lines.append("\nmean ± sd over seeds; Δ: test accuracy difference in points, averaged over "
                 "seeds, with a 95% interval from a paired two-level bootstrap (seeds, then test "
                 "images).")
    if with_base:
        lines.append("Own base: a distilled student (KD) against its prior trained alone; a "
                     "mutual-learning member (DML(...)/M) against that model trained alone; a "
                     "cohort's ensemble against the ensemble of its members trained alone, so "
                     "that what averaging alone brings is not credited to mutual learning.")
    return "\n".join(lines) + "\n" + differences_table(summary) + recipe_table(summary)


def _count(value: float) -> str:
    return "—" if np.isnan(value) else f"{value:,.0f}"


def recipe_table(summary: pd.DataFrame) -> str:
    """Per model: the learning rate it got, which variance its sd holds, calibration, the
    overfitting measures and the compute it cost."""
    head = ["label fraction", "model", "lr", "sd includes", "test ECE", "test Brier",
            "test acc % (last epoch)", "acc gap selected / last", "val loss rise",
            "images seen (pretrain / finetune)", "GPU-h"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        # A cohort's ensemble has no one selected epoch: its gap at the last only.
        selected = ("—" if np.isnan(r["acc_gap_selected_mean"])
                    else f"{r['acc_gap_selected_mean'] * 100:+.1f}")
        gaps = (f"{selected} / {r['acc_gap_last_mean'] * 100:+.1f}"
                if not np.isnan(r["acc_gap_last_mean"]) else "—")
        hours = [r["pretrain_gpu_hours_mean"], r["finetune_gpu_hours_mean"]]
        gpu = np.nansum(hours) if not np.isnan(hours).all() else np.nan
        lines.append("| " + " | ".join([
            f"{r['label_fraction']:g}", r["model"],
            r["lr"] + (" (chosen on val)" if r["lr_searched"] else ""), r["sd_includes"],
            _pm(r["test_ece_mean"], r["test_ece_sd"], False),
            _pm(r["test_brier_mean"], r["test_brier_sd"], False),
            _pm(r["test_last_acc_mean"], r["test_last_acc_sd"], True), gaps,
            "—" if np.isnan(r["val_loss_rise_mean"]) else f"{r['val_loss_rise_mean']:.3f}",
            f"{_count(r['pretrain_images_seen_mean'])} / {_count(r['finetune_images_seen_mean'])}",
            "not measured (CPU)" if np.isnan(gpu) else f"{gpu:.2f}"]) + " |")
    return ("\nRecipe, calibration, overfitting and compute (means over seeds). Acc gap: accuracy "
            "on a clean pass over labelled train images minus val accuracy, in points, at the "
            "selected and at the last epoch; val loss rise: last minus lowest val loss. The last "
            "epoch's test accuracy is shown, never used to select.\n\n" + "\n".join(lines) + "\n")


def differences_table(summary: pd.DataFrame) -> str:
    """Every paired difference of the table: points, 95% interval, Holm-adjusted p-value."""
    names = {"acc": "accuracy", "balanced_acc": "balanced accuracy", "macro_f1": "macro-F1",
             "auroc": "AUROC"}
    head = ["label fraction", "model", "vs"] + [f"Δ {names[m]}" for m in PAIRED_METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        base = r["base"] if isinstance(r.get("base"), str) else None
        for ref in (*REFERENCES, "base"):
            if np.isnan(r.get(f"test_acc_vs_{ref}_diff", np.nan)) or (ref == "base" and
                                                                      base in REFERENCES):
                continue  # a base of M1 or M3 is marked on that line, not repeated
            cells = [f"{r['label_fraction']:g}", r["model"],
                     f"{base} (own base)" if ref in ("base", base) else ref]
            for m in PAIRED_METRICS:
                key = f"test_{m}_vs_{ref}"
                if np.isnan(r[f"{key}_diff"]):
                    cells.append("—")
                    continue
                cells.append(f"{r[f'{key}_diff'] * 100:+.2f} [{r[f'{key}_low'] * 100:+.2f}, "
                             f"{r[f'{key}_high'] * 100:+.2f}] p={r[f'{key}_p_holm']:.3g}")
            lines.append("| " + " | ".join(cells) + " |")
    if len(lines) == 2:
        return ""
    return ("\nPaired differences on the test split, in points: model minus reference, averaged "
            "over the seeds both have, with a 95% two-level bootstrap interval and a p-value "
            "Holm-adjusted over every comparison of this table (docs/statistics.md).\n\n"
            + "\n".join(lines) + "\n")


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
    if not runs["lr_searched"].any() and runs["lr"].nunique() == 1:
        md += (f"\nEvery model finetuned at lr {runs['lr'].iloc[0]:g}, not searched: one rate "
               "can suit pretrained weights and leave a random init undertrained (or the "
               "reverse). `--lr-grid` chooses each model's rate on val.\n")
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
