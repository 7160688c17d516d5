"""The paired comparisons of a results table: which models are compared with which, on which
metrics, and the adjustment for multiplicity over the primary endpoint.

- Every model is compared with M1 (random init) and M3 (ImageNet), and a distilled or mutual
  model also with its own base; M1 against M3 is one comparison, made once (on M3's row).
- One metric per task is the **primary endpoint**, declared before the runs (the preset's, or
  `--primary-metric`): balanced accuracy for several classes, quadratic weighted kappa for graded
  labels, AUROC for two classes. Holm's adjustment runs over the primary metric's comparisons of
  the table, each counted once; its adjusted p-values come with intervals that agree with them.
- The other metrics are secondary: 95% intervals and p-values, unadjusted, and said to be so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medssl.errors import MedsslError
from medssl.names import (FOUNDATION, PRIMARY_CHOICES, foundation_model, prior_of, split_models,
                          task_metrics)
from medssl.report.statistics import (METRICS, at_level, holm, minimum_detectable_effect,
                                      paired_difference)
from medssl.runs import SPLIT, predictions_file

REFERENCES = ("M1", "M3")
ALPHA = 0.05
RESULT_KEYS = ("diff", "low", "high", "p", "se", "df")
METRIC_TITLES = {"acc": "accuracy", "balanced_acc": "balanced accuracy", "macro_f1": "macro-F1",
                 "auroc": "AUROC", "qwk": "QWK",
                 "sens_at_spec": "sensitivity at the specificity target", "ece": "ECE"}


def default_primary(ordinal: bool, n_classes: int) -> str:
    """The primary endpoint of a task: QWK for graded labels, AUROC for two classes (threshold
    free: the sensitivity at a fixed specificity hangs on a threshold chosen on few val
    negatives), balanced accuracy otherwise (accuracy would reward the majority class)."""
    if ordinal:
        return "qwk"
    return "auroc" if n_classes == 2 else "balanced_acc"


@dataclass(frozen=True)
class Task:
    """What the table pairs: the metrics, the primary one, and the positive class of a binary
    task (whose val-chosen threshold gives the sensitivity)."""
    metrics: tuple[str, ...]
    primary: str
    positive: int | None = None

    @staticmethod
    def of(runs: pd.DataFrame, primary: str | None = None) -> "Task":
        ordinal, n_classes = bool(runs["ordinal"].any()), int(runs["n_classes"].max())
        binary = n_classes == 2
        metrics = task_metrics(ordinal, binary)
        primary = primary or default_primary(ordinal, n_classes)
        if primary not in metrics:
            raise MedsslError(f"--primary-metric {primary} does not apply to this task (it has "
                              f"{', '.join(m for m in metrics if m in PRIMARY_CHOICES)}). Fix: "
                              "choose one of those.")
        positive = runs["positive_index"].dropna()
        return Task(metrics, primary, int(positive.iloc[0]) if binary and len(positive) else None)

    @property
    def secondary(self) -> tuple[str, ...]:
        return tuple(m for m in self.metrics if m != self.primary)


@dataclass
class Predictions:
    """One run's test predictions, rows in path order."""
    paths: np.ndarray
    labels: np.ndarray
    probs: np.ndarray
    groups: np.ndarray
    threshold: float | None


def test_predictions(runs: pd.DataFrame) -> dict[int, Predictions]:
    """seed -> that run's test predictions, with each image's split group (patient, lesion or
    copies of one picture, from the run's split.csv; the image itself where it has none)."""
    out = {}
    for _, r in runs.iterrows():
        run = Path(r["run"])
        pred = pd.read_csv(predictions_file(run, "test")).sort_values("path")
        probs = pred.filter(like="prob_")
        classes = [c[len("prob_"):] for c in probs.columns]
        labels = pred["label"].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy()
        paths = pred["path"].to_numpy()
        threshold = r.get("threshold")
        out[int(r["seed"])] = Predictions(paths, labels, probs.to_numpy(),
                                          groups_of(run / SPLIT, paths),
                                          None if pd.isna(threshold) else float(threshold))
    return out


def groups_of(split_csv: Path, paths: np.ndarray) -> np.ndarray:
    """Each path's group in the split (its own path where the split names none)."""
    if not split_csv.is_file():
        return paths
    split = pd.read_csv(split_csv, dtype=str, keep_default_na=False)
    group = dict(zip(split["path"], split.get("group", split["path"])))
    return np.array([group.get(p) or p for p in paths])


def ensemble_predictions(members: list[pd.DataFrame]) -> dict[int, Predictions]:
    """seed -> the mean probabilities of several models trained alone, over the seeds all of
    them have: the reference of a mutual-learning cohort's ensemble, so that what ensembling
    alone brings is not credited to mutual learning. It has no val-chosen threshold."""
    each = [test_predictions(runs) for runs in members]
    out = {}
    for s in sorted(set.intersection(*(set(e) for e in each))):
        first = each[0][s]
        if any(not np.array_equal(e[s].paths, first.paths) for e in each):
            continue  # tested on different images: no ensemble image by image
        out[s] = Predictions(first.paths, first.labels, np.mean([e[s].probs for e in each], 0),
                             first.groups, None)
    return out


