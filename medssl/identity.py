"""What makes a run's result what it is, and the check that a run reused or resumed is that run.

A run's identity is its resolved configuration without the settings that may change between a
run and its resume or reuse (`options.MAY_CHANGE`: where and how fast it runs, where it writes),
with every file it learns from named by content instead of by path: the split file, an SSL
backbone, a teacher (by its own identity). The code version is part of it. Each run writes its
identity to `identity.json` before it trains; a resume, and a reuse by `compare`, compute the
identity the run would have now and go on only where the two are equal. Otherwise they stop,
naming the fields that differ and the fix.

Torch-free, at the bottom of the package beside names, options and records.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path

from medssl import __version__
from medssl.atomic import atomic_write
from medssl.errors import MedsslError
from medssl.options import MAY_CHANGE
from medssl.runs import IDENTITY

# Fields named by what they point at (`files` of run_identity) rather than by their path.
BY_CONTENT = frozenset({"split_file", "ssl_checkpoint", "teachers", "assigned", "extra",
                        "prior_weights"})


def file_digest(path) -> str | None:
    """sha256 of a file's bytes (None where there is no file): a file that was moved is the same,
    one that was replaced is not."""
    if path is None or not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plain(value):
    """JSON's view of a value, so that an identity computed now equals one read back."""
    return json.loads(json.dumps(asdict(value) if is_dataclass(value) else value, default=str))


def run_identity(cfg, files: dict | None = None, extra: dict | None = None) -> dict:
    """The identity of a run configured by `cfg` (resolved): its settings but MAY_CHANGE and the
    paths of BY_CONTENT, `files` (name -> path, or list of paths) by their digests, `extra`
    (what the grid assigned beyond flags) as it is, and the code version."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in MAY_CHANGE | BY_CONTENT}
    digests = {name: ([file_digest(p) for p in paths] if isinstance(paths, (list, tuple))
                      else file_digest(paths)) for name, paths in (files or {}).items()}
    return _plain({"settings": settings, "files": digests, "extra": extra or {},
                   "medssl_version": __version__})


def differences(recorded: dict, now: dict) -> list[str]:
    """The fields in which two identities differ, as `name: recorded -> now`."""
    out = []
    for part in ("settings", "files", "extra"):
        a, b = recorded.get(part, {}), now.get(part, {})
        for key in sorted(set(a) | set(b)):
            now_file = b.get(key)
            if part == "files" and (now_file is None or
                                    (isinstance(now_file, list) and None in now_file)):
                continue  # a file gone since (a pretraining deleted to save space): unchecked
            if a.get(key) != b.get(key):
                shown = (lambda v: "another file" if part == "files" and v else v)
                out.append(f"{key}: {shown(a.get(key))!r} -> {shown(b.get(key))!r}")
    if recorded.get("medssl_version") != now.get("medssl_version"):
        out.append(f"medssl version: {recorded.get('medssl_version')} -> "
                   f"{now.get('medssl_version')}")
    return out


def write_identity(run: Path, identity: dict, name: str = IDENTITY) -> None:
    atomic_write(Path(run) / name, lambda p: p.write_text(json.dumps(identity, indent=2)))


def read_identity(run: Path, name: str = IDENTITY) -> dict | None:
    """The identity a run recorded (`name`: a grid's split's, runs.SPLIT_IDENTITY); None for
    one made before they were recorded."""
    path = Path(run) / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise MedsslError(f"{path} is not readable JSON ({exc}). Fix: run it again with --force, "
                          "or --out another folder.") from None


FIX_RESUME = ("Fix: pass the settings it was made with, or drop --resume and pass --force (in "
              "`compare`: delete the folder) to start it again with these, or --out another folder.")
FIX_REUSE = ("Fix: pass the settings it was made with, or delete the folder to run it again with "
             "these, or --out another folder.")


def check_same_run(run: Path, identity: dict, doing: str) -> None:
    """Refuse to `doing` ("resume" or "reuse") the run in `run` unless it recorded `identity`."""
    fix = FIX_RESUME if doing == "resume" else FIX_REUSE
    recorded = read_identity(run)
    if recorded is None:
        raise MedsslError(f"Cannot {doing} {run}: it records no identity (made before runs "
                          "recorded theirs), so nothing shows it was made with these settings. "
                          + fix)
    changed = differences(recorded, identity)
    if changed:
        more = f"; and {len(changed) - 6} more" if len(changed) > 6 else ""
        raise MedsslError(f"Cannot {doing} {run}: it was made with other settings ("
                          + "; ".join(changed[:6]) + more + "). " + fix)
