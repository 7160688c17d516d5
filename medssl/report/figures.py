"""Which figures a comparison gets, under which names, each with its CSV (report.figure_io):

- `forest.png` (the answer: paired differences and their intervals) and, with two or more label
  fractions, `label_efficiency.png`;
- per label fraction (the largest unsuffixed, the others `_frac<f>`): `curves` (finetuned runs),
  `confusion`, `reliability` and, for a binary task, `roc` (ROC and precision-recall);
- `gradcam.png`: where each model looks, on the same test images;
- and every figure as an image in TensorBoard (`<grid>/tensorboard`), beside the runs' curves.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from medssl.report.confusion import confusion_figure, operating_figure, reliability_figure
from medssl.report.curves import curves_figure
from medssl.report.forest import forest_figure, label_efficiency_figure
from medssl.report.gradcam import gradcam_figure
from medssl.runs import TENSORBOARD

log = logging.getLogger("medssl")


def suffixed(name: str, frac: float, first: bool) -> str:
    return f"{name}.png" if first else f"{name}_frac{frac:g}.png"


def fraction_figures(base: Path, runs: pd.DataFrame, dataset: str) -> list[Path]:
    """The figures drawn once per label fraction; the training curves for finetuned runs only
    (a frozen protocol trains no network)."""
    written = []
    fractions = sorted(runs["label_fraction"].unique(), reverse=True)
    positive = runs["positive_index"].dropna()
    for i, frac in enumerate(fractions):
        subset = runs[runs["label_fraction"] == frac]
        at = f"label fraction {frac:g}"
        if (subset["protocol"] == "finetune").all():
            written.append(curves_figure(subset, base / suffixed("curves", frac, i == 0),
                                         f"{dataset}: training curves, {at}"))
        written.append(confusion_figure(
            subset, base / suffixed("confusion", frac, i == 0),
            f"{dataset}: test confusion, row-normalised, seeds pooled, {at}"))
        if runs["n_classes"].max() == 2 and len(positive):
            written.append(operating_figure(
                subset, base / suffixed("roc", frac, i == 0), int(positive.iloc[0]),
                f"{dataset}: test ROC and precision-recall, {at}"))
        written.append(reliability_figure(subset, base / suffixed("reliability", frac, i == 0),
                                          f"{dataset}: test reliability, {at}"))
    return written


# The figures a grid may have: those an earlier report drew and this one does not (a label
# fraction or a comparison gone) are removed with their CSVs, never left to look current.
FIGURE_STEMS = ("forest", "label_efficiency", "gradcam", "curves", "confusion", "roc",
                "reliability")


def write_figures(base: Path, runs: pd.DataFrame, summary: pd.DataFrame,
                  dataset: str) -> list[Path]:
    """Every figure of the runs the answer is about (`runs`: collect_runs' rows of one
    protocol, finetuning where it ran) and their table (`summary`: results.csv's rows of that
    protocol); returns the files written."""
    base = Path(base)
    answer = [forest_figure(summary, base / "forest.png",
                            f"{dataset}: paired differences on the primary endpoint"),
              label_efficiency_figure(summary, base / "label_efficiency.png",
                                      f"{dataset}: the primary endpoint against the labels")]
    written = [p for p in answer if p] + fraction_figures(base, runs, dataset)
    try:
        cams = gradcam_figure(runs, base / "gradcam.png")
    except Exception as exc:  # noqa: BLE001 -- the maps are one figure: the report goes on
        log.warning("gradcam.png not drawn (%s: %s); the other figures and report.html are",
                    type(exc).__name__, exc)
        cams = None
    written += [cams] if cams else []
    for stem in FIGURE_STEMS:
        for old in base.glob(f"{stem}*.png"):
            if old not in written and (old.stem == stem or old.stem.startswith(f"{stem}_frac")):
                old.unlink()
                old.with_suffix(".csv").unlink(missing_ok=True)
    log_to_tensorboard(base / TENSORBOARD, written)
    return written


def log_to_tensorboard(folder: Path, figures: list[Path]) -> None:
    """The figures as images of one TensorBoard run (`<grid>/tensorboard`), replacing those of
    an earlier report, so that `tensorboard --logdir GRID` shows them beside the runs."""
    import numpy as np
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    for old in folder.glob("events.out.tfevents.*"):  # a rebuilt report: its figures only
        old.unlink()
    with SummaryWriter(str(folder)) as writer:
        for path in figures:
            with Image.open(path) as img:
                writer.add_image(f"figures/{path.stem}", np.asarray(img.convert("RGB")), 0,
                                 dataformats="HWC")
