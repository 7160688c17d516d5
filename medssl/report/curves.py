"""Training curves like the study's, made readable: per split (train, the clean pass over
labelled train images, val) and metric (accuracy, loss) a panel, one line per model with its mean
over seeds and a band of one sd, each seed's selected epoch marked on its model's curve, at most
eight models in a panel (more go to more rows) and the legend outside the panels."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medssl.report.figure_io import MAX_LINES, chunks, legend_outside, pyplot, save_figure
from medssl.training.run_logs import epoch_curves

COLOURS = {"M1": "tab:grey", "M2": "tab:blue", "M3": "tab:orange", "M4": "tab:green"}
# Every other model (M2-byol, KD(M3→M1), DML(M3+M4)/M3, ...) a colour the study's four do not use.
OTHER_COLOURS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan",
                 "black", "gold", "navy", "teal")
SPLITS = {"train": "train (augmented)", "train_eval": "train (clean pass)", "val": "val"}
METRICS = {"acc": "accuracy", "loss": "loss"}


def colours(models) -> dict[str, str]:
    """A colour per model: the study's four fixed, the others in sorted order."""
    others = sorted(m for m in set(models) if m not in COLOURS)
    return {**{m: c for m, c in COLOURS.items()},
            **{m: OTHER_COLOURS[i % len(OTHER_COLOURS)] for i, m in enumerate(others)}}


def curve_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model, split, metric and epoch (1-based): the mean and sd over seeds, the seeds
    counted, and how many seeds selected that epoch: the numbers the figure plots."""
    rows = []
    for model, group in runs.groupby("model", sort=True):
        each = [epoch_curves(Path(r)) for r in group["run"]]
        stacked = pd.concat(each)
        mean, sd = stacked.groupby(level=0).mean(), stacked.groupby(level=0).std(ddof=1)
        seeds = stacked.groupby(level=0).count()
        selected = pd.to_numeric(group["selected_epoch"], errors="coerce").dropna().astype(int)
        for column in mean:
            split, metric = column.split("/")
            for epoch in mean.index:
                rows.append({"model": model, "split": split, "metric": metric,
                             "epoch": int(epoch) + 1, "mean": mean.at[epoch, column],
                             "sd": sd.at[epoch, column], "seeds": int(seeds.at[epoch, column]),
                             # the index is Lightning's 0-based epoch; metrics.json's
                             # selected epoch counts from 1
                             "selected_by": int((selected == epoch + 1).sum())})
    return pd.DataFrame(rows, columns=["model", "split", "metric", "epoch", "mean", "sd",
                                       "seeds", "selected_by"])


def curves_figure(runs: pd.DataFrame, path: Path, title: str) -> Path:
    """`path` and its CSV (curve_table): rows of panels per group of at most 8 models."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    table = curve_table(runs)
    splits = [s for s in SPLITS if (table["split"] == s).any()]
    groups = chunks(sorted(table["model"].unique()), MAX_LINES)
    fig, axes = plt.subplots(2 * len(groups), max(1, len(splits)), squeeze=False,
                             figsize=(3.6 * max(1, len(splits)), 2.8 * 2 * len(groups)))
    colour = colours(table["model"])
    handles = {}
    for g, models in enumerate(groups):
        for r, metric in enumerate(METRICS):
            for c, split in enumerate(splits):
                ax = axes[2 * g + r, c]
                for model in models:
                    line = draw_curve(ax, table, model, split, metric, colour[model])
                    if line is not None:
                        handles[model] = line
                ax.set(title=f"{SPLITS[split]} {METRICS[metric]}", xlabel="epoch",
                       ylabel=METRICS[metric])
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
                ax.grid(alpha=0.3)
    fig.suptitle(title)
    legend_outside(fig, list(handles.values()), list(handles),
                   title="mean ± sd over seeds;\n● each seed's selected epoch")
    return save_figure(fig, path, table)


def draw_curve(ax, table: pd.DataFrame, model: str, split: str, metric: str, colour: str):
    """One model's mean line, its sd band and its selected epochs; the line (None: no data)."""
    rows = table[(table["model"] == model) & (table["split"] == split)
                 & (table["metric"] == metric)].dropna(subset=["mean"])
    if rows.empty:
        return None
    (line,) = ax.plot(rows["epoch"], rows["mean"], "-", color=colour, linewidth=1.4)
    band = rows.dropna(subset=["sd"])
    ax.fill_between(band["epoch"], band["mean"] - band["sd"], band["mean"] + band["sd"],
                    color=colour, alpha=0.18, linewidth=0)
    chosen = rows[rows["selected_by"] > 0]
    ax.scatter(chosen["epoch"], chosen["mean"], s=18 + 10 * chosen["selected_by"], color=colour,
               edgecolor="black", linewidth=0.5, zorder=3)
    return line
