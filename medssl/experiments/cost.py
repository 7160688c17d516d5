"""What a grid will cost before it runs: each cell's training images (images × epochs × runs) and
the images per second a training step takes, measured.

The rate comes from this grid's finished runs where it has some (their records' images/s), else
from a few training steps of the grid's network at its image size timed here, on this machine's
device, which is said: a login node's CPU says little about a GPU node (run `--dry-run` there,
or after a first cell). Approximations, stated where they are printed: a pretraining step is
counted as two finetuning images (two views) and a frozen protocol's forward pass as a third of a
training image; every network is timed as the grid's --arch.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from medssl.experiments.grid import Cell, extra_runs
from medssl.models.backbones import empty_backbone
from medssl.presets import preset_for
from medssl.records import UnreadableRecord, read_run_record
from medssl.runs import finetune_finished

FORWARD_SHARE = 1 / 3  # a forward pass of a frozen protocol, against a training step's cost


def split_counts(split_file: Path) -> dict[str, int]:
    """Images per split of the grid's split.csv (those left out of training not counted)."""
    split = pd.read_csv(split_file, usecols=["split"], dtype=str)["split"]
    return split.value_counts().to_dict()


def cell_images(cfg, cell: Cell, counts: dict[str, int]) -> float:
    """The training images (forward and backward) a cell's runs go through, in all."""
    preset = preset_for(cfg.dataset)
    train = counts.get("train", 0)
    labelled = max(1, round(train * cell.label_fraction))
    epochs = cfg.recipe.epochs or preset.finetune_epochs
    seeds = len(cfg.seeds) if cell.seed is None else 1
    if cell.kind == "pretrain":
        batch = cfg.ssl.batch_size or preset.ssl_batch_size
        share = labelled if cell.label_fraction < 1 else train
        epochs = cfg.ssl.epochs or max(preset.ssl_epochs, math.ceil(
            preset.ssl_min_steps / max(1, share // batch)))
        return 2.0 * epochs * share  # two views of every image
    if cell.kind == "frozen":
        return seeds * sum(counts.values()) * FORWARD_SHARE
    rates = len(cfg.recipe.lr_grid or [None]) if cell.kind == "finetune" else 1
    models = next((len(needed) for name, needed, _ in extra_runs(cfg) if name == cell.model), 1)
    return seeds * rates * epochs * labelled * (models if cell.kind == "extra" else 1)


def measured_rate(base: Path) -> float | None:
    """The median images/s of this grid's finished finetuning runs, None before any."""
    rates = []
    for metrics in Path(base).glob("**/metrics.json"):
        run = metrics.parent
        if not finetune_finished(run):
            continue
        try:
            rate = (read_run_record(run).compute or {}).get("images_per_s")
        except UnreadableRecord:
            continue
        if rate:
            rates.append(float(rate))
    return statistics.median(rates) if rates else None


def timed_rate(cfg, steps: int = 3, batch: int = 8) -> tuple[float, str]:
    """Training images per second of the grid's network here: `steps` timed after one warm-up."""
    device = "cuda" if torch.cuda.is_available() and cfg.accelerator != "cpu" else "cpu"
    size = cfg.image_size or preset_for(cfg.dataset).image_size
    model = torch.nn.Sequential(empty_backbone(cfg.arch, cfg.in_channels, size),
                                torch.nn.LazyLinear(2)).to(device)
    x = torch.randn(batch, cfg.in_channels, size, size, device=device)
    model(x)  # the head's size, before the optimiser takes its parameters
    y = torch.zeros(batch, dtype=torch.long, device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    for i in range(steps + 1):
        if i == 1:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    name = torch.cuda.get_device_name() if device == "cuda" else "this machine's CPU"
    return steps * batch / (time.perf_counter() - start), f"timed here on {name}, {cfg.arch} at " \
        f"{size} px, batch {batch}"


def grid_cost(cfg, base: Path, split_file: Path,
              cells: list[Cell]) -> tuple[dict[str, float], float, str]:
    """(cell -> training images, images/s, where that rate comes from)."""
    counts = split_counts(split_file)
    images = {c.name: cell_images(cfg, c, counts) for c in cells}
    rate = measured_rate(base)
    if rate:
        return images, rate, "the median of this grid's finished runs"
    rate, how = timed_rate(cfg)
    return images, rate, how
