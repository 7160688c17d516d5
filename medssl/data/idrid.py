"""IDRiD part B, disease grading (5 retinopathy grades), as IEEE DataPort ships it.

Image numbering restarts per split (train `IDRiD_001` is not test `IDRiD_001`), so images are keyed
by their path. The label CSVs have CRLF line endings, empty trailing columns and, in some copies,
a trailing space in a header.
"""

from __future__ import annotations

from pathlib import Path

from medssl.data.files import images_in, is_junk, relpath, subdirs
from medssl.data.registry import (DatasetAdapter, Problem, ReadOptions, SampleTable, make_samples,
                                  register)
from medssl.data.tables import read_table


def _find(folder: Path | None, *words: str, dirs: bool = True) -> Path | None:
    """The child whose lowercase name contains every word (`a. Training Set`, `1. Original Images`)."""
    if folder is None:
        return None
    entries = subdirs(folder) if dirs else sorted(
        p for p in folder.iterdir() if p.is_file() and not is_junk(p.name) and p.suffix.lower() == ".csv")
    return next((p for p in entries if all(w in p.name.lower() for w in words)), None)


def _parts(root: Path) -> dict[str, tuple[Path | None, Path | None]]:
    images, truths = _find(root, "original images"), _find(root, "groundtruth")
    return {split: (_find(images, word), _find(truths, word, "labels", dirs=False))
            for split, word in (("train", "training"), ("test", "testing"))}


@register
class IdridDataset(DatasetAdapter):
    name = "idrid"
    title = "IDRiD disease grading"
    classes = ["0", "1", "2", "3", "4"]
    grouping = ("none in the download (no patient ids; numbering restarts per split): every "
                "image is its own group")
    download = "https://ieee-dataport.org/open-access/indian-diabetic-retinopathy-image-dataset-idrid (part B. Disease Grading)"
    expected_tree = """
B. Disease Grading/
  1. Original Images/a. Training Set/IDRiD_001.jpg ... IDRiD_413.jpg
  1. Original Images/b. Testing Set/IDRiD_001.jpg ... IDRiD_103.jpg
  2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv
  2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv
"""
    official_test = True

    def is_root(self, path: Path) -> bool:
        return all(folder and csv for folder, csv in _parts(path).values())

    def read(self, root: Path, options: ReadOptions) -> SampleTable:
        rows, problems = [], []
        for split, (folder, csv_path) in _parts(root).items():
            labels = read_table(csv_path, ["Image name", "Retinopathy grade"])
            on_disk = {p.stem: p for p in images_in(folder, recursive=False)}
            listed = set()
            pairs = labels[["Image name", "Retinopathy grade"]].itertuples(index=False, name=None)
            for i, (name, grade) in zip(labels.index, pairs):  # i: the line in the file
                name = Path(name).stem if name.lower().endswith((".jpg", ".jpeg")) else name
                where = f"{csv_path.name} row {i}"
                listed.add(name)
                try:
                    grade = str(int(float(grade)))
                except ValueError:
                    pass
                if grade not in self.classes:
                    problems.append(Problem(where, f"unknown label Retinopathy grade='{grade}' for "
                                            f"{name}; expected one of: {', '.join(self.classes)}"))
                    continue
                if name not in on_disk:
                    problems.append(Problem(f"{relpath(folder, root)}/{name}.jpg",
                                            f"listed in {csv_path.name} (row {i}) but missing on disk"))
                    continue
                rel = relpath(on_disk[name], root)
                rows.append((rel, grade, rel, split))
            for stem in sorted(set(on_disk) - listed):
                problems.append(Problem(relpath(on_disk[stem], root),
                                        f"image not listed in {csv_path.name}; ignored", "warning"))
        return SampleTable(self.name, root, list(self.classes), make_samples(rows), problems)
