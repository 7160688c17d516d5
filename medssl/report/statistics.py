"""Paired differences between two models for a crossed design of seeds and test groups, and
Holm's correction.

Design. Every seed of every model is scored on the same test images, so seeds and images are
*crossed* factors, not nested ones, and the images come in groups (a patient's or a lesion's
images, copies of one picture), not one by one. The difference between two models (the mean over
paired seeds of A minus B on the whole test set) varies for two reasons, estimated apart:
- the test sample: a bootstrap in which each replicate draws ONE resample of the test groups,
  with replacement, shared by every seed and both models (an image weighs as often as its group
  was drawn); the variance of the replicates' mean difference is the image part;
- the seeds: the spread over seeds of each seed's difference on the whole test set, divided by the
  number of seeds, is the seed part.
The interval is the difference ± t x sqrt(image part + seed part), with Satterthwaite's degrees of
freedom (the seed part has seeds - 1 of them, the image part plenty), so that three seeds get
the wide t(2) quantile when their spread dominates, and a large test set the normal one when the
images do. p-values come from the same t, so an interval at level 1 - a excludes 0 exactly when
p < a, at any level (how an adjusted p gets the interval that agrees with it:
report.comparisons).

Why not a bootstrap of the seeds too. Drawing a fresh image sample per seed (the nested design
this replaced) divides the image variance by the number of seeds: five copies of one seed
narrowed the interval to 0.45x and a null simulation rejected 16% of the time. Resampling the
seeds as well as the groups (the "pigeonhole" bootstrap) fixes the copies, but with 3 seeds it
draws from only 10 seed configurations and underestimates their variance: it still rejected
10-18% of null studies where seeds vary more than images, against 3-7% for this design
(`bench/coverage.py`, docs/statistics.md). Scores are computed from per-image weights, so one
matrix product scores all replicates at once.
"""

from __future__ import annotations

import warnings

import numpy as np

# The metrics every table pairs; `qwk` (graded labels), `sens_at_spec` (binary tasks, at each
# run's threshold chosen on val) and `ece` join where the task has them (names.task_metrics).
METRICS = ("acc", "balanced_acc", "macro_f1", "auroc")
RESAMPLES = 2000  # group resamples: the image part's variance to within about 3%
CHUNK = 250  # replicates scored at a time: bounded memory on a 2000-image test set
ECE_BINS = 15  # as training.metrics (torchmetrics' l1 calibration error)


def weighted_scores(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray,
                    metrics=METRICS, threshold: float | None = None,
                    positive: int | None = None) -> dict:
    """Each metric for each row of `weights` (replicates x images): image i counted weights[r, i]
    times. Balanced accuracy and AUROC average over the classes present in the replicate,
    macro-F1 over those present or predicted, as `training.metrics.classification_metrics` does.
    `sens_at_spec` needs the run's val-chosen `threshold` on P(`positive`)."""
    n_classes = probs.shape[1]
    onehot = np.eye(n_classes)[labels]  # images x classes
    pred = probs.argmax(1)
    right = (pred == labels).astype(float)
    total = weights.sum(1)
    out = {"acc": (weights @ right) / total}
    if {"balanced_acc", "macro_f1"} & set(metrics):
        support = weights @ onehot  # replicates x classes
        hits = weights @ (onehot * right[:, None])
        predicted = weights @ np.eye(n_classes)[pred]
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(support > 0, hits / support, np.nan)
            f1 = np.where(support + predicted > 0, 2 * hits / (support + predicted), np.nan)
        out["balanced_acc"], out["macro_f1"] = _nanmean_rows(recall), _nanmean_rows(f1)
    if "auroc" in metrics:
        auroc = np.stack([_weighted_auroc(probs[:, k], labels == k, weights)
                          for k in range(n_classes)], axis=1)
        out["auroc"] = _nanmean_rows(auroc)
    if "qwk" in metrics:
        out["qwk"] = _weighted_qwk(labels, pred, n_classes, weights)
    if "ece" in metrics:
        out["ece"] = _weighted_ece(probs, right, weights)
    if "sens_at_spec" in metrics:
        pos = labels == positive
        with np.errstate(invalid="ignore", divide="ignore"):
            out["sens_at_spec"] = (np.full(len(weights), np.nan) if threshold is None else
                                   (weights @ (pos & (probs[:, positive] >= threshold)))
                                   / (weights @ pos))
    return {m: out[m] for m in metrics}


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    counts = (~np.isnan(values)).sum(1)
    return np.where(counts > 0, np.nansum(values, 1) / np.maximum(counts, 1), np.nan)


