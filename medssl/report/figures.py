"""Curve figures like the study's: train, train_eval (the clean pass over labelled train
images) and val accuracy and loss per epoch, the models overlaid (mean over seeds), one figure per
label fraction, read from each run's `logs/metrics.csv`; and a reliability diagram per model from
its test predictions."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medssl.atomic import atomic_write
from medssl.report.comparisons import test_predictions
from medssl.training.run_logs import epoch_curves

COLOURS = {"M1": "tab:grey", "M2": "tab:blue", "M3": "tab:orange", "M4": "tab:green"}
# Every other model (M2-byol, KD(M3→M1), DML(M3+M4)/M3, ...) a colour the study's four do not use.
OTHER_COLOURS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan",
                 "black", "gold", "navy", "teal")


def colours(models) -> dict[str, str]:
    """A colour per model: the study's four fixed, the others in sorted order."""
    others = sorted(m for m in set(models) if m not in COLOURS)
    return {**{m: c for m, c in COLOURS.items()},
            **{m: OTHER_COLOURS[i % len(OTHER_COLOURS)] for i, m in enumerate(others)}}


def curves_figure(runs: pd.DataFrame, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colour = colours(runs["model"])
    for model, group in runs.groupby("model", sort=True):
        mean = pd.concat([epoch_curves(Path(r)) for r in group["run"]]).groupby(level=0).mean()
        epochs = mean.index + 1
        for ax, metric in zip(axes, ("acc", "loss")):
            for split, style in (("train", "--"), ("train_eval", ":"), ("val", "-")):
                if f"{split}/{metric}" in mean:
                    ax.plot(epochs, mean[f"{split}/{metric}"], style, color=colour[model],
                            label=f"{model} {split}")
    for ax, metric in zip(axes, ("accuracy", "loss")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    # The format named, since the temporary file's name does not end in it.
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format=path.suffix[1:]))
    plt.close(fig)
    return path


RELIABILITY_BINS = 15  # as the ECE in metrics.json


def reliability_figure(runs: pd.DataFrame, path: Path, title: str) -> Path:
    """Per model, test accuracy against confidence in 15 equal-width bins (the seeds' test
    predictions pooled); the diagonal is perfect calibration, each bar names its image count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = sorted(runs["model"].unique())
    cols = min(4, len(models))
    rows = -(-len(models) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    edges = np.linspace(0, 1, RELIABILITY_BINS + 1)
    colour = colours(models)
    for ax, model in zip(axes.flat, models):
        confidence, right = [], []
        for pred in test_predictions(runs[runs["model"] == model]).values():
            confidence.append(pred.probs.max(1))
            right.append(pred.probs.argmax(1) == pred.labels)
        confidence, right = np.concatenate(confidence), np.concatenate(right)
        which = np.clip(np.digitize(confidence, edges[1:-1]), 0, RELIABILITY_BINS - 1)
        count = np.bincount(which, minlength=RELIABILITY_BINS)
        acc = np.bincount(which, weights=right, minlength=RELIABILITY_BINS) / np.maximum(count, 1)
        filled = count > 0
        ax.bar(edges[:-1][filled], acc[filled], width=1 / RELIABILITY_BINS, align="edge",
               color=colour[model], edgecolor="black", linewidth=0.4)
        for x, n in zip(edges[:-1][filled], count[filled]):  # how many images each bar rests on
            ax.text(x + 0.5 / RELIABILITY_BINS, 0.02, str(n), ha="center", fontsize=5, rotation=90)
        ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1), title=model, xlabel="confidence", ylabel="accuracy")
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format=path.suffix[1:]))
    plt.close(fig)
    return path


def write_figures(base: Path, runs: pd.DataFrame, dataset: str) -> list[Path]:
    """`curves.png` for label fraction 1 (or the largest), `curves_frac<f>.png` for the others;
    `reliability.png` (and `reliability_frac<f>.png`) likewise."""
    written = []
    fractions = sorted(runs["label_fraction"].unique(), reverse=True)
    for i, frac in enumerate(fractions):
        name = "curves.png" if i == 0 else f"curves_frac{frac:g}.png"
        subset = runs[runs["label_fraction"] == frac]
        title = f"{dataset}: train (dashed) and val (solid), mean of seeds, label fraction {frac:g}"
        written.append(curves_figure(subset, Path(base) / name, title))
        name = "reliability.png" if i == 0 else f"reliability_frac{frac:g}.png"
        written.append(reliability_figure(
            subset, Path(base) / name, f"{dataset}: test reliability, label fraction {frac:g}"))
    return written
