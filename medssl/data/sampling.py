"""Seeded sampling: which images an epoch draws, and the seed each draw's augmentation gets.

Both depend only on (seed, epoch, index), never on how many workers there are or where a run
was interrupted and resumed, so a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


def stream_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (seed, epoch, index or step), the same everywhere."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + int(part)) % (2**63 - 1)
    return value


class EpochSampler(Sampler):
    """Shuffled (or class-balanced) indices whose order depends only on (seed, epoch).

    Lightning calls `set_epoch` before each epoch, so a run resumed at epoch k draws exactly what
    an uninterrupted run draws there. Each index comes out as `epoch * n + i`, which tells the
    dataset which epoch it serves: its augmentation is seeded by (seed, epoch, i), the same with
    0 or 8 workers, persistent or not.
    """

    def __init__(self, n: int, seed: int, weights: torch.Tensor | None = None, epoch: int = 0):
        self.n, self.seed, self.weights, self.epoch = n, seed, weights, epoch
        self.served_epoch: int | None = None  # the epoch of the last order handed out

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        self.served_epoch = self.epoch
        g = torch.Generator().manual_seed(stream_seed(self.seed, self.epoch))
        if self.weights is None:
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        return iter((order + self.epoch * self.n).tolist())
