"""A torch Dataset over one split of a sample table: (transformed image, class index)."""

from __future__ import annotations

from torch.utils.data import Dataset

from medssl.data.images import load_rgb
from medssl.data.registry import SampleTable


class ImageDataset(Dataset):
    def __init__(self, table: SampleTable, split: str | None, transform, min_side: int | None = None):
        rows = table.samples if split is None else table.samples[table.samples["split"] == split]
        self.paths = [str(table.root / p) for p in rows["path"]]
        index = {c: i for i, c in enumerate(table.classes)}
        self.targets = [index[label] for label in rows["label"]]
        self.transform = transform
        # JPEGs decode in draft mode at no less than this short side (much faster for big files).
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(load_rgb(self.paths[i], self.min_side)), self.targets[i]
