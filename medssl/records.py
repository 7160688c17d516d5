"""The two records a run leaves, as typed contracts: `metrics.json` of a finetuning run
(RunRecord) and `backbone.json` beside a pretrained `backbone.pt` (BackboneRecord).

Each file is a JSON object whose keys are its record's fields, in field order, `schema` first.
Every reader and writer goes through here:

- a file written before `schema` existed reads as schema 1, and a key it lacks (older runs
  recorded less) takes its field's default;
- a key no field holds is ignored with a warning;
- a file of a newer schema, and one that is not a JSON object, are refused with a MedsslError
  naming the file and the fix (UnreadableRecord for a file that is no record at all: not
  readable, not JSON, not an object).

Torch-free, at the bottom of the package beside names, options and errors.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path

from medssl.atomic import atomic_write
from medssl.errors import MedsslError

log = logging.getLogger("medssl")

SCHEMA = 1  # the version of both records; a reader refuses a file of a newer one
METRICS = "metrics.json"  # a finetuning run's record, in its run folder
BACKBONE_JSON = "backbone.json"  # a pretraining's record, beside its backbone.pt

FIX_RUN = ("Fix: finetune that run again (the same command with --force), or remove its folder "
           "(`medssl compare --resume` then runs it again).")
FIX_BACKBONE = ("Fix: use the backbone.json that `medssl pretrain` wrote beside the backbone, or "
                "pretrain again.")


class UnreadableRecord(MedsslError):
    """The file is no record at all: unreadable, not JSON, not a JSON object, or its schema is
    not a version number. (A newer schema or an unknown key is a plain MedsslError.)"""


class _Record:
    """What both records share: the dict and JSON they are written as, and the checks of a
    dict read back."""

    OMIT_IF_NONE: tuple[str, ...] = ()  # fields left out of the file while None
    WRITER = "medssl"  # the command that writes the file, for messages

    def to_dict(self, keys=None) -> dict:
        """The record as written: fields in order, `schema` first; those of OMIT_IF_NONE left
        out while None; with `keys`, only those fields (and `schema`)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in self.OMIT_IF_NONE and value is None:
                continue
            if keys is None or f.name == "schema" or f.name in keys:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict, where: str = "the record"):
        """The record of a dict read back (`where`: the file, for messages). Missing keys take
        their defaults; a newer schema or an unknown key is refused."""
        if not isinstance(data, dict):
            raise UnreadableRecord(f"{where} holds a JSON {type(data).__name__}, not the object "
                                   f"{cls.WRITER} writes. {cls._fix()}")
        schema = data.get("schema", 1)  # written before `schema` existed: 1
        if isinstance(schema, bool) or not isinstance(schema, int) or schema < 1:
            raise UnreadableRecord(f"{where} has schema {schema!r}, not a version number. "
                                   f"{cls._fix()}")
        if schema > SCHEMA:
            raise MedsslError(f"{where} has record schema {schema}, newer than this medssl "
                              f"reads ({SCHEMA}): a newer medssl wrote it. Fix: upgrade medssl "
                              "to read it, or make it again with this version.")
        # A key no field holds (a note added by hand, another tool's) was read past before
        # records existed, and still is: said, not refused.
        known = {f.name for f in fields(cls)}
        unknown = [key for key in data if key not in known]
        if unknown:
            log.warning("%s: %s not part of a %s; ignored", where,
                        ", ".join(map(repr, unknown)), cls.__name__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def _fix(cls) -> str:
        return FIX_RUN


@dataclass(kw_only=True)
class RunRecord(_Record):
    """metrics.json: what a finetuning run trained, how, and what it scored. The writer
    (training.finetune_results.RunResults.write; lr_search.adopt adds the search) sets every field; a field's default is what a file that lacks its key
    means (runs made before it was recorded, or files a test writes by hand)."""

    OMIT_IF_NONE = ("base_models", "lr_search")
    WRITER = "`medssl finetune`"

    schema: int = SCHEMA  # the version of this record's layout
    dataset: str | None = None  # the dataset's name (covid19, ham10000, ...)
    model: str | None = None  # the model's name in the table: M1, M2-byol, KD(M3→M1), DML(...)
    protocol: str = "finetune"  # or a frozen protocol: linear, knn (training.frozen)
    seed: int | None = None  # the finetuning seed
    label_fraction: float | None = None  # the share of labelled train images used
    labelled_train_images: int | None = None  # how many train images that share is
    selection: dict = field(default_factory=dict)  # how the checkpoint was chosen on val
    epochs_trained: int | None = None  # epochs run (early stopping may end sooner)
    classes: list | None = None  # the class names, in the order of the outputs
    world_size: int | None = None  # processes that trained it (DDP)
    lr: float | None = None  # the learning rate asked for (None: a cohort of several)
    lr_used: float | None = None  # that rate scaled to the global batch
    lr_scaling: str | None = None  # the scaling rule applied (linear, sqrt, none)
    lr_schedule: str | None = None  # constant or cosine
    train: dict = field(default_factory=dict)  # metrics on the labelled train images
    val: dict = field(default_factory=dict)  # metrics on the val images used for selection
    test: dict = field(default_factory=dict)  # metrics on test, at the selected checkpoint
    test_last: dict = field(default_factory=dict)  # metrics on test, at the last epoch
    objective: dict = field(default_factory=dict)  # plain, distillation or mutual, and settings
    base_models: list | None = None  # what a KD/DML model is compared with (else left out)
    lr_selected: float | None = None  # the rate an lr search chose (None: not searched)
    lr_grid: list | None = None  # the rates that search tried
    lr_search: dict | None = None  # that search's record (left out when none ran)
    overfitting: dict = field(default_factory=dict)  # train-val gaps, val loss rise
    compute: dict = field(default_factory=dict)  # images seen and GPU-hours, pre- and finetuning
    prior: dict = field(default_factory=dict)  # where the starting weights came from
    split_file: str | None = None  # the run's split, relative to its folder (split.csv)
    data: dict = field(default_factory=dict)  # what preparing the data found (duplicates, ...)
    medssl_version: str | None = None  # the medssl that wrote it
    wall_time_s: float | None = None  # seconds the run took
    config: dict = field(default_factory=dict)  # the run's whole FinetuneConfig

    @classmethod
    def from_dict(cls, data: dict, where: str = "the record") -> RunRecord:
        if isinstance(data, dict) and "lr" not in data and isinstance(data.get("config"), dict):
            data = {**data, "lr": data["config"].get("lr")}  # runs before `lr`: the config's
        return super().from_dict(data, where)


@dataclass(kw_only=True)
class BackboneRecord(_Record):
    """backbone.json: how a backbone was pretrained. The writer (training.pretrain) sets every
    field; a default is what a file that lacks the key means (older or hand-made files)."""

    WRITER = "`medssl pretrain`"

    schema: int = SCHEMA  # the version of this record's layout
    method: str = "simclr"  # the SSL method (backbones from before the methods were SimCLR's)
    method_title: str | None = None  # its name in words (SimCLR, MoCo v2, ...)
    method_settings: dict | None = None  # the settings it trained with (after fitting)
    method_settings_asked: dict | None = None  # its defaults with the user's --method-opt
    method_source: str | None = None  # where its recipe comes from (SSLMethod.source)
    supervised: bool = False  # whether it learned from labels (supcon)
    label_fraction: float = 1.0  # the share of labelled train images a supervised method saw
    labelled_train_images: int | None = None  # how many (0 for a self-supervised method)
    views: list | None = None  # the crops of each view: size, scale, colour
    warmup_epochs_used: float | None = None  # learning-rate warmup epochs
    arch: str | None = None  # the torchvision ResNet (resnet18, ...)
    init: str | None = None  # the weights before SSL: random or imagenet
    dataset: str | None = None  # the dataset it was pretrained on
    imagenet_weights: str | None = None  # the ImageNet weights file (init imagenet)
    image_size: int | None = None  # pixels of a side
    in_channels: int = 3  # the input channels: 1 for a grey stem
    stem_adapted: str | None = None  # how ImageNet's RGB stem was fitted to them, if it was
    # the foundation prior it started from (init: its label): weights file, license, input size
    foundation: dict | None = None
    normalize: dict | None = None  # the mean and std of the input normalisation, per channel
    epochs: int | None = None  # epochs run
    epochs_planned: int | None = None  # epochs asked of the Trainer (epochs_from says why)
    epochs_from: str | None = None  # flag, preset, or min_steps (the preset's raised)
    steps: int | None = None  # optimiser steps run
    images_seen: int | None = None  # images through the network in training
    gpu_hours: float | None = None  # GPU-hours (None on a CPU: not measured)
    batch_size: int | None = None  # per process
    world_size: int | None = None  # processes (DDP)
    global_batch_size: int | None = None  # over all processes
    lr: float | None = None  # the learning rate asked for
    lr_used: float | None = None  # that rate scaled to the global batch
    lr_scaling: str | None = None  # the scaling rule applied
    optimizer: str | None = None  # adam, sgd or lars
    weight_decay: float | None = None  # the optimiser's weight decay
    optimizer_from: str | None = None  # who chose it: flag, method or study
    augment: str | None = None  # the augmentation preset
    augment_overrides: dict | None = None  # the user's changes to it
    augmentation: dict | None = None  # the augmentation settings used
    final_loss: float | None = None  # the last epoch's loss
    final_knn_acc: float | None = None  # kNN accuracy on val after training
    final_fewshot_acc: float | None = None  # few-shot accuracy on val after training
    final_knn_balanced_acc: float | None = None  # kNN balanced accuracy after training
    final_fewshot_balanced_acc: float | None = None  # few-shot balanced accuracy after training
    initial_knn_acc: float | None = None  # kNN accuracy on val before training
    initial_fewshot_acc: float | None = None  # few-shot accuracy before training
    initial_knn_balanced_acc: float | None = None  # kNN balanced accuracy before training
    initial_fewshot_balanced_acc: float | None = None  # few-shot balanced accuracy before
    random_knn_acc: float | None = None  # kNN accuracy of a random init of the network
    random_fewshot_acc: float | None = None  # few-shot accuracy of a random init
    random_knn_balanced_acc: float | None = None  # kNN balanced accuracy of a random init
    random_fewshot_balanced_acc: float | None = None  # few-shot balanced accuracy of one
    # Points over the random init: the mean of the balanced kNN and few-shot gains (knn.readout_gain)
    readout_gain: float | None = None
    learned: bool | None = None  # readout_gain above 0 (None: not measured, older files)
    seed: int | None = None  # the pretraining seed
    split_file: str = "split.csv"  # its split, relative to its folder
    data: dict = field(default_factory=dict)  # what preparing the data found (duplicates, ...)
    medssl_version: str | None = None  # the medssl that wrote it
    wall_time_s: float | None = None  # seconds the run took
    config: dict | None = None  # the run's PretrainConfig

    @classmethod
    def _fix(cls) -> str:
        return FIX_BACKBONE


def _load(path: Path, cls) -> dict:
    """The JSON object a record file holds, or UnreadableRecord naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UnreadableRecord(f"{path} is not a readable JSON file ({exc}). "
                               f"{cls._fix()}") from None


def _write(path: Path, data: dict, **dumps) -> Path:
    text = json.dumps(data, indent=2, **dumps)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def run_record_path(folder: Path) -> Path:
    return Path(folder) / METRICS


def write_run_record(folder: Path, record: RunRecord) -> Path:
    """`folder`/metrics.json, atomically; returns its path."""
    if not isinstance(record, RunRecord):
        raise TypeError(f"write_run_record takes a RunRecord, not a {type(record).__name__}")
    return _write(run_record_path(folder), record.to_dict())


def read_run_record(folder: Path) -> RunRecord:
    """The RunRecord of the run in `folder` (its metrics.json)."""
    path = run_record_path(folder)
    return RunRecord.from_dict(_load(path, RunRecord), str(path))


def backbone_record_path(backbone_pt: Path) -> Path:
    """The JSON beside a weights file: backbone.pt -> backbone.json (a .json path stays)."""
    return Path(backbone_pt).with_suffix(".json")


def write_backbone_record(backbone_pt: Path, record: BackboneRecord, keys=None) -> Path:
    """The JSON beside `backbone_pt`, atomically; returns its path. `keys`: write only those
    fields (what a hand-made dict named), else all."""
    if not isinstance(record, BackboneRecord):
        raise TypeError(f"write_backbone_record takes a BackboneRecord, not a "
                        f"{type(record).__name__}")
    return _write(backbone_record_path(backbone_pt), record.to_dict(keys), default=str)


def read_backbone_record(backbone_pt: Path) -> BackboneRecord:
    """The BackboneRecord beside `backbone_pt` (or of that .json)."""
    return BackboneRecord.from_dict(*_backbone_data(backbone_pt))


def read_backbone_dict(backbone_pt: Path) -> dict:
    """The keys the JSON beside `backbone_pt` holds, as written (without `schema`), checked as
    read_backbone_record checks them: for readers that ask whether a key was recorded."""
    data, where = _backbone_data(backbone_pt)
    BackboneRecord.from_dict(data, where)
    return {k: v for k, v in data.items() if k != "schema"}


def _backbone_data(backbone_pt: Path) -> tuple[dict, str]:
    path = backbone_record_path(backbone_pt)
    return _load(path, BackboneRecord), str(path)
