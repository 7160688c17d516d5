"""Self-supervised methods, registered by name: one file each, over one base (`base.SSLMethod`).

Adding a method means its file, one line in `_MODULES` below, and its test.
"""

from __future__ import annotations

import importlib

from typing import TYPE_CHECKING

from medssl.errors import MedsslError
from medssl.names import METHOD_TITLES

if TYPE_CHECKING:  # the CLI lists the names without importing torch
    from medssl.training.methods.base import SSLMethod

METHODS: dict[str, type[SSLMethod]] = {}
TITLES = METHOD_TITLES  # name -> title (medssl.names)
_MODULES = tuple(TITLES)


def register(cls: type[SSLMethod]) -> type[SSLMethod]:
    METHODS[cls.name] = cls
    cls.title = TITLES[cls.name]
    return cls


def get_method(name: str) -> type[SSLMethod]:
    if name not in _MODULES:
        raise MedsslError(f"Unknown --method '{name}'. Choose one of: {', '.join(_MODULES)}.")
    importlib.import_module(f"medssl.training.methods.{name}")
    return METHODS[name]


__all__ = ["METHODS", "TITLES", "get_method", "register"]
