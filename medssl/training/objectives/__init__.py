"""Finetuning objectives, registered by name: one file each (plain cross-entropy; knowledge
distillation; deep mutual learning). The classifier calls its objective on every training
batch; every reported loss stays plain cross-entropy, so runs with different objectives compare.

Each objective says which finetuning option selects it (`selected_by`: `teachers` for
distillation, `mutual` for a cohort; plain cross-entropy when none is set) and builds itself for a
run (`for_run(cfg, table)`, returning the objective and its record for metrics.json), so a run
picks its objective through this registry (`objective_for`), never by name in the caller.

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


def objective_for(cfg, table):
    """The objective the run's options select, built for it, and its record: the one whose
    `selected_by` option is set (two set at once are refused by finetune.check_members), else
    the plain one."""
    for name in _MODULES:
        get_objective(name)
    chosen = [cls for cls in OBJECTIVES.values()
              if cls.selected_by and getattr(cfg, cls.selected_by, None)]
    return (chosen[0] if chosen else OBJECTIVES["plain"]).for_run(cfg, table)


__all__ = ["OBJECTIVES", "get_objective", "objective_for", "register"]
