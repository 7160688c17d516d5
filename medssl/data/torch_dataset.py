"""A torch Dataset over rows of a sample table: (transformed uint8 CHW image, class index).

Images come from the preprocessed cache (`ImageCache`), or, without one, are decoded from the
originals each time into the same square. Either way the transform sees a uint8 tensor; turning it
into normalised floats (and SimCLR's colour and blur) happens per batch on the accelerator.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch.utils.data import Dataset

from medssl.data.cache import ImageCache, square
from medssl.data.registry import SampleTable


class ImageDataset(Dataset):
    def __init__(self, table: SampleTable, rows: str | pd.DataFrame | None, transform, side: int,
                 cache: ImageCache | None = None):
        """`rows`: a split name, a subset of `table.samples`, or None for every sample."""
        if rows is None:
            rows = table.samples
        elif isinstance(rows, str):
            rows = table.samples[table.samples["split"] == rows]
        self.rel_paths = list(rows["path"])
        self.root = table.root
        index = {c: i for i, c in enumerate(table.classes)}
        self.targets = [index[label] for label in rows["label"]]
        self.transform, self.side, self.cache = transform, side, cache

    def __len__(self) -> int:
        return len(self.rel_paths)

    def image(self, i: int) -> torch.Tensor:
        """Image i as a uint8 CHW tensor of `side x side`."""
        rel = self.rel_paths[i]
        pixels = self.cache.get(rel) if self.cache else square(self.root / rel, self.side)
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1)

    def __getitem__(self, i: int):
        return self.transform(self.image(i)), self.targets[i]
