"""Finetuning objectives, registered by name: one file each (plain cross-entropy; knowledge
distillation; deep mutual learning). The classifier calls its objective on every training
batch; every reported loss stays plain cross-entropy, so runs with different objectives compare.

Adding an objective means its file, one line in `_MODULES` below, and its test.
"""

from __future__ import annotations

import importlib

from medssl.errors import MedsslError

OBJECTIVES: dict[str, type] = {}
_MODULES = ("plain", "distillation", "mutual")


def register(cls: type) -> type:
    OBJECTIVES[cls.name] = cls
    return cls


def get_objective(name: str) -> type:
    if name not in _MODULES:
        raise MedsslError(f"Unknown finetuning objective '{name}'. Choose one of: "
                          f"{', '.join(_MODULES)}.")
    importlib.import_module(f"medssl.training.objectives.{name}")
    return OBJECTIVES[name]


__all__ = ["OBJECTIVES", "get_objective", "register"]
