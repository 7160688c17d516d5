"""Curve figures like the study's: train and val accuracy and loss per epoch, M1-M4 overlaid
(mean over seeds), one figure per label fraction. Read from each run's `logs/metrics.csv`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medssl.atomic import atomic_write

COLOURS = {"M1": "tab:grey", "M2": "tab:blue", "M3": "tab:orange", "M4": "tab:green"}


def epoch_curves(run: Path) -> pd.DataFrame:
    """One row per epoch with train/val acc and loss, from Lightning's CSVLogger file."""
    raw = pd.read_csv(Path(run) / "logs" / "metrics.csv")
    cols = [c for c in ("train/acc", "train/loss", "val/acc", "val/loss") if c in raw]
    return raw.dropna(subset=["epoch"]).groupby("epoch")[cols].first().dropna(how="all")


def curves_figure(runs: pd.DataFrame, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for model, group in runs.groupby("model", sort=True):
        mean = pd.concat([epoch_curves(Path(r)) for r in group["run"]]).groupby(level=0).mean()
        epochs = mean.index + 1
        for ax, metric in zip(axes, ("acc", "loss")):
            for split, style in (("train", "--"), ("val", "-")):
                if f"{split}/{metric}" in mean:
                    ax.plot(epochs, mean[f"{split}/{metric}"], style, color=COLOURS.get(model),
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


def write_figures(base: Path, runs: pd.DataFrame, dataset: str) -> list[Path]:
    """`curves.png` for label fraction 1 (or the largest), `curves_frac<f>.png` for the others."""
    written = []
    fractions = sorted(runs["label_fraction"].unique(), reverse=True)
    for i, frac in enumerate(fractions):
        name = "curves.png" if i == 0 else f"curves_frac{frac:g}.png"
        subset = runs[runs["label_fraction"] == frac]
        title = f"{dataset}: train (dashed) and val (solid), mean of seeds, label fraction {frac:g}"
        written.append(curves_figure(subset, Path(base) / name, title))
    return written
