"""The registry of named datasets: each adapter turns one download layout into a table of samples.

A sample table has one row per image: `path` (relative to the dataset root), `label` (a class name),
`group` (patient or lesion id; the path itself where the download has none) and `split`
(`train`, `val`, `test`, or "" where the download does not say).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medssl.errors import MedsslError
from medssl.data.files import subdirs, unread_kinds, unread_note

COLUMNS = ["path", "label", "group", "split"]
SPLITS = ("train", "val", "test")
DATA_ROOT_ENV = "MEDSSL_DATA_ROOT"


@dataclass
class Problem:
    """Something wrong with one file or row. Errors make a dataset unusable; warnings do not."""

    path: str
    problem: str
    severity: str = "error"

    def as_dict(self) -> dict:
        return {"path": self.path, "problem": self.problem, "severity": self.severity}


@dataclass
class SampleTable:
    dataset: str
    root: Path
    classes: list[str]
    samples: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    duplicates: list = field(default_factory=list)  # duplicates.DuplicateGroup, from the decode pass
    duplicate_policy: str = "drop"  # how the split treats them (splits.apply_duplicate_policy)
    window: str = "auto"  # `--window`: how every reader maps values beyond 8 bits (windowing)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def absolute(self, rel: str) -> Path:
        return self.root / rel


def make_samples(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    """Rows of (path, label, group, split) as a DataFrame with one string column each."""
    df = pd.DataFrame(rows, columns=COLUMNS, dtype=object)
    return df.astype(str).sort_values("path", kind="stable").reset_index(drop=True)


@dataclass
class ReadOptions:
    """Settings only the generic adapters use (`csv` column names)."""

    path_column: str = "path"
    label_column: str = "label"
    group_column: str | None = None
    split_column: str | None = None


class DatasetAdapter:
    """One download layout. Subclasses set the description and implement `is_root` and `read`."""

    name: str = ""
    title: str = ""
    classes: list[str] | None = None  # None: taken from the data (folder, csv)
    download: str = ""
    expected_tree: str = ""
    official_test: bool = False  # the download ships its own test split
    generic: bool = False  # not one published dataset (folder, csv, demo): listed last
    grouping: str = "none: every image is its own group"  # what keeps images together in a split
    # A regular expression for names that identify a picture (ISIC_0024468): two files with the
    # same name are one picture (a `same-id` duplicate group). None where names say nothing.
    image_id_pattern: str | None = None

    def image_id(self, path: str) -> str | None:
        """The picture's id in this relative path, or None."""
        if self.image_id_pattern is None:
            return None
        m = re.search(self.image_id_pattern, path.rsplit("/", 1)[-1])
        return m.group(0) if m else None

    def is_root(self, path: Path) -> bool:
        raise NotImplementedError

    def read(self, root: Path, options: ReadOptions) -> SampleTable:
        raise NotImplementedError

    def default_root(self) -> Path:
        return Path(os.environ.get(DATA_ROOT_ENV, "data"))

    def find_root(self, data_root: Path | str | None) -> Path:
        """`data_root` may be the unpacked folder itself or the folder above it."""
        given = Path(data_root) if data_root else self.default_root()
        given = given.expanduser()
        if not given.exists():
            raise MedsslError(self.missing_message(given, f"{given} does not exist."))
        if given.is_file():
            kind = f"a {given.suffix} file" if given.suffix else "a file"
            raise MedsslError(f"--data-root {given} is {kind}, not a folder. Fix: pass the folder "
                              f"the {self.title} download unpacks to.")
        roots = [c for c in self.candidates(given) if self.is_root(c)]
        if roots:  # a folder of several downloads: the one holding only this dataset's classes
            return next((c for c in roots if self.only_its_classes(c)), roots[0]).resolve()
        unread = unread_note(unread_kinds(given))  # a folder of DICOMs, say: say so
        found = f" Found there but {unread}." if unread else ""
        raise MedsslError(self.missing_message(
            given, f"{given} does not hold the {self.title} layout.{found}"))

    def candidates(self, given: Path) -> list[Path]:
        return [given, *subdirs(given)]

    def only_its_classes(self, root: Path) -> bool:
        """Whether a root `is_root` accepts holds no class of another dataset (chest X-ray's
        NORMAL is also a Covid19 class): preferred where a parent folder holds both."""
        return True

    def missing_message(self, given: Path, what: str) -> str:
        hint = "" if given != self.default_root() else (
            f" (no --data-root given, so the default was used: ${DATA_ROOT_ENV} or ./data)")
        return (
            f"{what}{hint}\n"
            f"Expected the {self.title} download; --data-root may name this folder or its parent:\n"
            f"{indent(self.expected_tree)}\n"
            f"Download: {self.download}\n"
            f"Fix: unzip the download unchanged and pass --data-root <the unzipped folder>."
        )


def indent(text: str, by: str = "  ") -> str:
    return "\n".join(by + line for line in text.strip("\n").splitlines())


_REGISTRY: dict[str, DatasetAdapter] = {}


def register(adapter_cls: type[DatasetAdapter]) -> type[DatasetAdapter]:
    _REGISTRY[adapter_cls.name] = adapter_cls()
    return adapter_cls


def get_adapter(name: str) -> DatasetAdapter:
    if name not in _REGISTRY:
        raise MedsslError(
            f"Unknown dataset '{name}'. Known datasets: {', '.join(_REGISTRY)} "
            f"(`medssl datasets` lists them with download pages).")
    return _REGISTRY[name]


def all_adapters() -> list[DatasetAdapter]:
    return sorted(_REGISTRY.values(), key=lambda a: a.generic)
