"""The preprocessed image cache: decode every image once, train from small uint8 squares.

Decoding a 4288x2848 fundus JPEG costs ~100 ms; training needs a 224-px crop of it. One parallel
pass (JPEG draft mode, then a resize) turns each image into a `side x side` RGB square - the short
side resized to `side`, the long side centre-cropped - where `side` is 8/7 of the training size
(256 for 224), exactly what evaluation's resize-and-centre-crop starts from.

Storage: one flat uint8 file per dataset and size, `images.u8` (N rows of side*side*3 bytes), and
`index.json` naming each row's source path, byte size and modification time. Why one file rather
than a folder of PNG/JPEG files: a row is read with a single `pread` and no decoding at all, and
reads go through the page cache without mapping the file, so a worker's memory does not grow
with the dataset. A source whose size or mtime changed is decoded again; the index is written
last, through a temporary name, so an interrupted build is never taken for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from medssl.atomic import atomic_write
from medssl.data.files import cache_dir
from medssl.data.images import load_rgb

VERSION = 1
log = logging.getLogger("medssl")


def cache_side(image_size: int) -> int:
    """The stored square's side for a training size: 8/7 of it, as ImageNet evaluation resizes."""
    return int(round(image_size * 8 / 7))


def square(path: str | Path, side: int, draft: bool = True) -> np.ndarray:
    """One image as a `side x side x 3` uint8 array: short side resized to `side`, centre crop."""
    img = load_rgb(path, min_side=side if draft else None)
    w, h = img.size
    scale = side / min(w, h)
    size = (max(side, round(w * scale)), max(side, round(h * scale)))
    img = img.resize(size, Image.BILINEAR)
    left, top = (size[0] - side) // 2, (size[1] - side) // 2
    return np.asarray(img.crop((left, top, left + side, top + side)), dtype=np.uint8)


def _source_stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _decode_rows(args) -> int:
    """Worker: decode `rows` of `paths` into the data file at `data_path` (opened for writing)."""
    data_path, side, rows, paths = args
    row_bytes = side * side * 3
    fd = os.open(data_path, os.O_WRONLY)
    try:
        for row, path in zip(rows, paths):
            os.pwrite(fd, square(path, side).tobytes(), row * row_bytes)
    finally:
        os.close(fd)
    return len(rows)


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Hold an exclusive lock on `lock_path` (POSIX advisory lock; none where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class ImageCache:
    """Rows of preprocessed images, one per relative path, read with `get(i)` as HWC uint8."""

    def __init__(self, folder: Path, side: int, rel_paths: list[str]):
        self.folder, self.side = Path(folder), side
        self.row = {p: i for i, p in enumerate(rel_paths)}
        self.row_bytes = side * side * 3
        self._fd: int | None = None  # opened lazily: every DataLoader worker gets its own

    @staticmethod
    def folder_for(root: Path, side: int) -> Path:
        key = hashlib.sha1(f"{Path(root).resolve()}|{side}|v{VERSION}".encode()).hexdigest()[:16]
        return cache_dir() / "images" / f"{Path(root).name}-{side}px-{key}"

    @classmethod
    def build(cls, root: Path, rel_paths: list[str], side: int, workers: int | None = None,
              progress: bool = True) -> "ImageCache":
        """Open the cache of these images at this size, decoding only what is missing or changed."""
        root = Path(root)
        folder = cls.folder_for(root, side)
        folder.mkdir(parents=True, exist_ok=True)
        # One builder at a time: the ranks of a torchrun job, or two jobs on one dataset, would
        # otherwise write the same temporary file. The second finds the cache built and reuses it.
        with _exclusive(folder / ".lock"):
            return cls._build(root, folder, rel_paths, side, workers, progress)

    @classmethod
    def _build(cls, root: Path, folder: Path, rel_paths: list[str], side: int,
               workers: int | None, progress: bool) -> ImageCache:
        paths = sorted(set(rel_paths))
        stamps = {p: _source_stamp(root / p) for p in paths}
        index_path, data_path = folder / "index.json", folder / "images.u8"
        old = json.loads(index_path.read_text()) if index_path.is_file() else {}
        old_rows = {e[0]: (i, e[1]) for i, e in enumerate(old.get("entries", []))}
        if old.get("version") == VERSION and [e[0] for e in old.get("entries", [])] == paths \
                and data_path.is_file() and all(old_rows[p][1] == stamps[p] for p in paths):
            return cls(folder, side, paths)

        row_bytes = side * side * 3
        tmp = folder / "images.u8.tmp"
        with open(tmp, "wb") as f:
            f.truncate(len(paths) * row_bytes)
        todo = []
        if data_path.is_file():  # keep the rows whose source did not change
            with open(data_path, "rb") as src, open(tmp, "r+b") as dst:
                for i, p in enumerate(paths):
                    if p in old_rows and old_rows[p][1] == stamps[p]:
                        src.seek(old_rows[p][0] * row_bytes)
                        dst.seek(i * row_bytes)
                        dst.write(src.read(row_bytes))
                    else:
                        todo.append(i)
        else:
            todo = list(range(len(paths)))
        _decode(tmp, side, todo, [str(root / paths[i]) for i in todo], workers, progress)
        os.replace(tmp, data_path)
        index = {"version": VERSION, "root": str(root.resolve()), "side": side,
                 "entries": [[p, stamps[p]] for p in paths]}
        atomic_write(index_path, lambda tmp: tmp.write_text(json.dumps(index)))
        log.info("image cache %s: %d decoded, %d reused", folder, len(todo), len(paths) - len(todo))
        return cls(folder, side, paths)

    def get(self, rel_path: str) -> np.ndarray:
        if self._fd is None:
            self._fd = os.open(self.folder / "images.u8", os.O_RDONLY)
        data = os.pread(self._fd, self.row_bytes, self.row[rel_path] * self.row_bytes)
        return np.frombuffer(data, dtype=np.uint8).reshape(self.side, self.side, 3)

    def __getstate__(self):  # a file descriptor does not travel to worker processes
        state = dict(self.__dict__)
        state["_fd"] = None
        return state


def _decode(data_path: Path, side: int, rows: list[int], paths: list[str],
            workers: int | None, progress: bool) -> None:
    from tqdm.auto import tqdm

    workers = max(1, workers or os.cpu_count() or 1)
    chunk = 16
    jobs = [(str(data_path), side, rows[i:i + chunk], paths[i:i + chunk])
            for i in range(0, len(rows), chunk)]
    bar = tqdm(total=len(rows), desc=f"caching images at {side}px", unit="img",
               disable=not progress or not rows, leave=False)
    if workers == 1 or len(jobs) < 2:
        for job in jobs:
            bar.update(_decode_rows(job))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for done in pool.map(_decode_rows, jobs):
                bar.update(done)
    bar.close()