def paired_bootstrap(model_runs: pd.DataFrame, ref_runs: pd.DataFrame | list[pd.DataFrame],
                     task: Task | None = None, seed: int = 0) -> dict | None:
    """Each metric of a model minus a reference over the seeds both have, from the crossed
    design of report.statistics, resampling the split's groups; None when they share no seed
    or were tested on different images. A list of references is their ensemble."""
    a = test_predictions(model_runs)
    b = (ensemble_predictions(ref_runs) if isinstance(ref_runs, list)
         else test_predictions(ref_runs))
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    first = a[seeds[0]]
    if any(not np.array_equal(x[s].paths, first.paths) or not np.array_equal(x[s].labels,
                                                                              first.labels)
           for s in seeds for x in (a, b)):
        return None  # different test sets: not comparable image by image
    return paired_difference(first.labels, [a[s].probs for s in seeds],
                             [b[s].probs for s in seeds], seed=seed, groups=first.groups,
                             metrics=task.metrics if task else METRICS,
                             positive=task.positive if task else None,
                             thresholds_a=[a[s].threshold for s in seeds],
                             thresholds_b=[b[s].threshold for s in seeds])


def compared(model: str, ref: str) -> bool:
    """Whether `model`'s row holds a comparison with reference `ref`: never with itself, and M1
    against M3 once (on M3's row, as M3 - M1), not again as M1 - M3."""
    return ref != model and not (model in REFERENCES and REFERENCES.index(model)
                                 < REFERENCES.index(ref))


def ssl_from_foundation(model: str) -> bool:
    return model.startswith(FOUNDATION) and prior_of(model).ssl


def comparisons(row: dict, group: pd.DataFrame, at_frac: pd.DataFrame, task: Task) -> dict:
    """The row's comparisons: reference name -> paired result (or None)."""
    model = row["model"]
    results = {}
    for ref in REFERENCES:
        ref_runs = at_frac[at_frac["model"] == ref]
        results[ref] = (paired_bootstrap(group, ref_runs, task)
                        if compared(model, ref) and not ref_runs.empty else None)
    # A distilled or mutual model against its own base trained alone: does KD or DML help?
    # SSL from a foundation prior against that prior alone (F-x+simclr against F-x).
    bases = group["base_models"].dropna().unique() if "base_models" in group else []
    if not len(bases) and ssl_from_foundation(model):
        bases = [foundation_model(prior_of(model).init)]
    row["base"], results["base"] = None, None
    if len(bases) == 1:
        names = split_models(bases[0])
        refs = [at_frac[at_frac["model"] == name] for name in names]
        if all(not r.empty for r in refs):
            row["base"] = names[0] if len(names) == 1 else f"{bases[0]} ensemble"
            # Against M1 or M3 it is that column's comparison: one test, counted once.
            results["base"] = (results[names[0]] if row["base"] in REFERENCES else
                               paired_bootstrap(group, refs[0] if len(refs) == 1 else refs, task))
    return results


def store(row: dict, results: dict, task: Task) -> None:
    """`test_<metric>_vs_<ref>_<diff|low|high|p|se|df>` columns of a row (NaN where none)."""
    for ref, result in results.items():
        for metric in task.metrics:
            for key in RESULT_KEYS:
                row[f"test_{metric}_vs_{ref}_{key}"] = (result[metric][key] if result
                                                        else float("nan"))
        row[f"vs_{ref}_groups"] = result["groups"] if result else float("nan")
        row[f"vs_{ref}_seeds"] = result["seeds"] if result else float("nan")


def adjust(rows: list[dict], primary: str) -> list[dict]:
    """Holm's adjustment over the primary metric's comparisons of the table, each counted once
    (a base that is M1 or M3 repeats that column's test): `_p_holm` beside `_p`, and the
    interval that agrees with it, `_low_holm`/`_high_holm`. Holm multiplies comparison i's p by
    some c_i (its step-down factor, made monotone); the interval at level 1 - 0.05/c_i excludes 0
    exactly when the adjusted p is below 0.05. Also `_mde`: the smallest difference this test
    set detects with 80% power at that level."""
    def repeated(row: dict, key: str) -> bool:
        return "_vs_base_" in key and row.get("base") in REFERENCES

    prefix = f"test_{primary}_vs_"
    keys = [(i, k[:-2]) for i, row in enumerate(rows) for k in row
            if k.startswith(prefix) and k.endswith("_p") and not repeated(row, k)
            and not np.isnan(row[k])]
    raw = np.array([rows[i][f"{k}_p"] for i, k in keys], dtype=float)
    adjusted = holm(raw)
    for (i, k), p, p_holm in zip(keys, raw, adjusted):
        row = rows[i]
        result = {key: row[f"{k}_{key}"] for key in ("diff", "se", "df")}
        factor = holm_factor(p, p_holm, len(keys))
        row[f"{k}_p_holm"] = p_holm
        row[f"{k}_low_holm"], row[f"{k}_high_holm"] = at_level(result, 1 - ALPHA / factor)
        row[f"{k}_mde"] = minimum_detectable_effect(result, ALPHA / factor)
    for row in rows:  # the repeated base comparison shows its M1/M3 column's numbers
        row["primary_family"] = len(keys)
        for k in [k for k in row if k.startswith(prefix) and k.endswith("_p")
                  and (repeated(row, k) or np.isnan(row[k]))]:
            same = (k[:-2].replace("_vs_base", f"_vs_{row['base']}") if repeated(row, k)
                    else None)  # else no comparison: NaN
            for key in ("p_holm", "low_holm", "high_holm", "mde"):
                row[f"{k[:-2]}_{key}"] = row.get(f"{same}_{key}", float("nan"))
    return rows


def holm_factor(p: float, p_holm: float, family: int) -> float:
    """The factor Holm's adjustment applied to p (at least 1); where p is 0 in floating point,
    the family's size (the largest factor Holm can apply)."""
    if np.isnan(p) or np.isnan(p_holm):
        return float("nan")
    return max(1.0, p_holm / p) if p > 0 else float(family)
