"""Train/val/test splits: official ones kept, missing ones carved, copies of one picture kept
out of training, and the split file that reproduces a run's split exactly.

Carving is seeded, stratified by label and grouped (patient, lesion, and every duplicate group
merged with the groups of its members) with scikit-learn's StratifiedGroupKFold: a fraction f is
realised as m of k folds, m/k the nearest fraction with k <= 20, the number of groups and the
largest class (0.15 -> 3/20, 0.2 -> 1/5), so no group ever lands in two splits.

The duplicate policy (`--duplicates`):
- `drop` (default): an official test split stays exactly as published, and copies of a test
  image elsewhere are left out; copies with one label keep one (an official val copy if there is
  one, else the first by path); copies under different labels are all left out (label noise
  nobody can resolve). Left-out rows stay in the table and in split.csv with split `excluded`
  and a reason.
- `keep`: the published, leaky splits, as the study used them; copies still land in one carved
  split together.
"""

from __future__ import annotations

import warnings
from fractions import Fraction
from pathlib import Path

import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from medssl.atomic import atomic_write
from medssl.data.registry import COLUMNS, SPLITS, SampleTable
from medssl.data.tables import read_table
from medssl.errors import MedsslError
from medssl.names import DUPLICATE_POLICIES

DEFAULT_VAL_FRACTION = 0.15  # of the training pool
DEFAULT_TEST_FRACTION = 0.2  # of all images, only where the download has no official test split
EXCLUDED = "excluded"
# split.csv: the sample columns, why a row is left out, and the duplicate policy that made it.
SPLIT_FILE_COLUMNS = [*COLUMNS, "reason", "duplicate_policy"]
# What `excluded` rows are counted as in run metadata and reports, by the start of their reason.
REASON_KINDS = {"copy of test image": "copies of test images",
                "copies filed under different labels": "copies filed under different labels",
                "copy of": "extra copies of a kept image"}


def reason_kind(reason: str) -> str:
    return next(kind for prefix, kind in REASON_KINDS.items() if reason.startswith(prefix))


def apply_duplicate_policy(samples: pd.DataFrame, groups, policy: str) -> pd.DataFrame:
    """The samples with a `reason` column: under `drop`, copies left out (split `excluded`) as
    the module docstring says; under both policies, each duplicate group's members share one
    `group` (the smallest of their own), so a carved split keeps whatever remains of it together."""
    if policy not in DUPLICATE_POLICIES:
        raise MedsslError(f"--duplicates '{policy}' is not one of {', '.join(DUPLICATE_POLICIES)}.")
    out = samples.copy()
    out["reason"] = ""
    row_of = {p: i for i, p in zip(out.index, out["path"])}
    merged = _merged_groups(out, groups, row_of)
    out["group"] = out["group"].map(lambda g: merged.get(g, g))
    if policy == "keep":
        return out
    for group in groups:
        rows = [row_of[p] for p in group.paths if p in row_of]
        if len(rows) < 2:
            continue
        split = out.loc[rows, "split"]
        tests = [r for r in rows if split[r] == "test"]
        labels = sorted(set(out.loc[rows, "label"]))
        if tests:  # the official test split stays exactly as published
            first_test = out.at[tests[0], "path"]
            left_out = {r: f"copy of test image {first_test}" for r in rows if r not in tests}
        elif len(labels) > 1:
            left_out = {r: f"copies filed under different labels: {', '.join(labels)}" for r in rows}
        else:
            kept = min(rows, key=lambda r: (split[r] != "val", out.at[r, "path"]))
            left_out = {r: f"copy of {out.at[kept, 'path']}, which is kept" for r in rows if r != kept}
        for r, why in left_out.items():
            out.at[r, "split"], out.at[r, "reason"] = EXCLUDED, why
    return out


def _merged_groups(samples: pd.DataFrame, groups, row_of: dict) -> dict[str, str]:
    """Sample group -> the group it is merged into: groups linked by a duplicate group become
    one (scipy's connected components), named by the smallest of them."""
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    linked = [sorted({samples.at[row_of[p], "group"] for p in g.paths if p in row_of})
              for g in groups]
    names = sorted({name for names in linked for name in names})
    index = {name: i for i, name in enumerate(names)}
    edges = [(index[names_[0]], index[n]) for names_ in linked for n in names_[1:]]
    if not edges:
        return {}
    a, b = np.array(edges).T
    _, component = connected_components(coo_matrix((np.ones(len(a)), (a, b)),
                                                   shape=(len(names), len(names))), directed=False)
    smallest: dict[int, str] = {}
    for name, c in zip(names, component):  # names are sorted: the first seen is the smallest
        smallest.setdefault(c, name)
    return {name: smallest[c] for name, c in zip(names, component)}


def policy_violations(samples: pd.DataFrame, groups) -> list[str]:
    """What a split breaks of the `drop` policy: copies on two sides of train/val/test, copies
    under two labels in training, two copies of one picture in training. Empty when it holds."""
    problems = []
    split_of = dict(zip(samples["path"], samples["split"]))
    label_of = dict(zip(samples["path"], samples["label"]))
    for group in groups:
        used = [p for p in group.paths if split_of.get(p) in SPLITS]
        sides = sorted({split_of[p] for p in used})
        training = [p for p in used if split_of[p] != "test"]
        if len(sides) > 1:
            problems.append(f"copies {', '.join(used)} are in {' and '.join(sides)}")
        elif len({label_of[p] for p in training}) > 1:
            problems.append(f"copies {', '.join(training)} are in training under different labels")
        elif len(training) > 1:
            problems.append(f"copies {', '.join(training)} are all in {sides[0]}")
    return problems