def _weighted_auroc(score: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One-vs-rest AUROC per replicate: the weighted Mann-Whitney statistic, ties counted half.
    NaN where the replicate holds no positive or no negative image."""
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


def _weighted_qwk(labels: np.ndarray, pred: np.ndarray, n: int, weights: np.ndarray) -> np.ndarray:
    """Quadratic weighted Cohen's kappa per replicate (sklearn's and torchmetrics' formula, with
    image weights): 1 - sum(W * observed) / sum(W * expected), W_ij = (i - j)^2."""
    cell = labels * n + pred  # which confusion-matrix cell each image falls in
    observed = (weights @ np.eye(n * n)[cell]).reshape(-1, n, n)
    total = observed.sum((1, 2))[:, None, None]
    expected = observed.sum(2)[:, :, None] * observed.sum(1)[:, None, :] / total
    w = (np.arange(n)[:, None] - np.arange(n)[None, :]) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1 - (w * observed).sum((1, 2)) / (w * expected).sum((1, 2))


def _weighted_ece(probs: np.ndarray, right: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Expected calibration error per replicate: 15 equal-width confidence bins (right-closed,
    as torchmetrics), sum over bins of |sum of (correct - confidence)| over all weight."""
    confidence = probs.max(1)
    bins = np.clip(np.ceil(confidence * ECE_BINS).astype(int) - 1, 0, ECE_BINS - 1)
    gaps = np.eye(ECE_BINS)[bins] * (right - confidence)[:, None]  # images x bins
    return np.abs(weights @ gaps).sum(1) / weights.sum(1)


