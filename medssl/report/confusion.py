"""Figures of the test predictions, each model's seeds pooled: a sheet of row-normalised
confusion matrices, ROC and precision-recall curves of a binary task with the operating point
chosen on val, and a reliability diagram per model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medssl.report.comparisons import test_predictions
from medssl.report.curves import colours
from medssl.report.figure_io import MAX_LINES, chunks, legend_outside, pyplot, save_figure
from medssl.training.metrics import operating_point


def pooled(runs: pd.DataFrame, model: str):
    """(labels, probs, per-seed predictions) of a model's test predictions, seeds pooled."""
    each = test_predictions(runs[runs["model"] == model])
    return (np.concatenate([p.labels for p in each.values()]),
            np.concatenate([p.probs for p in each.values()]), each)


def class_names(runs: pd.DataFrame) -> list[str]:
    first = pd.read_csv(Path(runs["run"].iloc[0]) / "test_predictions.csv", nrows=1)
    return [c[len("prob_"):] for c in first.filter(like="prob_").columns]


def confusion_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model, true and predicted class (the most probable, as accuracy counts it): the
    count over all seeds' test predictions and its share of the true class's row."""
    from sklearn.metrics import confusion_matrix

    classes = class_names(runs)
    rows = []
    for model in sorted(runs["model"].unique()):
        labels, probs, _ = pooled(runs, model)
        counts = confusion_matrix(labels, probs.argmax(1), labels=range(len(classes)))
        shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        for i, truth in enumerate(classes):
            for j, predicted in enumerate(classes):
                rows.append({"model": model, "true": truth, "predicted": predicted,
                             "count": int(counts[i, j]), "share": shares[i, j]})
    return pd.DataFrame(rows)


def confusion_figure(runs: pd.DataFrame, path: Path, title: str) -> Path:
    plt = pyplot()
    table = confusion_table(runs)
    classes = list(dict.fromkeys(table["true"]))
    models = list(dict.fromkeys(table["model"]))
    cols = min(4, len(models))
    rows = -(-len(models) // cols)
    side = 1.2 + 0.45 * len(classes)
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols + 0.8, side * rows + 0.6),
                             squeeze=False)
    for ax, model in zip(axes.flat, models):
        own = table[table["model"] == model]
        share = own["share"].to_numpy().reshape(len(classes), len(classes))
        count = own["count"].to_numpy().reshape(len(classes), len(classes))
        ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, f"{share[i, j] * 100:.0f}%\n{count[i, j]}", ha="center",
                        va="center", fontsize=7, color="white" if share[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set(title=model, xlabel="predicted", ylabel="true")
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, table)


def operating_table(runs: pd.DataFrame, positive: int) -> pd.DataFrame:
    """Per model the pooled ROC and precision-recall curves of the positive class, and each
    seed's operating point: its val-chosen threshold applied to its test predictions."""
    from sklearn.metrics import precision_recall_curve, precision_score, roc_curve

    rows = []
    for model in sorted(runs["model"].unique()):
        labels, probs, each = pooled(runs, model)
        truth, score = labels == positive, probs[:, positive]
        fpr, tpr, thr = roc_curve(truth, score)
        rows += [{"model": model, "curve": "roc", "x": a, "y": b, "threshold": t}
                 for a, b, t in zip(fpr, tpr, thr)]
        precision, recall, thr = precision_recall_curve(truth, score)
        rows += [{"model": model, "curve": "pr", "x": r, "y": p, "threshold": t}
                 for r, p, t in zip(recall, precision, [*thr, np.nan])]
        for seed, pred in each.items():
            if pred.threshold is None:
                continue  # an ensemble has no val-chosen threshold
            # The run's own rule (P(positive) >= threshold), as its metrics.json counted it.
            point = operating_point(torch.tensor(pred.probs), torch.tensor(pred.labels),
                                    positive, pred.threshold)
            tpr = np.nan if point["sensitivity"] is None else point["sensitivity"]
            fpr = np.nan if point["specificity"] is None else 1 - point["specificity"]
            precision = precision_score(pred.labels == positive,
                                        pred.probs[:, positive] >= pred.threshold,
                                        zero_division=0)
            rows += [{"model": model, "curve": "roc_operating_point", "x": fpr, "y": tpr,
                      "threshold": pred.threshold, "seed": seed},
                     {"model": model, "curve": "pr_operating_point", "x": tpr,
                      "y": precision, "threshold": pred.threshold, "seed": seed}]
    return pd.DataFrame(rows, columns=["model", "curve", "x", "y", "threshold", "seed"])


