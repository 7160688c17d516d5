"""Covid19 chest X-ray, 3 classes (Kaggle `pranavraikokte/covid19-image-dataset`)."""

from __future__ import annotations

from pathlib import Path

from medssl.data.files import child, subdirs
from medssl.data.folder import has_class_folders, scan_class_folders
from medssl.data.registry import DatasetAdapter, ReadOptions, SampleTable, make_samples, register


@register
class Covid19Dataset(DatasetAdapter):
    name = "covid19"
    title = "Covid19 chest X-ray image dataset"
    classes = ["Covid", "Normal", "Viral Pneumonia"]
    grouping = "none in the download (no patient ids): every image is its own group"
    download = "https://www.kaggle.com/datasets/pranavraikokte/covid19-image-dataset"
    expected_tree = """
Covid19-dataset/
  train/{Covid,Normal,Viral Pneumonia}/*.jpeg|jpg|png     111/70/70
  test/{Covid,Normal,Viral Pneumonia}/*.jpeg|jpg|png       26/20/20
"""
    official_test = True

    def is_root(self, path: Path) -> bool:
        train, test = child(path, "train"), child(path, "test")
        return bool(train and test and has_class_folders(train, self.classes))

    def only_its_classes(self, root: Path) -> bool:
        known = {c.lower() for c in self.classes}
        return all(d.name.lower() in known for d in subdirs(child(root, "train")))

    def read(self, root: Path, options: ReadOptions) -> SampleTable:
        rows, problems = [], []
        for split in ("train", "test"):
            r, p, _ = scan_class_folders(root, child(root, split), split, self.classes)
            rows, problems = rows + r, problems + p
        return SampleTable(self.name, root, list(self.classes), make_samples(rows), problems)
