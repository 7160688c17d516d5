"""Writing a file so that a crash, a kill or a full disk never leaves one that looks finished."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from medssl.errors import MedsslError


def atomic_write(path: Path, write) -> None:
    """Write through a temporary name and rename, so a crash never leaves a file that looks done.
    A failed write (the disk full, say) removes its temporary file and leaves `path` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise MedsslError(disk_full_message(path)) from exc
        raise


def disk_full_message(path) -> str:
    return (f"The disk is full: {path} could not be written (nothing half-written was kept). "
            f"Fix: free space on the disk that holds {Path(path).parent}, or choose another "
            "--out, then run the same command again with --resume.")