def operating_figure(runs: pd.DataFrame, path: Path, positive: int, title: str) -> Path:
    """ROC and PR panels (a row of both per group of at most 8 models), each seed's operating
    point marked on its model's curve."""
    plt = pyplot()
    table = operating_table(runs, positive)
    groups = chunks(sorted(table["model"].unique()), MAX_LINES)
    fig, axes = plt.subplots(len(groups), 2, figsize=(8.4, 3.9 * len(groups)), squeeze=False)
    colour, handles = colours(table["model"]), {}
    for row, models in zip(axes, groups):
        for ax, curve, labels in ((row[0], "roc", ("1 - specificity", "sensitivity")),
                                  (row[1], "pr", ("recall (sensitivity)", "precision"))):
            for model in models:
                own = table[(table["model"] == model) & (table["curve"] == curve)]
                point = table[(table["model"] == model)
                              & (table["curve"] == f"{curve}_operating_point")]
                # Drawn as sklearn's displays draw them: PR as steps, ROC through its vertices.
                style = "steps-post" if curve == "pr" else "default"
                (handles[model],) = ax.plot(own["x"], own["y"], color=colour[model],
                                            drawstyle=style)
                ax.scatter(point["x"], point["y"], color=colour[model], edgecolor="black",
                           marker="D", s=30, zorder=3)
            ax.set(xlabel=labels[0], ylabel=labels[1], xlim=(-0.02, 1.02), ylim=(-0.02, 1.02),
                   title="ROC" if curve == "roc" else "precision-recall")
            ax.grid(alpha=0.3)
    fig.suptitle(title)
    legend_outside(fig, list(handles.values()), list(handles),
                   title="seeds pooled;\n◆ each seed's operating\npoint (threshold chosen on val)")
    return save_figure(fig, path, table)


RELIABILITY_BINS = 15  # as the ECE in metrics.json


def reliability_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model and confidence bin (15 of equal width): images, and the accuracy among them."""
    edges = np.linspace(0, 1, RELIABILITY_BINS + 1)
    rows = []
    for model in sorted(runs["model"].unique()):
        labels, probs, _ = pooled(runs, model)
        confidence, right = probs.max(1), probs.argmax(1) == labels
        which = np.clip(np.digitize(confidence, edges[1:-1]), 0, RELIABILITY_BINS - 1)
        count = np.bincount(which, minlength=RELIABILITY_BINS)
        acc = np.bincount(which, weights=right, minlength=RELIABILITY_BINS) / np.maximum(count, 1)
        rows += [{"model": model, "bin_low": edges[b], "bin_high": edges[b + 1],
                  "images": int(count[b]), "accuracy": acc[b] if count[b] else np.nan}
                 for b in range(RELIABILITY_BINS)]
    return pd.DataFrame(rows)


def reliability_figure(runs: pd.DataFrame, path: Path, title: str) -> Path:
    """Per model, test accuracy against confidence (the seeds' test predictions pooled); the
    diagonal is perfect calibration, each bar names its image count."""
    plt = pyplot()
    table = reliability_table(runs)
    models = list(dict.fromkeys(table["model"]))
    cols = min(4, len(models))
    rows = -(-len(models) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    colour = colours(models)
    for ax, model in zip(axes.flat, models):
        own = table[(table["model"] == model) & (table["images"] > 0)]
        ax.bar(own["bin_low"], own["accuracy"], width=1 / RELIABILITY_BINS, align="edge",
               color=colour[model], edgecolor="black", linewidth=0.4)
        for x, n in zip(own["bin_low"], own["images"]):  # how many images each bar rests on
            ax.text(x + 0.5 / RELIABILITY_BINS, 0.02, str(n), ha="center", fontsize=5, rotation=90)
        ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1), title=model, xlabel="confidence", ylabel="accuracy")
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, table)
