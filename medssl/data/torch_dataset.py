"""A torch Dataset over rows of a sample table: (transformed uint8 CHW image, class index).

Images come from the preprocessed cache (`ImageCache`), or, without one, are decoded from the
originals each time into the same picture (short side `side`, aspect ratio kept). Either way the transform sees a uint8 tensor; turning it
into normalised floats (and SimCLR's colour and blur) happens per batch on the accelerator.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch.utils.data import Dataset

from medssl.data.cache import ImageCache, shrink
from medssl.data.registry import SampleTable
from medssl.data.sampling import stream_seed


class ImageDataset(Dataset):
    def __init__(self, table: SampleTable, rows: str | pd.DataFrame | None, transform, side: int,
                 cache: ImageCache | None = None, augment_seed: int | None = None,
                 channels: int = 3):
        """`rows`: a split name, a subset of `table.samples`, or None for every sample the
        duplicate policy did not leave out.
        `augment_seed`: seed the transform of index `epoch * len + i` by (seed, epoch, i), so a
        sample's augmentation does not depend on workers or on where a run was resumed."""
        if rows is None:
            rows = table.samples[table.samples["split"] != "excluded"]
        elif isinstance(rows, str):
            rows = table.samples[table.samples["split"] == rows]
        self.rel_paths = list(rows["path"])
        self.root = table.root
        index = {c: i for i, c in enumerate(table.classes)}
        self.targets = [index[label] for label in rows["label"]]
        self.transform, self.side, self.cache = transform, side, cache
        self.window, self.channels = table.window, channels  # 1: grey pictures, one channel
        self.augment_seed = augment_seed

    def __len__(self) -> int:
        return len(self.rel_paths)

    def image(self, i: int) -> torch.Tensor:
        """Image i as a uint8 CHW tensor (C: `channels`) whose short side is `side`."""
        rel = self.rel_paths[i]
        pixels = self.cache.get(rel) if self.cache else shrink(self.root / rel, self.side,
                                                                  window=self.window,
                                                                  channels=self.channels)
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1)

    def __getitem__(self, k: int):
        epoch, i = divmod(k, len(self))
        if self.augment_seed is None:
            return self.transform(self.image(i)), self.targets[i]
        # torchvision's random transforms draw from the global RNG: seed it for this sample only,
        # and leave the process's own stream as it was (with 0 workers this is the main process).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed(self.augment_seed, epoch, i))
            return self.transform(self.image(i)), self.targets[i]
