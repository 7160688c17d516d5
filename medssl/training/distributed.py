"""Several GPUs or nodes: what changes, in one place (docs/distributed.md).

Lightning's DDP runs one process per device. Each trains on its own share of every epoch's
order (`data.sampling`), so the global batch is `--batch-size` × world size. SimCLR gathers the
embeddings of every process for its negatives (lightly's NT-Xent, `gather_distributed=True`),
BatchNorm layers become SyncBatchNorm, the learning rate follows the global batch
(`--lr-scaling`), metrics are reduced over processes by torchmetrics, and only rank 0 writes.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from medssl.errors import MedsslError
from medssl.names import LR_SCALING

if TYPE_CHECKING:  # torch is imported where it is used: the CLI starts without it
    import torch



def is_rank_zero() -> bool:
    """Whether this process writes the run's files (the others compute the same, silently).
    Read from what its launcher set, so it is known before torch.distributed starts: torchrun's
    RANK, SLURM's SLURM_PROCID, or Lightning's NODE_RANK and LOCAL_RANK."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"]) == 0
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env["SLURM_PROCID"]) == 0
    return int(env.get("NODE_RANK", "0")) == 0 and int(env.get("LOCAL_RANK", "0")) == 0


def planned_world_size(cfg) -> int:
    """How many processes the Trainer will start (devices per node × nodes), known before it
    starts them; `auto` devices count the visible GPUs where the accelerator may use them."""
    devices = cfg.devices
    if isinstance(devices, str) and "," in devices:
        per_node = len(devices.split(","))
    elif devices == "auto":
        import torch

        gpu = cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        per_node = torch.cuda.device_count() if gpu else 1
    else:
        per_node = int(devices)
    return per_node * cfg.num_nodes


def barrier() -> None:
    """Wait for every process, where there are several: rank 0's files exist after it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def wait_for_rank_zero(path, timeout_s: float = 600) -> None:
    """Before the process group exists (no barrier yet), the other ranks wait for a file that
    rank 0 writes atomically (a grid's shared split)."""
    import time
    from pathlib import Path

    deadline = time.monotonic() + timeout_s
    while not Path(path).is_file():
        if time.monotonic() > deadline:
            raise MedsslError(f"{path} did not appear within {timeout_s:.0f} s; rank 0 writes it. "
                              "Fix: check rank 0's output for its error.")
        time.sleep(0.5)


def gather_shards(local: torch.Tensor, n: int) -> torch.Tensor:
    """All `n` rows in their original order, in every process, from each process's share as
    `data.sampling.ShardSampler` hands it out (rows rank, rank + world, ...)."""
    import torch
    import torch.distributed as dist

    from medssl.data.sampling import shard  # lazy: the CLI imports this module, torch-free

    rank, world = shard()
    if world == 1:
        return local
    shares: list = [None] * world
    dist.all_gather_object(shares, local.cpu())  # any share size, empty ones included
    ref = max(shares, key=len)
    full = torch.empty((n, *ref.shape[1:]), dtype=ref.dtype)
    for r, part in enumerate(shares):
        if len(part):
            full[r::world] = part
    return full


def scaling_rule(rule: str, optimizer: str) -> str:
    """`auto`: the square root for Adam, linear for LARS and SGD. Adam's update is normalised
    by its second moment, so a batch k times larger (gradient noise k times smaller in variance)
    calls for about √k the step (Malladi et al. 2022, Granziol et al. 2022); the linear rule
    (Goyal et al. 2017) is the one for SGD-like optimisers, SimCLR's LARS among them."""
    if rule not in LR_SCALING:
        raise ValueError(f"unknown lr scaling {rule!r}; expected one of {LR_SCALING}")
    if rule == "auto":
        return "sqrt" if optimizer == "adam" else "linear"
    return rule


def scaled_lr(lr: float, world_size: int, rule: str, optimizer: str = "adam") -> float:
    """The learning rate for `world_size` processes, `lr` being the one for a single process
    with the same per-process batch: × world size (linear), × its square root (sqrt), or
    unchanged (none); `auto` chooses by optimiser (`scaling_rule`)."""
    rule = scaling_rule(rule, optimizer)
    factor = {"linear": world_size, "sqrt": math.sqrt(world_size), "none": 1}[rule]
    return lr * factor


def trainer_options(cfg) -> dict:
    """The Trainer arguments for devices, nodes and strategy.

    Lightning's own distributed sampler is off: ours shard themselves and keep the exact
    (seed, epoch) order that resuming relies on. SyncBatchNorm applies under DDP only, and only
    on GPUs (PyTorch has none for the CPU, where DDP serves tests: BatchNorm stays per process)."""
    import torch

    on_gpu = cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return {"devices": cfg.devices, "num_nodes": cfg.num_nodes, "strategy": cfg.strategy,
            "sync_batchnorm": on_gpu, "use_distributed_sampler": False}


def gpu_hours(trainer, seconds: float) -> float | None:
    """Wall time x processes in hours when the run used CUDA GPUs; None elsewhere (not measured)."""
    if trainer.accelerator.__class__.__name__ != "CUDAAccelerator":
        return None
    return seconds * trainer.world_size / 3600
