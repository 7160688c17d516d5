"""The decode pass's findings kept on disk, so that a dataset's images are decoded and compared
once, not once per run: a grid of a hundred runs (or its cells in a hundred processes) read the
findings of the first.

Kept: the problems of the pass (broken files, warnings) and the groups of copies, in one small
JSON file per dataset folder under $MEDSSL_CACHE_DIR/scans. The key covers everything the
findings follow from: the folder, every file's path and stamp (size, mtime, inode and ctime, as
the image cache tells a changed source), the `--window`, the layout (its image ids name copies),
the pixel limit and the decoders' versions, and VERSION. Any change in any of them, one file added or replaced, means the pass runs again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import PIL
import pydicom

from medssl.atomic import atomic_write
from medssl.data.cache import source_stamp
from medssl.data.duplicates import DuplicateGroup
from medssl.data.files import cache_dir
from medssl.data.images import max_pixels
from medssl.data.registry import Problem

VERSION = 1  # raised whenever the pass or the copy search finds differently
log = logging.getLogger("medssl")


def findings_file(root: Path, rel_paths: list[str], window: str, layout: str) -> Path:
    """The findings' file of these images as they are now."""
    # What the pass's verdicts follow from besides the files: the pixel limit it applies and
    # the decoders' versions (a newer pydicom may read what an older one could not).
    readers = f"{max_pixels()}|{PIL.__version__}|{pydicom.__version__}"
    digest = hashlib.sha256(f"{Path(root).resolve()}|{window}|{layout}|{readers}|v{VERSION}"
                            .encode())
    for rel in sorted(rel_paths):
        try:
            stamp = source_stamp(Path(root) / rel)
        except OSError:  # gone: the pass itself says so
            stamp = None
        digest.update(f"\n{rel}|{stamp}".encode())
    return cache_dir() / "scans" / f"{Path(root).name}-{digest.hexdigest()[:20]}.json"


def kept_findings(path: Path) -> tuple[list[Problem], list[DuplicateGroup]] | None:
    """The findings kept at `path`, or None (none kept, or unreadable: the pass runs again)."""
    try:
        kept = json.loads(path.read_text())
        problems = [Problem(**p) for p in kept["problems"]]
        copies = [DuplicateGroup(tuple(g["paths"]), g["kind"]) for g in kept["duplicates"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    log.info("decode pass of %d image(s) reused from %s", kept.get("images", 0), path)
    return problems, copies


def keep_findings(path: Path, images: int, problems: list[Problem], copies: list[DuplicateGroup]) -> None:
    """Keep the findings; a cache that cannot be written only costs the next run the pass."""
    kept = {"version": VERSION, "images": images, "problems": [p.as_dict() for p in problems],
            "duplicates": [{"paths": list(g.paths), "kind": g.kind} for g in copies]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda p: p.write_text(json.dumps(kept)))
    except OSError as exc:
        log.warning("could not keep the decode pass's findings in %s (%s): the next run decodes "
                    "again", path, exc.strerror or exc)
