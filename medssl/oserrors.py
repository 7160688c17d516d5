"""The operating system's refusals (permission, read-only disk, a file where a folder should be,
no space) as one clear message each: the path, what went wrong, and the fix.

Two uses: `writable_folder` checks a place medssl will write to before any work starts (so a
refused `--out` leaves nothing behind), and `describe` words an OSError met later on.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from medssl.atomic import disk_full_message
from medssl.errors import MedsslError

# What went wrong, by errno, in words a user can act on.
WHAT = {
    errno.EACCES: "permission denied",
    errno.EPERM: "the operation is not permitted",
    errno.EROFS: "it is on a read-only file system",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.EEXIST: "a file of that name is in the way",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.ENOENT: "a folder on the way does not exist and cannot be created there",
    errno.ENAMETOOLONG: "the name is too long for the file system",
}


def describe(exc: OSError, path=None, fix: str | None = None) -> str:
    """One message for an OSError: which path, what went wrong, and the fix."""
    where = path or exc.filename or "a file"
    what = WHAT.get(exc.errno, exc.strerror or str(exc))
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return disk_full_message(where)
    return (f"Cannot write {where}: {what}. "
            f"Fix: {fix or 'choose a place you can write to (--out), or change its permissions'}.")


def writable_folder(path, flag: str, fix: str | None = None, typed=None) -> Path:
    """Refuse, before anything is written, a folder medssl cannot create or write into. Creates
    nothing: the nearest existing folder above `path` is probed with a temporary file, removed
    at once (permission bits alone do not tell: root ignores them, a read-only mount does not
    show in them, and /proc refuses files whatever they say). `typed`: the value as the user
    gave it, where it is not `path` itself (a file in that folder)."""
    path = Path(path).expanduser()
    typed = path if typed is None else typed
    fix = fix or f"pass {flag} a folder you can write to"
    if path.exists() and not path.is_dir():
        raise MedsslError(f"{flag} {path} is a file, not a folder. Fix: {fix}, or move the file away.")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise MedsslError(f"{flag} {typed}: {probe} is a file, not a folder, so nothing can be "
                          f"created below it. Fix: {fix}.")
    try:
        fd, name = tempfile.mkstemp(prefix=".medssl-write-test-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise MedsslError(f"{flag} {typed} cannot be written: {WHAT.get(exc.errno, exc.strerror)} "
                          f"(in {probe}). Fix: {fix}.") from None
    return path


def writable_file(path, flag: str) -> Path:
    """A file medssl will write (`--split-out`): not a folder, and its folder writable."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise MedsslError(f"{flag} {path} is a folder. Fix: name a file, e.g. {path / 'split.csv'}.")
    writable_folder(path.parent, flag, f"pass {flag} a file in a folder you can write to",
                    typed=path)
    return path
