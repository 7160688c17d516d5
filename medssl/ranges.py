"""The values every number a user sets may take: one table (`RANGES`), read by the command line's
flag types when a flag is parsed (`flag_type`) and by `check_values` when a configuration made in
Python, or by `compare`, is resolved, so a range is written once and both paths refuse alike.

A method's settings (`--method-opt`) are ranged by their kind (`method_setting`), judged by the
setting's default: its methods define their settings, not this table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, is_dataclass

from medssl.errors import MedsslError

INF = math.inf


@dataclass(frozen=True)
class Range:
    """An interval of numbers, closed unless said open; `whole` for counts; `why` says what the
    value is, for the message; `example` a value the fix suggests."""

    low: float = -INF
    high: float = INF
    low_open: bool = False
    high_open: bool = False
    whole: bool = False
    why: str = ""
    example: str = ""

    def text(self) -> str:
        """The interval as a reader writes it: [0, 4294967295], (0, 1], at least 2."""
        low, high = _number(self.low), _number(self.high)
        if self.high == INF:
            return f"above {low}" if self.low_open else f"at least {low}"
        return ("(" if self.low_open else "[") + f"{low}, {high}" + (")" if self.high_open else "]")

    def problem(self, value) -> str | None:
        """Why `value` lies outside (None when it lies inside)."""
        where = f"must be {self.text()}" if self.high == INF else f"must lie in {self.text()}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            return f"not a finite number ({where.replace('must', 'it must')})"
        if self.whole and not float(value).is_integer():
            return "not a whole number"
        below = value <= self.low if self.low_open else value < self.low
        above = value >= self.high if self.high_open else value > self.high
        return where if below or above else None

    def parse(self, text: str) -> int | float:
        """`text` as this range's kind of number, or ValueError naming the value and the range."""
        try:
            value = int(text) if self.whole else float(text)
        except ValueError:
            kind = "a whole number" if self.whole else "a number"
            raise ValueError(f"'{text}' is not {kind}") from None
        problem = self.problem(value)
        if problem:
            raise ValueError(f"{text}: {problem}" + (f" ({self.why})" if self.why else "") +
                             (f"; e.g. {self.example}" if self.example else ""))
        return value


