"""The answer as pictures, drawn from the results table (results.csv) alone:

- `forest.png`: each prior's paired difference from the reference (M1; M3 and a model's own
  base, as in the table, in panels of their own) on the primary endpoint, with the very interval the table prints (Holm-adjusted), one row
  per prior and label fraction, ordered by estimate, a zero line and the equivalence margin as a
  band;
- `label_efficiency.png`: the primary metric against the label fraction (log axis), one line per
  prior with a band of one sd over seeds: does a prior help more when labels are few?
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medssl.report.comparisons import METRIC_TITLES, REFERENCES
from medssl.report.curves import colours
from medssl.report.figure_io import MAX_LINES, chunks, legend_outside, pyplot, save_figure

FOREST_COLUMNS = ["reference", "against", "label_fraction", "model", "seeds", "diff", "low_holm",
                  "high_holm", "p_holm", "equivalence_margin"]
PANELS = (*REFERENCES, "base")  # M1, M3, then each model's own base (KD, DML, F-x+method)


def forest_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per compared prior, label fraction and reference, in drawing order: the primary
    endpoint's difference and Holm-adjusted interval, exactly results.csv's values (fractions
    of 1: 0.05 is drawn as +5 points). `reference` names results.csv's columns (M1, M3, base);
    `against` what the model was compared with (a base: its model trained alone, or the
    ensemble of a cohort's members trained alone). `seeds`: the seeds the pair shares."""
    primary = summary["primary_metric"].iloc[0]
    rows = []
    for ref in PANELS:
        key = f"test_{primary}_vs_{ref}"
        if f"{key}_diff" not in summary:
            continue
        shown = summary.dropna(subset=[f"{key}_diff"])
        if ref == "base":  # a base of M1 or M3 is that panel's comparison, drawn there
            shown = shown[~shown["base"].isin(REFERENCES)]
        for _, r in shown.iterrows():
            rows.append({"reference": ref, "against": r["base"] if ref == "base" else ref,
                         "label_fraction": r["label_fraction"], "model": r["model"],
                         "seeds": r.get(f"vs_{ref}_seeds", r["seeds"]),
                         "diff": r[f"{key}_diff"], "low_holm": r[f"{key}_low_holm"],
                         "high_holm": r[f"{key}_high_holm"], "p_holm": r[f"{key}_p_holm"],
                         "equivalence_margin": r.get("equivalence_margin", np.nan)})
    table = pd.DataFrame(rows, columns=FOREST_COLUMNS)
    order = {ref: i for i, ref in enumerate(PANELS)}
    # Full labels first (as the table), and within a fraction the largest gain on top.
    return (table.assign(panel=table["reference"].map(order))
            .sort_values(["panel", "label_fraction", "diff"], ascending=[True, False, False])
            .drop(columns="panel").reset_index(drop=True))


def points(value: float) -> str:
    return f"{value * 100:+.1f}"


def forest_figure(summary: pd.DataFrame, path: Path, title: str) -> Path | None:
    """`path` and its CSV (forest_table); None where nothing was compared."""
    table = forest_table(summary)
    if table.empty:
        return None
    plt = pyplot()
    primary = METRIC_TITLES[summary["primary_metric"].iloc[0]]
    refs = list(dict.fromkeys(table["reference"]))
    height = 1.4 + 0.38 * table.groupby("reference").size().max()
    fig, axes = plt.subplots(1, len(refs), figsize=(6.4 * len(refs), height), squeeze=False)
    for ax, ref in zip(axes[0], refs):
        draw_forest(ax, table[table["reference"] == ref].reset_index(drop=True), ref, primary)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, table)


