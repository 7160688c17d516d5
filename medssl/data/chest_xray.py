"""Chest X-ray pneumonia, 2 classes (Kaggle `paultimothymooney/chest-xray-pneumonia`).

The download nests a full duplicate of itself (`chest_xray/chest_xray/`) and a `__MACOSX/` tree of
AppleDouble files; only one copy is read. The official `val/` holds 16 images, too few to select a
model on, so it is folded into train and validation is carved from train, grouped by patient.
"""

from __future__ import annotations

import re
from pathlib import Path

from medssl.data.files import child, subdirs
from medssl.data.folder import has_class_folders, scan_class_folders
from medssl.data.registry import DatasetAdapter, ReadOptions, SampleTable, make_samples, register

# Pneumonia: person<N>_bacteria_<M>.jpeg and person<N>_virus_<M>.jpeg, one patient N whatever the
# organism. Normal: IM-<N>-<M>.jpeg and NORMAL2-IM-<N>-<M>.jpeg, one patient N with or without the
# prefix (the safe reading: a split that merges two patients loses nothing, one that parts a
# patient's images leaks).
_PATIENT = re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+", re.IGNORECASE)
_NORMAL = re.compile(r"^(?:NORMAL2-)?(IM-\d+)-\d+", re.IGNORECASE)


def patient_of(path: Path) -> str | None:
    """`person<N>` or `im-<N>`; None for a name that follows neither pattern."""
    m = _PATIENT.match(path.name) or _NORMAL.match(path.name)
    return m.group(1).lower() if m else None


@register
class ChestXrayDataset(DatasetAdapter):
    name = "chest_xray"
    title = "Chest X-ray pneumonia"
    classes = ["NORMAL", "PNEUMONIA"]
    download = "https://www.kaggle.com/datasets/paultimothymooney/chest-xray-pneumonia"
    expected_tree = """
chest_xray/
  train/{NORMAL,PNEUMONIA}/*.jpeg    1341/3875
  val/{NORMAL,PNEUMONIA}/*.jpeg      8/8 (folded into train)
  test/{NORMAL,PNEUMONIA}/*.jpeg     234/390
  chest_xray/...  and  __MACOSX/...  (duplicates in the download; ignored)
"""
    official_test = True
    grouping = ("patient: person<N> in pneumonia file names (bacteria and virus alike), IM-<N> in "
                "normal ones (with or without the NORMAL2- prefix)")

    def is_root(self, path: Path) -> bool:
        train, test = child(path, "train"), child(path, "test")
        return bool(train and test and has_class_folders(train, self.classes))

    def only_its_classes(self, root: Path) -> bool:
        known = {c.lower() for c in self.classes}
        return all(d.name.lower() in known for d in subdirs(child(root, "train")))

    def read(self, root: Path, options: ReadOptions) -> SampleTable:
        rows, problems, notes = [], [], []
        for folder_name, split in (("train", "train"), ("val", "train"), ("test", "test")):
            folder = child(root, folder_name)
            if folder is None:
                continue
            r, p, _ = scan_class_folders(root, folder, split, self.classes, group_of=patient_of)
            rows, problems = rows + r, problems + p
            if folder_name == "val":
                notes.append(f"the official val/ ({len(r)} images) is folded into train; "
                             "validation is carved from train, grouped by patient")
        nested = child(root, "chest_xray")
        if nested is not None and self.is_root(nested):
            notes.append("ignored the duplicate tree chest_xray/chest_xray/")
        return SampleTable(self.name, root, list(self.classes), make_samples(rows), problems, notes)