def group_weights(groups: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """`size` resamples of the test groups, with replacement, as per-image weights: an image
    counts as often as its group was drawn (a group of copies or of one patient's images stays
    together)."""
    _, index = np.unique(groups, return_inverse=True)
    n_groups = index.max() + 1
    counts = rng.multinomial(n_groups, np.full(n_groups, 1 / n_groups), size)
    return counts[:, index].astype(float)




def paired_difference(labels: np.ndarray, probs_a: list[np.ndarray], probs_b: list[np.ndarray],
                      resamples: int = RESAMPLES, seed: int = 0, groups=None,
                      metrics=METRICS, positive: int | None = None,
                      thresholds_a=None, thresholds_b=None) -> dict:
    """Model A minus model B on one test set, for each metric: the mean over the paired seeds of
    their difference (`probs_a[k]` and `probs_b[k]` are seed k's test probabilities), its
    standard error from the image and seed parts, their degrees of freedom, a 95% interval and a
    two-sided p-value (module docstring; `at_level` gives other levels). `groups`: one group id
    per test image (patient, lesion or copies of one picture); None resamples images one by one.
    `thresholds_a/b`: each seed's val-chosen threshold on P(`positive`), for `sens_at_spec`."""
    n_seeds, n_images = len(probs_a), len(labels)
    groups = np.arange(n_images) if groups is None else np.asarray(groups)
    ta = thresholds_a or [None] * n_seeds
    tb = thresholds_b or [None] * n_seeds

    def diffs(weights: np.ndarray) -> dict[str, np.ndarray]:  # seeds x replicates, per metric
        per_seed = []
        for k in range(n_seeds):
            a = weighted_scores(labels, probs_a[k], weights, metrics, ta[k], positive)
            b = weighted_scores(labels, probs_b[k], weights, metrics, tb[k], positive)
            per_seed.append({m: a[m] - b[m] for m in metrics})
        return {m: np.stack([d[m] for d in per_seed]) for m in metrics}

    whole = {m: d[:, 0] for m, d in diffs(np.ones((1, n_images))).items()}  # each seed's
    rng = np.random.default_rng(seed)
    replicates = {m: [] for m in metrics}
    for start in range(0, resamples, CHUNK):
        weights = group_weights(groups, rng, min(CHUNK, resamples - start))  # one for all seeds
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            # a replicate where no seed has the metric (no positive image drawn) is NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            for m, d in diffs(weights).items():
                replicates[m].append(np.nanmean(d, axis=0) if n_seeds > 1 else d[0])
    out = {m: combine(whole[m], np.concatenate(replicates[m])) for m in metrics}
    out["seeds"] = n_seeds
    out["groups"] = int(len(np.unique(groups)))
    return out


def combine(per_seed: np.ndarray, image_replicates: np.ndarray) -> dict:
    """The difference, its parts of variance and their t: `per_seed` holds each seed's
    difference on the whole test set, `image_replicates` the seed-mean difference under each
    group resample."""
    seeds = per_seed[~np.isnan(per_seed)]
    reps = image_replicates[~np.isnan(image_replicates)]
    if not len(seeds) or len(reps) < 2:
        return {"diff": np.nan, "low": np.nan, "high": np.nan, "p": np.nan, "se": np.nan,
                "se_images": np.nan, "se_seeds": np.nan, "df": np.nan}
    var_images = float(reps.var(ddof=1))
    var_seeds = float(seeds.var(ddof=1) / len(seeds)) if len(seeds) > 1 else 0.0
    total = var_images + var_seeds
    # Satterthwaite: the image part is estimated from thousands of replicates (df taken as
    # infinite), the seed part from len(seeds) - 1.
    df = (total ** 2 / (var_seeds ** 2 / (len(seeds) - 1))
          if var_seeds > 0 and len(seeds) > 1 else np.inf)
    out = {"diff": float(seeds.mean()), "se": float(np.sqrt(total)),
           "se_images": float(np.sqrt(var_images)), "se_seeds": float(np.sqrt(var_seeds)),
           "df": float(df)}
    out["low"], out["high"] = at_level(out, 0.95)
    out["p"] = p_value(out)
    return out


def at_level(result: dict, level: float) -> tuple[float, float]:
    """The interval of a `combine` result at `level` (0.95, or an adjusted 1 - a/c)."""
    from scipy.stats import t

    if np.isnan(result["diff"]):
        return np.nan, np.nan
    if result["se"] == 0:  # no variation at all (a model against itself)
        return result["diff"], result["diff"]
    half = t.ppf(1 - (1 - level) / 2, result["df"]) * result["se"]
    return result["diff"] - half, result["diff"] + half


def p_value(result: dict) -> float:
    """Two-sided p of "no difference" from the same t as the interval."""
    from scipy.stats import t

    if np.isnan(result["diff"]):
        return np.nan
    if result["se"] == 0:
        return 1.0 if result["diff"] == 0 else 0.0
    return float(2 * t.sf(abs(result["diff"]) / result["se"], result["df"]))


def minimum_detectable_effect(result: dict, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference a two-sided test at `alpha` would detect with `power`, given
    this comparison's standard error and degrees of freedom: (t_{1-a/2} + t_power) x se. The
    standard error holds the observed disagreement between the two models image by image."""
    from scipy.stats import t

    if np.isnan(result["se"]):
        return np.nan
    return float((t.ppf(1 - alpha / 2, result["df"]) + t.ppf(power, result["df"])) * result["se"])


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