def carve(samples: pd.DataFrame, fraction: float, seed: int) -> pd.Series:
    """A boolean mask selecting about `fraction` of the rows, stratified by label, grouped by group."""
    if not 0 < fraction < 1:
        raise MedsslError(f"A split fraction must lie strictly between 0 and 1, got {fraction}.")
    if samples.empty:
        raise MedsslError("No training images are left to carve a split from (every one is left "
                          "out as a copy: `medssl check` lists the duplicate groups). Fix: pass "
                          "--duplicates keep to use the images as published.")
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
                  test_fraction: float | None = None, duplicates=(),
                  policy: str = "drop") -> pd.DataFrame:
    """Every row gets a split: official test kept (else carved), val carved from the train pool,
    copies handled by `policy` (see the module docstring)."""
    val_fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    test_fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
    out = samples.copy()
    out.loc[~out["split"].isin(SPLITS), "split"] = "train"
    out = apply_duplicate_policy(out, duplicates, policy)
    if not (out["split"] == "test").any():
        pool = out.index[out["split"] == "train"]
        out.loc[pool[carve(out.loc[pool], test_fraction, seed).to_numpy()], "split"] = "test"
    if not (out["split"] == "val").any():
        pool = out.index[out["split"] == "train"]
        # A different seed stream from the test carve, so the two cuts are independent.
        out.loc[pool[carve(out.loc[pool], val_fraction, seed + 1).to_numpy()], "split"] = "val"
    return out


def label_subset(samples: pd.DataFrame, fraction: float, seed: int,
                 split: str = "train") -> pd.DataFrame:
    """The rows of `split` a run may use labels of: a seeded `fraction` of every class (at least
    one image per class). The rest of the train split stays available to SSL, without labels.
    For val (model selection at a label fraction) the draw is a stream of its own."""
    import numpy as np

    train = samples[samples["split"] == split]
    if fraction >= 1:
        return train
    rng = np.random.default_rng(seed if split == "train" else [seed, SPLITS.index(split)])
    keep = []
    for _, rows in train.groupby("label", sort=True):
        n = max(1, int(round(fraction * len(rows))))
        keep.extend(rng.choice(rows.index.to_numpy(), n, replace=False))
    return train.loc[sorted(keep)]


def write_split_csv(samples: pd.DataFrame, path: Path, policy: str) -> None:
    """The split as `path,label,group,split,reason,duplicate_policy`, paths relative to the
    dataset root; written atomically."""
    frame = samples.copy()
    if "reason" not in frame:
        frame["reason"] = ""
    frame["duplicate_policy"] = policy
    atomic_write(Path(path), lambda tmp: frame[SPLIT_FILE_COLUMNS].to_csv(tmp, index=False))


def read_split_csv(path: Path, table: SampleTable, policy: str = "drop") -> pd.DataFrame:
    """A saved split, checked against the dataset (same paths, same labels, known splits) and
    against the duplicate policy asked for."""
    path = Path(path)
    if not path.is_file():
        raise MedsslError(f"Split file {path} does not exist. Fix: pass the split.csv a run saved, "
                          "or one written by `medssl check --split-out`.")
    if path.suffix.lower() not in ("", ".csv", ".tsv", ".txt"):
        raise MedsslError(f"--split-file {path} is a {path.suffix} file, not a split table. Fix: "
                          "pass the split.csv a run saved, or one `medssl check --split-out` "
                          "wrote.")
    saved = read_table(path, COLUMNS)
    for column in SPLIT_FILE_COLUMNS[len(COLUMNS):]:  # older split files have neither
        if column not in saved:
            saved[column] = ""
    made_with = sorted(set(saved["duplicate_policy"]) - {""})
    if made_with and made_with != [policy]:
        raise MedsslError(f"{path} was made with --duplicates {made_with[0]}, and this run asks "
                          f"for --duplicates {policy}. Fix: pass --duplicates {made_with[0]}, or "
                          "make a new split (a new --out folder, or without --split-file).")
    saved = saved[[*COLUMNS, "reason"]]
    known = table.samples.set_index("path")["label"]
    bad_split = saved[~saved["split"].isin([*SPLITS, EXCLUDED])]
    if len(bad_split):
        row = bad_split.iloc[0]
        raise MedsslError(f"{path}: split '{row['split']}' for {row['path']} is not one of "
                          f"train, val, test, {EXCLUDED}.")
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
    if policy == "drop":
        broken = policy_violations(saved, table.duplicates)
        if broken:
            raise MedsslError(
                f"{path} puts copies of one picture where --duplicates drop forbids them "
                f"({len(broken)} group(s); first: {broken[0]}). Fix: make a new split (without "
                "--split-file), or pass --duplicates keep to use this one as it is.")
    return saved.reset_index(drop=True)
