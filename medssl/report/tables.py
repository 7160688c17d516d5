"""The results table: one row per model and label fraction, mean ± sd over seeds; for every
model its paired differences to M1 and to M3 (and to its own base) on the task's metrics, with
intervals for the crossed design of seeds and test groups (report.statistics), Holm-adjusted
over the primary endpoint (report.comparisons); and the answer in words on top (report.answer).

Only finished runs (with their completion marker) are read; unfinished folders are listed as skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from medssl.atomic import atomic_write
from medssl.errors import MedsslError
from medssl.identity import differences, read_identity
from medssl.names import PROTOCOLS
from medssl.records import RunRecord, UnreadableRecord, read_run_record
from medssl.report.answer import answer, unlearned_priors
from medssl.report.comparisons import (METRIC_TITLES, REFERENCES, Task, adjust, comparisons,
                                       default_primary, store)
from medssl.runs import DEFAULT_MARGIN, FAILED, MARKER, is_finished, SPLIT, declared_analysis, finetune_finished

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
    # Cost beside gain: the network's parameters, and images per second at the run's size
    # (finetuning: trained; a frozen protocol: its features computed).
    "parameters": ("compute", "parameters"), "images_per_s": ("compute", "images_per_s"),
    "finetune_gpu_hours": ("compute", "finetune_gpu_hours"),
    # The task's own metrics: graded labels (QWK), binary tasks (sensitivity at the specificity
    # target chosen on val, and the specificity that threshold reached on test).
    "test_qwk": ("test", "qwk"), "test_sens_at_spec": ("test", "sens_at_spec"),
}


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
        found = {p.parent for name in (SPLIT, MARKER) for p in model_dir.rglob(name)}
        for run in sorted(found):
            if not finetune_finished(run):
                skipped.append(str(run))
                continue
            try:
                m = read_run_record(run)
            except UnreadableRecord:  # the right size, the wrong bytes: not a result
                skipped.append(str(run))
                continue
            row = {"dataset": m.dataset, "model": m.model, "protocol": m.protocol, "seed": m.seed,
                   "label_fraction": m.label_fraction, "run": str(run),
                   "selected_epoch": m.selection["epoch"],
                   # Older runs recorded no method: M2/M4 were SimCLR's.
                   "method": m.prior.get("method", "simclr" if m.prior.get("ssl_checkpoint")
                                         else None),
                   "supervised_prior": bool(m.prior.get("supervised_prior", False)),
                   # False: its pretraining ended at or below a random init (None: not measured)
                   "prior_learned": m.prior.get("ssl_learned"),
                   "prior_gain": m.prior.get("ssl_readout_gain")}
            row.update({col: getattr(m, split)[metric] for col, split, metric in COLUMNS})
            row.update({col: _number((getattr(m, part) or {}).get(key))
                        for col, (part, key) in EXTRA_COLUMNS.items()})
            row["lr"] = m.lr  # runs from before `lr` was recorded: their config's (records)
            # Distilled and mutual models: the model(s) trained alone they are compared with.
            row.update(task_columns(m))
            row["base_models"] = "+".join(m.base_models or []) or None
            # A distilled or mutual model trains at its base's rate, searched for the base alone:
            # its own runs are one per seed.
            row["lr_searched"] = bool(m.lr_grid) and not m.base_models
            row["lr_borrowed"] = bool(m.lr_grid) and bool(m.base_models)
            row["lr_grid"] = " ".join(f"{v:g}" for v in m.lr_grid or []) or None
            row["test_n"] = m.test.get("n", float("nan"))
            # A frozen protocol's choice on val: the head's rate (linear) or k (knn).
            row["frozen_choice"] = m.selection.get("k", m.selection.get("lr")) \
                if m.protocol != "finetune" else None
            row["ssl_seed"] = m.prior.get("ssl_seed")
            # Runs before the duplicate search have no record: None, never a guess.
            duplicates = m.data.get("duplicates") or {}
            row["duplicate_policy"] = duplicates.get("policy")
            row["duplicates"] = json.dumps(duplicates, sort_keys=True)
            row["identity"] = read_identity(run)  # None: made before runs recorded theirs
            rows.append(row)
    check_pooled(rows)
    return pd.DataFrame(rows).drop(columns="identity", errors="ignore"), skipped


def check_pooled(rows: list[dict]) -> None:
    """A row of the table pools the seeds of one model at one label fraction: their runs must
    differ in nothing but the seed (and the seed's own pretraining). Runs made with other
    settings into the same folders are refused, naming the settings."""
    first: dict[tuple, dict] = {}
    for row in rows:
        if row["identity"] is None:
            continue
        settings = {k: v for k, v in row["identity"]["settings"].items() if k != "seed"}
        key = (row["protocol"], row["label_fraction"], row["model"])
        if key not in first:
            first[key] = {"run": row["run"], "settings": settings}
            continue
        changed = differences({"settings": first[key]["settings"]}, {"settings": settings})
        if changed:
            raise MedsslError(
                f"{row['model']} ({row['protocol']}) at label fraction {row['label_fraction']:g} "
                "would pool runs made "
                f"with other settings: {first[key]['run']} and {row['run']} differ in "
                f"{'; '.join(changed[:6])}. Fix: rerun one of them with the other's settings, or "
                "keep grids of other settings in other folders (--out).")


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def task_columns(m: RunRecord) -> dict:
    """What a run says of its task: graded labels, the number of classes, and for a binary task
    the positive class, the val-chosen threshold and target, and the specificity reached on test."""
    point = m.test.get("operating_point") or {}
    classes = m.classes or []
    return {"ordinal": "qwk" in m.test, "n_classes": len(classes),
            "positive_index": (classes.index(point["positive_class"])
                               if point.get("positive_class") in classes else float("nan")),
            "threshold": _number(point.get("threshold")),
            "target_specificity": _number(point.get("target_specificity")),
            "test_spec_reached": _number(point.get("specificity"))}


def sd_includes(group: pd.DataFrame) -> str:
    """Which variance a model's sd over seeds contains: finetuning's always; pretraining's where
    each seed finetuned from its own pretraining (compare's default; --shared-ssl: one)."""
    if len(group) < 2:
        return "one seed: no sd"
    ssl_seeds = group["ssl_seed"].dropna()
    if ssl_seeds.empty:
        return "finetuning"
    if ssl_seeds.nunique() == len(group) > 1:
        return "finetuning + pretraining"
    return "finetuning (one pretraining)"


def summarise(runs: pd.DataFrame, task=None) -> pd.DataFrame:
    """Mean and sd over seeds per model and label fraction, plus the paired comparisons
    (report.comparisons), Holm-adjusted over the task's primary metric."""
    task = task or Task.of(runs)
    rows = []
    for (frac, model), group in runs.groupby(["label_fraction", "model"], sort=True):
        row = {"label_fraction": frac, "model": model, "seeds": len(group)}
        for col in [c for c, _, _ in COLUMNS] + list(EXTRA_COLUMNS) + ["test_spec_reached"]:
            row[f"{col}_mean"] = group[col].mean()
            row[f"{col}_sd"] = group[col].std(ddof=1) if len(group) > 1 else float("nan")
        row["target_specificity"] = group["target_specificity"].min()
        row["lr"] = " ".join(f"{v:g}" for v in sorted(group["lr"].dropna().unique()))
        row["lr_searched"] = bool(group["lr_searched"].all())
        row["lr_borrowed"] = bool(group["lr_borrowed"].all())
        row["sd_includes"] = sd_includes(group)
        if group["protocol"].iloc[0] != "finetune":  # no finetuning: the seed draws the rest
            row["sd_includes"] = row["sd_includes"].replace("finetuning", "the seed's draws")
            row["frozen_choice"] = " ".join(f"{v:g}" for v in
                                            sorted(group["frozen_choice"].dropna().unique()))
        results = comparisons(row, group, runs[runs["label_fraction"] == frac], task)
        store(row, results, task)
        rows.append(row)
    rows = adjust(rows, task.primary)
    frame = pd.DataFrame(rows)
    frame["primary_metric"] = task.primary
    # Full labels first, as in the study's tables; then the smaller fractions.
    return (frame.sort_values(["label_fraction", "model"], ascending=[False, True])
            .reset_index(drop=True))


def _pm(mean: float, sd: float, percent: bool) -> str:
    scale = 100 if percent else 1
    text = f"{mean * scale:.2f}" if percent else f"{mean:.3f}"
    if not np.isnan(sd):
        text += f" ± {sd * scale:.2f}" if percent else f" ± {sd:.3f}"
    return text


def _points(value: float) -> str:
    return f"{value * 100:+.2f}"


def _primary_cell(row: pd.Series, ref: str) -> str:
    """The primary metric's difference with its Holm-adjusted interval (as in the differences
    table, beside its adjusted p)."""
    key = f"test_{row['primary_metric']}_vs_{ref}"
    if np.isnan(row.get(f"{key}_diff", np.nan)):
        return "—"
    return (f"{_points(row[f'{key}_diff'])} [{_points(row[f'{key}_low_holm'])}, "
            f"{_points(row[f'{key}_high_holm'])}]")


def task_head(summary: pd.DataFrame) -> list[tuple[str, str, bool]]:
    """(header, column, percent) of the task's own columns: QWK for graded labels; for a binary
    task the sensitivity at the specificity target and the specificity reached on test."""
    out = []
    if summary["test_qwk_mean"].notna().any():
        out.append(("QWK", "test_qwk", False))
    if summary["test_sens_at_spec_mean"].notna().any():
        target = summary["target_specificity"].min()
        out.append((f"sensitivity % at {target * 100:.3g}% val specificity", "test_sens_at_spec",
                    True))
        out.append(("specificity % reached on test", "test_spec_reached", True))
    return out


def unlearned_note(unlearned: dict[str, list[str]]) -> str:
    """Said under the table for every model marked ‡ in it."""
    if not unlearned:
        return ""
    lines = [f"{model} ‡: its pretraining ended at or below a random init of the network on the "
             f"val read-outs (points over it, {'; '.join(gains)}), so this row reflects the "
             "pretraining recipe, not the method. Fix: more SSL epochs (`--ssl-epochs`) or "
             "the method's settings (docs/methods.md); `--ssl-min-gain` refuses such a "
             "pretraining." for model, gains in unlearned.items()]
    return "\n" + "\n".join(lines) + "\n"


def markdown_table(summary: pd.DataFrame, skipped_models: dict[str, str] | None = None,
                   unlearned: set[str] = frozenset()) -> str:
    """The table as Markdown: accuracies in %, losses as is, the primary metric's differences
    in points with their Holm-adjusted intervals; models whose pretraining did not learn ‡."""
    primary = summary["primary_metric"].iloc[0]
    extra = task_head(summary)
    head = ["label fraction", "model", "seeds", "train acc %", "train loss", "test acc %",
            "test loss", "balanced acc %", "macro-F1 %", "AUROC %", *(h for h, _, _ in extra),
            f"Δ {METRIC_TITLES[primary]} vs M1", f"Δ {METRIC_TITLES[primary]} vs M3"]
    with_base = "base" in summary and summary["base"].notna().any()
    if with_base:
        head.append(f"Δ {METRIC_TITLES[primary]} vs own base")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        model = r["model"] + (" ‡" if r["model"] in unlearned else "")
        cells = [f"{r['label_fraction']:g}", model, str(r["seeds"])]
        for col, _, metric in COLUMNS:
            cells.append(_pm(r[f"{col}_mean"], r[f"{col}_sd"], metric != "loss"))
        cells += [_pm(r[f"{col}_mean"], r[f"{col}_sd"], pct) for _, col, pct in extra]
        cells += [_primary_cell(r, "M1"), _primary_cell(r, "M3")]
        if with_base:
            own = isinstance(r["base"], str)
            cells.append(f"{_primary_cell(r, 'base')} vs {r['base']}" if own else "—")
        lines.append("| " + " | ".join(cells) + " |")
    by_reason: dict[str, list[str]] = {}
    for model, reason in (skipped_models or {}).items():
        by_reason.setdefault(reason, []).append(model)
    for reason, models in by_reason.items():
        lines.append(f"\n{' and '.join(models)} skipped: {reason}")
    lines.append(f"\nmean ± sd over seeds; Δ: {METRIC_TITLES[primary]} (the primary endpoint) "
                 "difference in points, averaged over seeds, with its interval adjusted by Holm "
                 "over the table's primary comparisons (the differences table below).")
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
            "images seen (pretrain / finetune)", "GPU-h", "parameters", "images/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        # A cohort's ensemble has no one selected epoch: its gap at the last only.
        selected = ("—" if np.isnan(r["acc_gap_selected_mean"])
                    else f"{r['acc_gap_selected_mean'] * 100:+.1f}")
        gaps = (f"{selected} / {r['acc_gap_last_mean'] * 100:+.1f}"
                if not np.isnan(r["acc_gap_last_mean"]) else "—")
        hours = [r["pretrain_gpu_hours_mean"], r["finetune_gpu_hours_mean"]]
        gpu = np.nansum(hours) if not np.isnan(hours).all() else np.nan
        frozen = r.get("protocol", "finetune") != "finetune"
        lines.append("| " + " | ".join([
            f"{r['label_fraction']:g}", r["model"],
            (f"{'k' if r['protocol'] == 'knn' else 'head lr'} {r['frozen_choice']} (chosen on "
             "val)") if frozen else
            r["lr"] + (" (chosen on val)" if r["lr_searched"] else
                       " (its base's, chosen on val)" if r["lr_borrowed"] else ""), r["sd_includes"],
            _pm(r["test_ece_mean"], r["test_ece_sd"], False),
            _pm(r["test_brier_mean"], r["test_brier_sd"], False),
            _pm(r["test_last_acc_mean"], r["test_last_acc_sd"], True), gaps,
            "—" if np.isnan(r["val_loss_rise_mean"]) else f"{r['val_loss_rise_mean']:.3f}",
            f"{_count(r['pretrain_images_seen_mean'])} / {_count(r['finetune_images_seen_mean'])}",
            "not measured (CPU)" if np.isnan(gpu) else f"{gpu:.2f}",
            "—" if np.isnan(r["parameters_mean"]) else f"{r['parameters_mean'] / 1e6:.1f} M",
            "—" if np.isnan(r["images_per_s_mean"]) else f"{r['images_per_s_mean']:.0f}"]) + " |")
    return ("\nRecipe, calibration, overfitting and compute (means over seeds). Acc gap: accuracy "
            "on a clean pass over labelled train images minus val accuracy, in points, at the "
            "selected and at the last epoch; val loss rise: last minus lowest val loss. The last "
            "epoch's test accuracy is shown, never used to select. Parameters: the network's; "
            "images/s: at the run's image size on its machine (finetuning: images trained per "
            "second of the run; a frozen protocol: images embedded per second).\n\n"
            + "\n".join(lines) + "\n")


def differences_table(summary: pd.DataFrame) -> str:
    """Every paired comparison: the primary metric with its Holm-adjusted interval and p, then
    the secondary metrics with unadjusted 95% intervals and p-values, said to be so."""
    primary = summary["primary_metric"].iloc[0]
    secondary = [m for m in METRIC_TITLES if m != primary and any(
        f"test_{m}_vs_{ref}_diff" in summary and summary[f"test_{m}_vs_{ref}_diff"].notna().any()
        for ref in (*REFERENCES, "base"))]
    head = (["label fraction", "model", "vs", f"Δ {METRIC_TITLES[primary]} (primary, adjusted)"]
            + [f"Δ {METRIC_TITLES[m]} (unadjusted)" for m in secondary])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        base = r["base"] if isinstance(r.get("base"), str) else None
        for ref in (*REFERENCES, "base"):
            if np.isnan(r.get(f"test_{primary}_vs_{ref}_diff", np.nan)) or (
                    ref == "base" and base in REFERENCES):
                continue  # a base of M1 or M3 is marked on that line, not repeated
            cells = [f"{r['label_fraction']:g}", r["model"],
                     f"{base} (own base)" if ref in ("base", base) else ref,
                     _with_p(r, f"test_{primary}_vs_{ref}", "_holm")]
            cells += [_with_p(r, f"test_{m}_vs_{ref}", "") for m in secondary]
            lines.append("| " + " | ".join(cells) + " |")
    if len(lines) == 2:
        return ""
    family = int(summary["primary_family"].iloc[0])
    one_seed = any((summary[c] < 2).any() for c in summary if c.startswith("vs_")
                   and c.endswith("_seeds"))
    return (f"\nPaired differences on the test split, in points: model minus reference, averaged "
            f"over the seeds both have. Primary endpoint, {METRIC_TITLES[primary]}: interval and "
            f"p adjusted by Holm over the table's {family} primary comparison(s); the interval "
            "excludes 0 exactly when the adjusted p is below 0.05. Secondary metrics: 95% "
            "intervals and p-values for each comparison alone, unadjusted: read them as "
            "description, not as findings. Intervals cover seeds and test images (resampled by "
            "patient, lesion or copy group; docs/statistics.md)."
            + (" ECE: lower is better." if "ece" in secondary else "")
            + (" Comparisons over one seed: the interval covers the test images only, as the "
               "seed-to-seed variance cannot be estimated; the answer claims nothing from them."
               if one_seed else "")
            + "\n\n" + "\n".join(lines) + "\n")


def _with_p(row: pd.Series, key: str, adjusted: str) -> str:
    if np.isnan(row.get(f"{key}_diff", np.nan)):
        return "—"
    p = row[f"{key}_p{adjusted}"]
    return (f"{_points(row[f'{key}_diff'])} [{_points(row[f'{key}_low{adjusted}'])}, "
            f"{_points(row[f'{key}_high{adjusted}'])}] p={p:.3g}")


def duplicates_line(runs: pd.DataFrame) -> str:
    """What the duplicate policy of the runs did, from their metadata; one policy per table."""
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


def judged_by(runs: pd.DataFrame, base: Path, analysis=None):
    """The Task to judge the runs by, the equivalence margin (a fraction), and how each came to
    be: declared before the runs (the grid's analysis.json), set now by a flag (said to be chosen
    after the runs where it differs from the declaration), or the default."""
    plan = declared_analysis(base)
    flag = analysis.primary_metric if analysis else None
    declared = plan.get("primary_metric") if plan else None
    task = Task.of(runs, flag or declared)
    declared_margin = (plan or {}).get("equivalence_margin", DEFAULT_MARGIN)
    margin_flag = analysis.equivalence_margin if analysis else None
    margin = (declared_margin if margin_flag is None else margin_flag) / 100
    if margin_flag is not None and margin_flag != declared_margin:
        margin_how = (f"chosen after the runs with --equivalence-margin: the grid declared "
                      f"±{declared_margin:g}" if plan else "set by --equivalence-margin")
    else:
        margin_how = "declared before the runs" if plan else "the default"
    default = default_primary(bool(runs["ordinal"].any()), int(runs["n_classes"].max()))
    if plan is None:
        how = "set by --primary-metric" if flag else "the task's default"
        how += "; this grid declared no plan before its runs"
    elif flag and flag != (declared or default):
        how = (f"chosen after the runs with --primary-metric: the grid declared "
               f"{METRIC_TITLES[declared or default]} before them")
    else:
        how = "declared before the runs" + ("" if declared else ", the task's default")
    return task, margin, how, margin_how


def recipe_notes(runs: pd.DataFrame, summary: pd.DataFrame) -> str:
    """How each model's learning rate and pretraining came to be, in words."""
    lines = []
    searched = summary[summary["lr_searched"]]
    if not searched.empty:
        grid = runs.loc[runs["lr_searched"], "lr_grid"].dropna().iloc[0]
        chosen = "; ".join(f"{r['model']} {r['lr']}" + ("" if r["label_fraction"] == 1 else
                                                         f" (fraction {r['label_fraction']:g})")
                           for _, r in searched.iterrows())
        lines.append(f"Learning rates chosen per model on the mean val selection value over "
                     f"all its seeds, from {grid} (never on test): {chosen}. The other rates' "
                     "runs are kept under lr-search/.")
    fixed = summary[~summary["lr_searched"] & ~summary["lr_borrowed"]]
    if not fixed.empty:
        lines.append(f"Learning rate not searched (one rate given) for "
                     f"{', '.join(sorted(set(fixed['model'])))}: "
                     f"{' '.join(sorted(set(fixed['lr'])))}. One rate can suit pretrained weights "
                     "and leave a random init undertrained (or the reverse).")
    kinds = summary.drop_duplicates("model").set_index("model")["sd_includes"]
    per_seed = [m for m, k in kinds.items() if k == "finetuning + pretraining"]
    shared = [m for m, k in kinds.items() if k == "finetuning (one pretraining)"]
    if per_seed:
        lines.append(f"{', '.join(per_seed)}: each seed finetuned from its own pretraining, so "
                     "their sd and intervals include the variance of pretraining.")
    if shared:
        lines.append(f"{', '.join(shared)}: one pretraining served every seed (--shared-ssl), so "
                     "their sd and intervals leave the variance of pretraining out.")
    return "\n".join(f"\n{line}" for line in lines) + ("\n" if lines else "")


def frozen_note(protocol: str, summary: pd.DataFrame) -> str:
    """How a frozen protocol chose, in words (training.frozen)."""
    from medssl.training.frozen import KNN_KS, LINEAR_LRS, LINEAR_STEPS  # lazy: torch

    chosen = "; ".join(f"{r['model']} {r['frozen_choice']}" + (
        "" if r["label_fraction"] == 1 else f" (fraction {r['label_fraction']:g})")
        for _, r in summary.iterrows())
    if protocol == "linear":
        how = (f"a linear head on the frozen features (standardised by the labelled train "
               f"images'), full-batch Adam for {LINEAR_STEPS} steps at each rate of "
               f"{' '.join(f'{v:g}' for v in LINEAR_LRS)}; the rate and step chosen per seed on "
               f"val, never on test. Rates chosen: {chosen}")
    else:
        how = (f"cosine kNN on the frozen features, votes weighted by exp(similarity / 0.1); k "
               f"chosen per seed on val among {' '.join(map(str, KNN_KS))} (those up to the "
               f"labelled train images), never on test. k chosen: {chosen}")
    return (f"\n{'Linear probe' if protocol == 'linear' else 'kNN'}: {how}. The backbone's weights are "
            "those of the prior, unchanged; features are computed once per prior and seed for "
            "both frozen protocols.\n")


PROTOCOL_TITLES = {"finetune": "finetuned", "linear": "linear probe on frozen features",
                   "knn": "kNN on frozen features"}


def by_protocol(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The runs of each protocol, finetuning first: priors are compared within a protocol."""
    return {p: runs[runs["protocol"] == p] for p in PROTOCOLS if (runs["protocol"] == p).any()}


def finished_after(run: Path, record: Path) -> bool:
    marker = run / MARKER
    return is_finished(run) and marker.stat().st_mtime_ns > record.stat().st_mtime_ns


def failed_note(base: Path) -> str:
    """The cells of the grid's last parallel call that failed (failed.json), with their logs:
    their rows are missing or partial, and the table says so."""
    path = base / FAILED
    failed = json.loads(path.read_text()) if path.is_file() else {}
    # A cell whose runs have all finished since (a later --cell job) is failed no more; one
    # whose runs finished before it failed (a pretraining refused by --ssl-min-gain) still is.
    failed = {name: why for name, why in failed.items()
              if not why.get("runs") or not all(finished_after(Path(r), path)
                                                for r in why["runs"])}
    if not failed:
        return ""
    listed = "".join(f"\n- `{name}`: {why['error']} (log: {why['log']})"
                     for name, why in failed.items())
    return (f"\n**{len(failed)} cell(s) failed** in the last run of this grid; the models they "
            "hold are missing above or have fewer seeds. Rerun the same compare with --resume "
            f"once the cause is fixed:{listed}\n")


def write_results(base: Path, skipped_models: dict[str, str] | None = None,
                  analysis=None) -> tuple[pd.DataFrame, str, list[str]]:
    """results.csv and results.md in `base`, from its finished runs; returns (summary, md,
    skipped). `analysis` (AnalysisOptions): a primary metric or margin set now, over the plan
    the grid declared. With several protocols, a table (and its Holm family) per protocol; the
    answer is the first protocol's (finetuning where it ran)."""
    runs, skipped = collect_runs(base)
    if runs.empty:
        return pd.DataFrame(), "", skipped
    task, margin, how, margin_how = judged_by(runs, base, analysis)
    groups = by_protocol(runs)
    summaries = []
    md = ""
    for i, (protocol, own) in enumerate(groups.items()):
        summary = summarise(own, task)
        summary.insert(0, "protocol", protocol)
        summary["duplicate_policy"] = runs["duplicate_policy"].iloc[0]
        summary["equivalence_margin"] = margin  # as a fraction, as the differences are
        summaries.append(summary)
        unlearned = unlearned_priors(own)
        if i == 0:
            md += answer(summary, own, margin, how, margin_how)
            if len(groups) > 1:  # which table the answer is about
                md += (f"This answer is about the {PROTOCOL_TITLES[protocol]} priors; the "
                       f"{' and '.join(PROTOCOL_TITLES[p] for p in list(groups)[1:])} ones have "
                       "their own tables, comparisons and Holm family below.\n")
        title = f": {PROTOCOL_TITLES[protocol]}" if len(groups) > 1 else ""
        md += (f"\n## Results{title}\n\n" + markdown_table(summary, skipped_models, set(unlearned))
               + "\n" + (duplicates_line(runs) + "\n" if i == 0 else "")
               + (recipe_notes(own, summary) if protocol == "finetune" else
                  frozen_note(protocol, summary)) + unlearned_note(unlearned))
    supervised = sorted(runs.loc[runs["supervised_prior"], "model"].unique())
    if supervised:  # not self-supervised: a fair reader must know which priors saw labels
        md += (f"\n{', '.join(supervised)}: a supervised prior (its pretraining learned from the "
               "labels of the labelled train images, no others), not a self-supervised one.\n")
    if skipped:  # said in the table itself, so that it never looks complete when it is not
        names = ", ".join(str(Path(r).relative_to(base)) for r in skipped)
        md += f"\nNot included, unfinished (`medssl report` says why): {names}\n"
    md += failed_note(Path(base))
    summary = pd.concat(summaries, ignore_index=True)
    atomic_write(Path(base) / "results.csv", lambda p: summary.to_csv(p, index=False))
    atomic_write(Path(base) / "results.md", lambda p: p.write_text(md))
    return summary, md, skipped
