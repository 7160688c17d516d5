"""Paired differences between two models with a two-level bootstrap, and Holm's correction.

A model's test score varies with its seed (finetuning, and pretraining under --ssl-per-seed) and
with the sample of test images. Each bootstrap resample therefore first draws the seeds, with
replacement, then for each drawn seed a resample of the test images; both models get the very
same draws (seed k of one model is paired with seed k of the other), and the difference of their
mean scores is recorded. Scores are computed from per-image weights (how often the resample drew
each image), so one matrix product scores all resamples at once instead of a Python loop.
"""

from __future__ import annotations

import numpy as np

METRICS = ("acc", "balanced_acc", "macro_f1", "auroc")
RESAMPLES = 2000
CHUNK = 250  # resamples scored at a time: bounded memory on a 2000-image test set


def weighted_scores(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> dict:
    """Each metric for each row of `weights` (resamples x images): image i counted weights[r, i]
    times. Balanced accuracy and AUROC average over the classes present in the resample, macro-F1
    over those present or predicted, as `training.metrics.classification_metrics` does."""
    n_classes = probs.shape[1]
    onehot = np.eye(n_classes)[labels]  # images x classes
    pred = probs.argmax(1)
    right = (pred == labels).astype(float)
    total = weights.sum(1)
    support = weights @ onehot  # resamples x classes
    hits = weights @ (onehot * right[:, None])
    predicted = weights @ np.eye(n_classes)[pred]
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, hits / support, np.nan)
        f1 = np.where(support + predicted > 0, 2 * hits / (support + predicted), np.nan)
    auroc = np.stack([_weighted_auroc(probs[:, k], labels == k, weights)
                      for k in range(n_classes)], axis=1)
    return {"acc": (weights @ right) / total, "balanced_acc": np.nanmean(recall, axis=1),
            "macro_f1": np.nanmean(f1, axis=1), "auroc": _nanmean_rows(auroc)}


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    counts = (~np.isnan(values)).sum(1)
    return np.where(counts > 0, np.nansum(values, 1) / np.maximum(counts, 1), np.nan)


def _weighted_auroc(score: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One-vs-rest AUROC per resample: the weighted Mann-Whitney statistic, ties counted half.
    NaN where the resample holds no positive or no negative image."""
    order = np.argsort(score, kind="stable")
    sorted_score = score[order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])  # tie groups
    w = weights[:, order]
    pos = np.add.reduceat(w * positive[order], starts, axis=1)
    neg = np.add.reduceat(w * ~positive[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives scored strictly lower
    pairs = pos.sum(1) * neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, (pos * (below + 0.5 * neg)).sum(1) / pairs, np.nan)


def paired_difference(labels: np.ndarray, probs_a: list[np.ndarray], probs_b: list[np.ndarray],
                      resamples: int = RESAMPLES, seed: int = 0) -> dict[str, dict]:
    """Model A minus model B on one test set, for each metric: the difference of their means over
    the paired seeds (`probs_a[k]` and `probs_b[k]` are seed k's test probabilities), a 95%
    percentile interval and a two-sided p-value from the two-level bootstrap."""
    n_seeds, n_images = len(probs_a), len(labels)
    ones = np.ones((1, n_images))
    point = {m: np.mean([weighted_scores(labels, a, ones)[m] - weighted_scores(labels, b, ones)[m]
                         for a, b in zip(probs_a, probs_b)]) for m in METRICS}
    rng = np.random.default_rng(seed)
    drawn = {m: [] for m in METRICS}
    for start in range(0, resamples, CHUNK):
        size = min(CHUNK, resamples - start)
        seeds = rng.integers(0, n_seeds, (size, n_seeds))  # level 1: which seeds
        diffs = {m: np.zeros(size) for m in METRICS}
        for slot in range(n_seeds):
            # level 2: which test images, a fresh draw for every drawn seed
            weights = rng.multinomial(n_images, np.full(n_images, 1 / n_images), size)
            for k in range(n_seeds):
                rows = seeds[:, slot] == k
                if rows.any():
                    a = weighted_scores(labels, probs_a[k], weights[rows])
                    b = weighted_scores(labels, probs_b[k], weights[rows])
                    for m in METRICS:
                        diffs[m][rows] += (a[m] - b[m]) / n_seeds
        for m in METRICS:
            drawn[m].append(diffs[m])
    out = {}
    for m in METRICS:
        d = np.concatenate(drawn[m])
        d = d[~np.isnan(d)]
        if not len(d) or np.isnan(point[m]):
            out[m] = {"diff": float(point[m]), "low": np.nan, "high": np.nan, "p": np.nan}
            continue
        low, high = np.percentile(d, [2.5, 97.5])
        # Under "no difference" the bootstrap distribution, shifted to centre on 0, would reach
        # the observed difference this often (either side).
        p = (1 + np.sum(np.abs(d - point[m]) >= abs(point[m]))) / (len(d) + 1)
        out[m] = {"diff": float(point[m]), "low": float(low), "high": float(high), "p": float(p)}
    out["seeds"] = n_seeds
    return out


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment (scipy has Benjamini-Hochberg, not Holm): the k-th smallest of
    m p-values is multiplied by m - k + 1, then made monotone. NaN stays NaN and is not counted."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted
