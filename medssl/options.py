"""The parts every configuration is composed of. A field is defined once, in its part; the
pretraining, finetuning and grid configurations inherit the parts they concern, and the CLI and
`compare` copy parts whole (`part_of`), never field by field, so one flag is one edit.

- DataOptions: which images, how they are split, the duplicate policy;
- HardwareOptions: the accelerator, processes, precision, loaders, cache;
- ModelOptions: the backbone and its ImageNet weights;
- SSLOptions: the pretraining recipe (method, optimiser, schedule, augmentation);
- RecipeOptions: the finetuning recipe, the same for every prior;
- AnalysisOptions: how a grid's results are judged (primary endpoint, equivalence margin);
- LaunchOptions: how a grid's cells are run (one after another, in parallel processes, or as
  jobs of a SLURM cluster): never part of what a run is.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass(kw_only=True)
class DataOptions:
    dataset: str
    data_root: str | None = None
    split_seed: int = 0  # seed of the carved val/test splits
    split_file: str | None = None
    val_fraction: float | None = None
    test_fraction: float | None = None
    read_options: object = None  # ReadOptions: csv column names
    duplicates: str = "drop"  # copies of one picture: splits.DUPLICATE_POLICIES
    window: str = "auto"  # DICOM and 16-bit pictures to 8 bits: auto, minmax or C,W (windowing)
    skip_bad_images: bool = False
    workers: int | None = None  # processes that decode images in the check pass (default: all cores)


@dataclass(kw_only=True)
class HardwareOptions:
    accelerator: str = "auto"
    devices: int | str = 1  # per node; more than one (or nodes) runs DDP: docs/distributed.md
    num_nodes: int = 1
    strategy: str = "auto"
    lr_scaling: str = "auto"  # the lr for the global batch (auto: sqrt for Adam, linear for LARS)
    precision: str | None = None
    num_workers: int | None = None
    cache: bool = True  # the preprocessed image cache; False decodes the originals every time
    compile: bool = False  # torch.compile the backbone
    deterministic: bool = False  # deterministic algorithms only (slower on GPUs)
    checkpoint_interval: float = 60.0  # seconds between last.ckpt saves (0: every epoch)
    max_steps: int = -1  # stop after this many optimiser steps (tests); -1: the epochs decide
    progress: bool = True
    # Where the curves are logged, through Lightning's loggers (names.LOGGERS); the CSV log is
    # always written too: the report's curves and overfitting measures are read from it.
    loggers: list[str] = field(default_factory=lambda: ["tensorboard", "csv"])


@dataclass(kw_only=True)
class ModelOptions:
    arch: str | None = None  # unset: the preset's
    image_size: int | None = None
    imagenet_weights: str | None = None  # name or file, for an ImageNet init; default IMAGENET1K_V1
    # The backbone's input channels: 3, or 1 for a grey dataset (a 1-channel stem; ImageNet's
    # first convolution summed over its RGB weights, models.backbones.adapt_stem)
    in_channels: int = 3


@dataclass(kw_only=True)
class SSLOptions:
    method: str = "simclr"  # a name from training.methods (SimCLR: the study's)
    method_options: dict = field(default_factory=dict)  # the method's settings beyond its defaults
    epochs: int | None = None  # unset values: the preset's
    batch_size: int | None = None
    lr: float | None = None
    # Unset: the method's published optimiser with its lr and weight decay where it has one
    # (`SSLMethod.recipe`), else the study's Adam (the preset's lr) and weight decay 1e-6.
    weight_decay: float | None = None
    warmup_epochs: int | None = None
    optimizer: str | None = None
    exclude_bn_bias: bool = False
    augment: str | None = None  # augmentation preset: study or xray (default: the dataset's)
    augment_overrides: dict = field(default_factory=dict)  # lightly SimCLRTransform knobs
    # Refuse a pretraining whose val read-outs gain less than this many points over a random
    # init (None: say so, go on); a judgement of the result, not part of it (MAY_CHANGE).
    min_gain: float | None = None


@dataclass(kw_only=True)
class RecipeOptions:
    epochs: int | None = None  # unset values: the preset's
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 1e-6
    head: str = "linear"
    freeze_epochs: int = 0
    bn_eval: bool = False
    class_weights: bool = False
    balanced_sampling: bool = False
    select: str = "loss"
    full_val: bool = False  # at a label fraction: select on the whole val split, not its fraction
    lr_schedule: str = "constant"  # or cosine
    lr_grid: list[float] | None = None  # choose --lr among these on val
    # Knowledge distillation's objective, where a run has teachers (training.objectives).
    kd_temperature: float = 4.0
    kd_alpha: float = 0.9


@dataclass(kw_only=True)
class AnalysisOptions:
    """Declared before the runs (`compare` writes them to the grid's analysis.json) and read by
    every report of the grid. None: the declared value, else the task's default."""
    primary_metric: str | None = None  # one of names.PRIMARY_CHOICES
    equivalence_margin: float | None = None  # in points (default 2)


@dataclass(kw_only=True)
class LaunchOptions:
    """Where and how many of a grid's cells run at once (experiments.launch). A cell's result is
    the same whichever runs it."""
    jobs: int = 1  # cells at once on this machine, each in its own process
    devices_per_job: int = 1  # GPUs per cell (CUDA_VISIBLE_DEVICES); on the CPU, cores split
    launcher: str | None = None  # None: this machine (--jobs); local or slurm: submitit waves
    slurm_partition: str | None = None
    slurm_time: int = 240  # minutes a cell's job may run before SLURM requeues it
    slurm_gpus_per_job: int = 1
    slurm_cpus_per_job: int = 8
    slurm_account: str | None = None
    slurm_max_parallel: int | None = None  # jobs of one array running at once (None: all)
    dry_run: bool = False  # print the plan (cells, waves, cost) and submit nothing


# The settings that may differ between a run and its resume, or its reuse by `compare`: where
# and how fast it runs, where it writes, how it shows progress. Every other setting is part of
# the run's identity (medssl.identity): changing it means another run.
MAY_CHANGE = frozenset({
    "accelerator", "devices", "num_nodes", "strategy", "deterministic", "compile",  # hardware
    "num_workers", "workers", "cache", "progress", "checkpoint_interval", "loggers",  # logging
    "data_root", "out", "base", "resume", "force", "allow_other_dataset",  # places, run control
    "min_gain",  # how a finished pretraining is judged, not what it is
})


def part_of(obj, *parts) -> dict:
    """The values of `obj` for every field of `parts`, as keyword arguments for another config."""
    return {f.name: getattr(obj, f.name) for part in parts for f in fields(part)}

