"""Self-supervised methods, registered by name: one file each, over one base (`base.SSLMethod`).

Adding a method means its file, one line in `_MODULES` below, and its test.
"""

from __future__ import annotations

import importlib

from typing import TYPE_CHECKING

from medssl.errors import MedsslError

if TYPE_CHECKING:  # the CLI lists the names without importing torch
    from medssl.training.methods.base import SSLMethod

METHODS: dict[str, type[SSLMethod]] = {}
# name -> title, known without importing torch (the CLI and model names use them).
TITLES = {"simclr": "SimCLR", "moco": "MoCo v2", "byol": "BYOL", "simsiam": "SimSiam",
          "barlowtwins": "Barlow Twins", "vicreg": "VICReg", "swav": "SwAV", "dino": "DINO",
          "supcon": "SupCon (supervised)"}
_MODULES = tuple(TITLES)


def register(cls: type[SSLMethod]) -> type[SSLMethod]:
    METHODS[cls.name] = cls
    cls.title = TITLES[cls.name]
    return cls


def method_names() -> tuple[str, ...]:
    """Every method, in the order the docs list them (known without importing torch code)."""
    return _MODULES


def get_method(name: str) -> type[SSLMethod]:
    if name not in _MODULES:
        raise MedsslError(f"Unknown --method '{name}'. Choose one of: {', '.join(_MODULES)}.")
    importlib.import_module(f"medssl.training.methods.{name}")
    return METHODS[name]


__all__ = ["METHODS", "TITLES", "get_method", "method_names", "register"]