def draw_forest(ax, rows: pd.DataFrame, ref: str, primary: str) -> None:
    """One reference's panel: rows top to bottom, a filled marker where the interval excludes
    0, the numbers on the right."""
    from matplotlib.ticker import FuncFormatter

    y = np.arange(len(rows))[::-1]
    margin = rows["equivalence_margin"].dropna()
    if len(margin):
        ax.axvspan(-margin.iloc[0], margin.iloc[0], color="tab:green", alpha=0.12, linewidth=0)
    ax.axvline(0, color="black", linewidth=0.8)
    excludes = (rows["low_holm"] > 0) | (rows["high_holm"] < 0)
    ax.errorbar(rows["diff"], y, xerr=[rows["diff"] - rows["low_holm"],
                                       rows["high_holm"] - rows["diff"]],
                fmt="none", ecolor="black", elinewidth=1.2, capsize=3)
    ax.scatter(rows["diff"], y, s=36, zorder=3, edgecolor="black",
               color=["black" if e else "white" for e in excludes])
    own = "" if ref in REFERENCES else " vs {}"
    ax.set_yticks(y, [f"{m}{own.format(a)}, {f * 100:g}% labels" for m, a, f in
                      zip(rows["model"], rows["against"], rows["label_fraction"])])
    for yi, (_, r) in zip(y, rows.iterrows()):  # the interval in numbers, as the table has it
        span = (f"[{points(r['low_holm'])}, {points(r['high_holm'])}]"
                if np.isfinite([r["low_holm"], r["high_holm"]]).all() else "(no interval)")
        ax.annotate(f"{points(r['diff'])} {span}", (1.02, yi),
                    xycoords=("axes fraction", "data"), va="center", fontsize=8)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v * 100:+g}"))
    ax.set_ylim(-0.7, len(rows) - 0.3)
    other = ref if ref in REFERENCES else "its own base"
    ax.set_xlabel(f"Δ {primary} vs {other}, points (Holm-adjusted interval)")
    band = (f"; shaded: ±{margin.iloc[0] * 100:g} points, the equivalence margin"
            if len(margin) else "")
    ax.set_title(f"vs {other}: ● interval excludes 0, ○ does not{band}", fontsize=9)
    ax.grid(axis="x", alpha=0.3)


EFFICIENCY_COLUMNS = ["model", "label_fraction", "mean", "sd", "seeds"]


def efficiency_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The primary metric's mean and sd over seeds per prior and label fraction."""
    primary = summary["primary_metric"].iloc[0]
    table = summary[["model", "label_fraction", f"test_{primary}_mean", f"test_{primary}_sd",
                     "seeds"]]
    table.columns = EFFICIENCY_COLUMNS
    return table.sort_values(["model", "label_fraction"]).reset_index(drop=True)


def label_efficiency_figure(summary: pd.DataFrame, path: Path, title: str) -> Path | None:
    """`path` and its CSV; None with fewer than two label fractions."""
    if summary["label_fraction"].nunique() < 2:
        return None
    plt = pyplot()
    table = efficiency_table(summary)
    primary = METRIC_TITLES[summary["primary_metric"].iloc[0]]
    groups = chunks(sorted(table["model"].unique()), MAX_LINES)
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 3.8), squeeze=False)
    colour, handles = colours(table["model"]), {}
    for ax, models in zip(axes[0], groups):
        for model in models:
            rows = table[table["model"] == model]
            (handles[model],) = ax.plot(rows["label_fraction"], rows["mean"], "o-",
                                        color=colour[model])
            band = rows.dropna(subset=["sd"])
            ax.fill_between(band["label_fraction"], band["mean"] - band["sd"],
                            band["mean"] + band["sd"], color=colour[model], alpha=0.18,
                            linewidth=0)
        ax.set_xscale("log")
        fractions = sorted(table["label_fraction"].unique())
        ax.set_xticks(fractions, [f"{f * 100:g}%" for f in fractions])
        ax.minorticks_off()  # the log axis' own labels (6×10⁻¹) between the fractions
        ax.set(xlabel="labelled train images (fraction, log scale)", ylabel=f"test {primary}")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    legend_outside(fig, list(handles.values()), list(handles), title="mean ± sd over seeds")
    return save_figure(fig, path, table)
