"""Seeded sampling: which images an epoch draws, and the seed each draw's augmentation gets.

Both depend only on (seed, epoch, index), never on how many workers there are or where a run
was interrupted and resumed, so a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler


def shard() -> tuple[int, int]:
    """(rank, world size) of this process in a distributed run, (0, 1) otherwise. Asked when
    a loader iterates, so it is the process group's answer, set up by then."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def stream_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (seed, epoch, index or step), the same everywhere."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + int(part)) % (2**63 - 1)
    return value


class EpochSampler(Sampler):
    """Shuffled (or class-balanced) indices whose order depends only on (seed, epoch); in a
    distributed run, this process's share of that order.

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
        return math.ceil(self.n / shard()[1])

    def __iter__(self):
        self.served_epoch = self.epoch
        g = torch.Generator().manual_seed(stream_seed(self.seed, self.epoch))
        if self.weights is None:
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        # Several processes: each takes every world-th index of the one epoch order, padded by
        # wrapping around to equal shares, as torch's DistributedSampler does.
        rank, world = shard()
        if world > 1:
            order = torch.cat([order, order[: len(self) * world - self.n]])[rank::world]
        return iter((order + self.epoch * self.n).tolist())


class ShardSampler(Sampler):
    """Evaluation order (0..n-1), split across processes without padding, so that metrics
    reduced over the processes count every image exactly once."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        rank, world = shard()
        return len(range(rank, self.n, world))

    def __iter__(self):
        rank, world = shard()
        return iter(range(rank, self.n, world))
