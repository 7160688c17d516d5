"""Walking a download on disk: which files are images, which are archive junk to ignore."""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}

# Left behind by macOS and Windows zip tools; never data.
JUNK_DIRS = {"__MACOSX", ".ipynb_checkpoints"}
JUNK_FILES = {".ds_store", "thumbs.db", "desktop.ini"}


def is_junk(name: str) -> bool:
    """True for archive debris: AppleDouble `._*`, `.DS_Store`, `Thumbs.db`, hidden files."""
    return name.startswith(".") or name.lower() in JUNK_FILES or name in JUNK_DIRS


def is_image_name(name: str) -> bool:
    return not is_junk(name) and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def subdirs(folder: Path) -> list[Path]:
    """Non-junk child folders, sorted by name so every walk is deterministic."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_junk(p.name))


def child(folder: Path, name: str) -> Path | None:
    """The child folder called `name`, ignoring case (`Train` and `train` both occur)."""
    for p in subdirs(folder):
        if p.name.lower() == name.lower():
            return p
    return None


def images_in(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files below `folder`, junk skipped, sorted by path."""
    found = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not is_junk(d)]
            found.extend(Path(dirpath) / f for f in filenames if is_image_name(f))
    elif folder.is_dir():
        found = [p for p in folder.iterdir() if p.is_file() and is_image_name(p.name)]
    return sorted(found)


def relpath(path: Path, root: Path) -> str:
    """Sample key: the path relative to the dataset root, with forward slashes on every OS."""
    return path.relative_to(root).as_posix()


def cache_dir() -> Path:
    """Where medssl keeps what it generates (the demo dataset): $MEDSSL_CACHE_DIR or ~/.cache/medssl."""
    if os.environ.get("MEDSSL_CACHE_DIR"):
        return Path(os.environ["MEDSSL_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medssl"
