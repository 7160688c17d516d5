"""Walking a download on disk: which files are images, which are archive junk to ignore."""

from __future__ import annotations

import os
from pathlib import Path

from medssl.data.dicom import DICOM_SUFFIXES, has_preamble, maybe_dicom_name

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", *DICOM_SUFFIXES}

# Left behind by macOS and Windows zip tools; never data.
JUNK_DIRS = {"__MACOSX", ".ipynb_checkpoints"}
JUNK_FILES = {".ds_store", "thumbs.db", "desktop.ini"}


# Files a dataset may hold beside its images that are read as tables, or are documents.
TABLES = {".csv", ".tsv", ".txt", ".json", ".xlsx", ".xls", ".md", ".pdf", ".html", ".yaml",
          ".yml"}
# What each kind of file no adapter reads is, and what to do with it.
UNREAD_KINDS = {
    ".gif": "GIF: not read; convert to PNG",
    ".nii": "NIfTI volumes: not read; export slices as PNG",
    ".gz": "compressed: unpack it",
    ".zip": "an archive: unpack it",
}


def is_junk(name: str) -> bool:
    """True for archive debris: AppleDouble `._*`, `.DS_Store`, `Thumbs.db`, hidden files."""
    return name.startswith(".") or name.lower() in JUNK_FILES or name in JUNK_DIRS


def is_image_name(name: str) -> bool:
    return not is_junk(name) and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def is_image_file(path: Path) -> bool:
    """An image by its name, or a DICOM file without a DICOM suffix (`IM0001`, a UID-named
    export) by the marker after its preamble."""
    return is_image_name(path.name) or (not is_junk(path.name) and maybe_dicom_name(path.name)
                                         and has_preamble(path))


def unread_kinds(root: Path) -> dict[str, int]:
    """The files below `root` that no adapter reads (neither images, nor tables, nor junk), by
    suffix: what `check` counts so that nothing is skipped in silence."""
    counts: dict[str, int] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not is_junk(d)]
        for name in files:
            suffix = Path(name).suffix.lower()
            if is_junk(name) or suffix in IMAGE_EXTENSIONS or suffix in TABLES \
                    or is_image_file(Path(folder) / name):
                continue
            counts[suffix or "(no suffix)"] = counts.get(suffix or "(no suffix)", 0) + 1
    return counts


def unread_note(counts: dict[str, int]) -> str | None:
    """`check`'s line for `unread_kinds`: each kind, how many, what it is; None when none."""
    if not counts:
        return None
    return "not read: " + "; ".join(
        f"{suffix}: {n} file{'s' if n > 1 else ''}"
        + (f" ({UNREAD_KINDS[suffix]})" if suffix in UNREAD_KINDS else "")
        for suffix, n in sorted(counts.items()))


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
            found.extend(Path(dirpath) / f for f in filenames
                         if is_image_file(Path(dirpath) / f))
    elif folder.is_dir():
        found = [p for p in folder.iterdir() if p.is_file() and is_image_file(p)]
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