def _number(x: float) -> str:
    """A bound as typed: 4294967295, not 4.29497e+09; 0.5, 1e-06."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


_SEED = Range(0, 2 ** 32 - 1, whole=True, example="0 1 2",
              why="seeds are whole numbers from 0, below 2**32 as numpy's")
_FRACTION = Range(0, 1, low_open=True, high_open=True, example="0.15",
                  why="a share of the images, strictly between 0 and 1")
_LR = Range(0, low_open=True, example="1e-3 (SimCLR) or 1e-5 (finetuning a pretrained network)",
            why="a learning rate")

# Each number a user sets, by its name in the configuration parts (medssl.options) or, for an
# environment variable, its name. The CLI's flag of a field is --<name with dashes>.
RANGES: dict[str, Range] = {
    "seed": _SEED,
    "seeds": _SEED,
    "split_seed": _SEED,
    "val_fraction": _FRACTION,
    "test_fraction": _FRACTION,
    "label_fraction": Range(0, 1, low_open=True, example="0.1",
                            why="the share of labelled train images to finetune on"),
    "label_fractions": Range(0, 1, low_open=True, example="1.0 0.1",
                             why="shares of labelled train images to finetune on"),
    "epochs": Range(1, whole=True, example="100"),
    # BatchNorm in training mode normalises over the batch: one image per batch has no variance.
    "batch_size": Range(2, whole=True, example="32",
                        why="training needs two or more images per batch: BatchNorm normalises "
                        "over the batch"),
    "image_size": Range(1, whole=True, example="224", why="pixels per side"),
    # 1 or 3: the CLI offers those two as choices, and models.backbones refuses a 2
    "in_channels": Range(1, 3, whole=True, example="3",
                         why="the backbone's input channels: 1 (grey) or 3 (RGB)"),
    "lr": _LR,
    "lr_grid": _LR,
    "weight_decay": Range(0, example="1e-6"),
    "warmup_epochs": Range(0, whole=True, example="10"),
    "freeze_epochs": Range(0, whole=True, example="0"),
    "kd_temperature": Range(0, low_open=True, example="4", why="softens both models' outputs"),
    "kd_alpha": Range(0, 1, example="0.9", why="the teachers' share of the loss"),
    "equivalence_margin": Range(0, 100, low_open=True, high_open=True, example="2",
                                why="a difference in points of the primary metric"),
    "checkpoint_interval": Range(0, example="60", why="seconds between saves"),
    "num_workers": Range(0, whole=True, example="4"),
    "workers": Range(1, whole=True, example="2"),
    "num_nodes": Range(1, whole=True, example="1"),
    # experiments.launch: how many cells at once, and what each asks of a cluster
    "jobs": Range(1, whole=True, example="2"),
    "devices_per_job": Range(1, whole=True, example="1"),
    "slurm_time": Range(1, whole=True, example="240", why="minutes"),
    "slurm_gpus_per_job": Range(0, whole=True, example="1"),
    "slurm_cpus_per_job": Range(1, whole=True, example="8"),
    "slurm_max_parallel": Range(1, whole=True, example="16"),
    "min_gain": Range(-100, 100, example="1",
                      why="points of the val read-outs over a random init of the network"),
    "MEDSSL_MAX_IMAGE_PIXELS": Range(1, whole=True, example="178956970",
                                     why="the most pixels one image may have"),
}


def flag_of(name: str, prefix: str = "") -> str:
    """The CLI flag of a configuration field: --split-seed, --ssl-lr."""
    return "--" + (prefix + name).replace("_", "-")


def method_setting(key: str, default) -> Range:
    """The range of one of a method's settings, by its default's kind: a count (an int default)
    is whole, at least 1 for sizes (dims, prototypes, the queue), else at least 0; a rate (a float
    default) is above 0, and a momentum at most 1."""
    example = f"{key}={default}"
    if isinstance(default, int):
        sizes = key.endswith("_dim") or key in ("prototypes", "queue_size")
        return Range(1 if sizes else 0, whole=True, example=example, why=f"{key} is a count")
    if "momentum" in key:
        return Range(0, 1, low_open=True, example=example, why=f"{key} is a momentum")
    return Range(0, low_open=True, example=example, why=f"{key} is a rate")


def ranged_values(obj, prefix: str = ""):
    """(name, flag, value) for every set value of the dataclass `obj` (and of its parts) that the
    table ranges; a list gives each of its items."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value) and not isinstance(value, type):
            # compare's parts: the pretraining recipe's flags carry the ssl- prefix
            yield from ranged_values(value, "ssl-" if f.name == "ssl" else prefix)
        elif f.name in RANGES and value is not None:
            for item in value if isinstance(value, (list, tuple)) else [value]:
                yield f.name, flag_of(f.name, prefix), item


def check_value(name: str, value, flag: str | None = None) -> None:
    """Refuse `value` outside the range of `name`, naming its flag, the value and the fix."""
    rng = RANGES[name]
    why = rng.problem(value)
    if why:
        shown = value if why.startswith("not a finite") else _number(value)  # -1, not -1.0
        raise MedsslError(f"{flag or flag_of(name)} {shown}: {why}" +
                          (f" ({rng.why})" if rng.why else "") +
                          (f". Fix: a value such as {rng.example}." if rng.example else "."))


def check_values(cfg) -> None:
    """Refuse the first value of `cfg` (a configuration dataclass) outside its range: what the
    CLI refuses at parse, refused for a configuration made in Python or by `compare` too."""
    for name, flag, value in ranged_values(cfg):
        check_value(name, value, flag)
