"""Skin Cancer ISIC, 9 classes (Kaggle `nodoubttome/skin-cancer9-classesisic`): Train/ and Test/."""

from __future__ import annotations

from pathlib import Path

from medssl.data.files import child
from medssl.data.folder import has_class_folders, scan_class_folders
from medssl.data.registry import DatasetAdapter, ReadOptions, SampleTable, make_samples, register


@register
class IsicDataset(DatasetAdapter):
    name = "isic"
    title = "Skin Cancer ISIC"
    classes = ["actinic keratosis", "basal cell carcinoma", "dermatofibroma", "melanoma", "nevus",
               "pigmented benign keratosis", "seborrheic keratosis", "squamous cell carcinoma",
               "vascular lesion"]
    download = "https://www.kaggle.com/datasets/nodoubttome/skin-cancer9-classesisic"
    expected_tree = """
Skin cancer ISIC The International Skin Imaging Collaboration/
  Train/<class>/ISIC_xxxxxxx.jpg     2239 images
  Test/<class>/ISIC_xxxxxxx.jpg       118 images
  classes: actinic keratosis, basal cell carcinoma, ... , vascular lesion
"""
    official_test = True
    grouping = "none in the download (no lesion or patient ids): every image is its own group"
    image_id_pattern = r"ISIC_\d+"

    def is_root(self, path: Path) -> bool:
        train, test = child(path, "Train"), child(path, "Test")
        return bool(train and test and has_class_folders(train, self.classes))

    def read(self, root: Path, options: ReadOptions) -> SampleTable:
        rows, problems, copies = [], [], 0
        for split, folder in (("train", child(root, "Train")), ("test", child(root, "Test"))):
            r, p, c = scan_class_folders(root, folder, split, self.classes, drop_copies=True)
            rows, problems, copies = rows + r, problems + p, copies + c
        notes = [f"ignored {copies} re-upload copies named like 'x(1).jpg' beside 'x.jpg'"] if copies else []
        return SampleTable(self.name, root, list(self.classes), make_samples(rows), problems, notes)
