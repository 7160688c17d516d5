"""Writing a file so that a crash, a kill or a full disk never leaves one that looks finished."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from medssl.errors import MedsslError


def atomic_write(path: Path, write) -> None:
    """Write through a temporary name and rename, so a crash never leaves a file that looks done.
    A failed write (the disk full, say) removes its temporary file and leaves `path` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Its own temporary name per process: the cells of a grid running at once (experiments.
    # launch) may write the same shared file, and one's rename must not take the other's.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        full = (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
                or isinstance(exc, RuntimeError) and no_room(path))
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise MedsslError(disk_full_message(path)) from exc
        raise


def no_room(path: Path) -> bool:
    """Whether the disk that holds `path` is full. torch.save reports a write that failed for
    want of space as a RuntimeError of its zip writer ("unexpected pos 96473856 vs 96473748",
    met in the quick start on a full disk), not as the OSError beneath: the disk itself says.
    Asked before the temporary file is removed, while it still fills the disk."""
    try:
        return shutil.disk_usage(path.parent).free < NO_ROOM
    except OSError:
        return False


NO_ROOM = 1 << 20  # bytes: less than this free is a full disk for a checkpoint


def disk_full_message(path) -> str:
    return (f"The disk is full: {path} could not be written (nothing half-written was kept). "
            f"Fix: free space on the disk that holds {Path(path).parent}, or choose another "
            "--out, then run the same command again with --resume.")
