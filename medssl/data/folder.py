"""Class-folder layouts (`<split>/<class>/<image>`): the generic `folder` dataset, and the scan
that the ISIC, Covid19, chest X-ray and demo adapters share."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from medssl.data.files import child, images_in, relpath, subdirs
from medssl.data.registry import (SPLITS, DatasetAdapter, Problem, ReadOptions, SampleTable,
                                  make_samples, register)

# Browser re-downloads: `ISIC_0000001(1).jpg` or `ISIC_0000001 (1).jpg` beside `ISIC_0000001.jpg`.
_COPY_SUFFIX = re.compile(r"^(?P<stem>.*?)\s?\(\d+\)$")


def scan_class_folders(
    root: Path,
    split_dir: Path,
    split: str,
    classes: list[str] | None = None,
    group_of: Callable[[Path], str | None] | None = None,
    drop_copies: bool = False,
) -> tuple[list[tuple[str, str, str, str]], list[Problem], int]:
    """Rows for every image in `split_dir/<class>/`, problems found, and copies dropped.

    With `classes`, folder names are matched ignoring case and reported under the canonical name;
    a folder that is not a known class is an error, not a silently new label.
    """
    canonical = {c.lower(): c for c in classes} if classes else None
    rows, problems, copies = [], [], 0
    for class_dir in subdirs(split_dir):
        label = class_dir.name
        if canonical is not None:
            if label.lower() not in canonical:
                problems.append(Problem(relpath(class_dir, root) + "/",
                                        f"unknown class folder '{label}'; expected one of: "
                                        f"{', '.join(classes)}"))
                continue
            label = canonical[label.lower()]
        images = images_in(class_dir)
        if drop_copies:
            names = {p.name for p in images}
            kept = []
            for p in images:
                m = _COPY_SUFFIX.match(p.stem)
                if m and (m["stem"] + p.suffix) in names:
                    copies += 1
                else:
                    kept.append(p)
            images = kept
        if not images:
            problems.append(Problem(relpath(class_dir, root) + "/",
                                    "empty class folder: no image files"))
        for p in images:
            rel = relpath(p, root)
            group = (group_of(p) if group_of else None) or rel
            rows.append((rel, label, group, split))
    return rows, problems, copies


def split_dirs(root: Path) -> dict[str, Path]:
    """The `train`/`val`/`test` folders present under root, matched ignoring case."""
    return {s: d for s in SPLITS if (d := child(root, s)) is not None}


def has_class_folders(folder: Path, classes: list[str] | None = None) -> bool:
    names = {d.name.lower() for d in subdirs(folder)}
    if classes is None:
        return any(images_in(d) for d in subdirs(folder))
    return bool(names & {c.lower() for c in classes})


@register
class FolderDataset(DatasetAdapter):
    name = "folder"
    generic = True
    grouping = "none: every image is its own group"
    title = "ImageFolder tree"
    download = "your own images, one folder per class"
    expected_tree = """
<root>/<class>/*.jpg|png|...               (splits carved by medssl)
or <root>/{train,val,test}/<class>/*        (the splits you made are kept)
"""

    def is_root(self, path: Path) -> bool:
        return any(has_class_folders(d) for d in split_dirs(path).values()) \
            or has_class_folders(path)

    def candidates(self, given: Path) -> list[Path]:
        # A parent folder would look like a tree whose classes are datasets: take the root as given.
        return [given]

    def read(self, root: Path, options: ReadOptions) -> SampleTable:
        rows, problems = [], []
        # Folders named like splits are splits when they hold class folders; a `test/` of
        # images beside other classes is a class of its own.
        dirs = {s: d for s, d in split_dirs(root).items() if has_class_folders(d)} or {"": root}
        for split, folder in dirs.items():
            r, p, _ = scan_class_folders(root, folder, split)
            rows += r
            problems += p
        notes = []
        if "" not in dirs:  # split folders: say so, and refuse class folders beside them
            named = ", ".join(f"{d.name}/" for d in dirs.values())
            notes.append(f"{named} read as the splits you made (their subfolders are classes)")
            beside = [d.name for d in subdirs(root) if d not in dirs.values() and images_in(d)]
            if beside:
                problems.append(Problem(str(root), (
                    f"{named} {'is' if len(dirs) == 1 else 'are'} read as split folders, so the "
                    f"folders beside them ({', '.join(f'{b}/' for b in beside)}) are not read. "
                    "Fix: if they are all classes, rename the class folder that is named like a "
                    "split (say test/ to test_group/); else put every class inside the split "
                    "folders")))
        samples = make_samples(rows)
        classes = sorted(samples["label"].unique())
        return SampleTable(self.name, root, classes, samples, problems, notes)
