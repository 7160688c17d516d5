"""Train/val/test splits: official ones kept, missing ones carved, and the split file that
reproduces a run's split exactly.

Carving is seeded, stratified by label and grouped (patient, lesion) with scikit-learn's
StratifiedGroupKFold: a fraction f is realised as m of k folds, m/k the nearest fraction with
k <= 20, the number of groups and the largest class (0.15 -> 3/20, 0.2 -> 1/5), so no group ever lands in two
splits.
"""

from __future__ import annotations

import warnings
from fractions import Fraction
from pathlib import Path

import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from medssl.data.registry import COLUMNS, SPLITS, SampleTable
from medssl.errors import MedsslError

DEFAULT_VAL_FRACTION = 0.15  # of the training pool
DEFAULT_TEST_FRACTION = 0.2  # of all images, only where the download has no official test split


def carve(samples: pd.DataFrame, fraction: float, seed: int) -> pd.Series:
    """A boolean mask selecting about `fraction` of the rows, stratified by label, grouped by group."""
    if not 0 < fraction < 1:
        raise MedsslError(f"A split fraction must lie strictly between 0 and 1, got {fraction}.")
    n_groups = samples["group"].nunique()
    # scikit-learn needs at least one class with as many members as folds.
    max_folds = min(20, n_groups, int(samples["label"].value_counts().max()))
    if max_folds < 2:
        raise MedsslError(
            f"Cannot carve {fraction:.0%} of {len(samples)} images in {n_groups} groups: "
            "too few to split. Fix: use more images.")
    share = Fraction(fraction).limit_denominator(max_folds)
    # Tiny datasets: never carve nothing, never carve everything.
    share = min(max(share, Fraction(1, max_folds)), Fraction(max_folds - 1, max_folds))
    folds, taken = share.denominator, share.numerator
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    mask = pd.Series(False, index=samples.index)
    with warnings.catch_warnings():
        # Tiny classes (fewer members than folds) are allowed; they just cannot be spread evenly.
        warnings.simplefilter("ignore", UserWarning)
        for i, (_, held_out) in enumerate(splitter.split(samples, samples["label"], samples["group"])):
            if i == taken:
                break
            mask.iloc[held_out] = True
    return mask


def assign_splits(samples: pd.DataFrame, seed: int = 0, val_fraction: float | None = None,
                  test_fraction: float | None = None) -> pd.DataFrame:
    """Every row gets a split: official test kept (else carved), val carved from the train pool."""
    val_fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    test_fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
    out = samples.copy()
    out.loc[~out["split"].isin(SPLITS), "split"] = "train"
    if not (out["split"] == "test").any():
        pool = out.index[out["split"] == "train"]
        out.loc[pool[carve(out.loc[pool], test_fraction, seed).to_numpy()], "split"] = "test"
    if not (out["split"] == "val").any():
        pool = out.index[out["split"] == "train"]
        # A different seed stream from the test carve, so the two cuts are independent.
        out.loc[pool[carve(out.loc[pool], val_fraction, seed + 1).to_numpy()], "split"] = "val"
    return out


def label_subset(samples: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """The train rows a run may use labels of: a seeded `fraction` of every class (at least one
    image per class). The rest of the train split stays available to SSL, without labels."""
    import numpy as np

    train = samples[samples["split"] == "train"]
    if fraction >= 1:
        return train
    rng = np.random.default_rng(seed)
    keep = []
    for _, rows in train.groupby("label", sort=True):
        n = max(1, int(round(fraction * len(rows))))
        keep.extend(rng.choice(rows.index.to_numpy(), n, replace=False))
    return train.loc[sorted(keep)]


def write_split_csv(samples: pd.DataFrame, path: Path) -> None:
    """The split as `path,label,group,split`, paths relative to the dataset root; written atomically."""
    from medssl.atomic import atomic_write

    atomic_write(Path(path), lambda tmp: samples[COLUMNS].to_csv(tmp, index=False))


def read_split_csv(path: Path, table: SampleTable) -> pd.DataFrame:
    """A saved split, checked against the dataset: same paths, same labels, known splits."""
    from medssl.data.tables import read_table

    path = Path(path)
    if not path.is_file():
        raise MedsslError(f"Split file {path} does not exist. Fix: pass the split.csv a run saved, "
                          "or one written by `medssl check --split-out`.")
    saved = read_table(path, COLUMNS)[COLUMNS]
    known = table.samples.set_index("path")["label"]
    bad_split = saved[~saved["split"].isin(SPLITS)]
    if len(bad_split):
        row = bad_split.iloc[0]
        raise MedsslError(f"{path}: split '{row['split']}' for {row['path']} is not one of "
                          "train, val, test.")
    unknown = saved[~saved["path"].isin(known.index)]
    if len(unknown):
        raise MedsslError(
            f"{path} names {len(unknown)} images that are not in the {table.dataset} dataset at "
            f"{table.root} (first: {unknown['path'].iloc[0]}). Fix: use the same --data-root "
            "as the run that wrote the split file.")
    relabelled = saved[known.loc[saved["path"]].to_numpy() != saved["label"].to_numpy()]
    if len(relabelled):
        row = relabelled.iloc[0]
        raise MedsslError(f"{path}: {row['path']} has label '{row['label']}', but the dataset says "
                          f"'{known[row['path']]}'. Fix: regenerate the split file.")
    return saved.reset_index(drop=True)
