"""A torch Dataset over rows of a sample table: (transformed image, class index)."""

from __future__ import annotations

import pandas as pd
from torch.utils.data import Dataset

from medssl.data.images import load_rgb
from medssl.data.registry import SampleTable


class ImageDataset(Dataset):
    def __init__(self, table: SampleTable, rows: str | pd.DataFrame | None, transform,
                 min_side: int | None = None):
        """`rows`: a split name, a subset of `table.samples`, or None for every sample."""
        if rows is None:
            rows = table.samples
        elif isinstance(rows, str):
            rows = table.samples[table.samples["split"] == rows]
        self.rel_paths = list(rows["path"])
        self.paths = [str(table.root / p) for p in self.rel_paths]
        index = {c: i for i, c in enumerate(table.classes)}
        self.targets = [index[label] for label in rows["label"]]
        self.transform = transform
        # JPEGs decode in draft mode at no less than this short side (much faster for big files).
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(load_rgb(self.paths[i], self.min_side)), self.targets[i]
