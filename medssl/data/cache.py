"""The preprocessed image cache: decode every image once, train from small uint8 images.

Decoding a 4288x2848 fundus JPEG costs ~100 ms; training needs a 224-px crop of it. One parallel
pass (JPEG draft mode, then a resize) turns each image into an RGB image whose short side is
`side`, 8/7 of the training size (256 for 224), with its aspect ratio kept: SimCLR's random
resized crops are taken from the whole picture (the sides of a chest X-ray, a fundus's margins),
as torchvision's RandomResizedCrop takes them from the original, and evaluation's centre crop of
it is exactly the usual resize-and-centre-crop.

Storage: one flat uint8 file per dataset and size, `images.u8` (the rows one after the other, each
height*width*3 bytes), and `index.json` naming each row's source path, byte size, modification
time, inode and ctime, offset and shape. Why one file rather than a folder of PNG/JPEG files: a row is read with a
single `pread` and no decoding at all, and reads go through the page cache without mapping the
file, so a worker's memory does not grow with the dataset. A source whose size, mtime, inode or
ctime changed is decoded again; the index is written last, through a temporary name, so an interrupted build is
never taken for a finished one.
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
from medssl.data.images import load_rgb, picture_size
from medssl.errors import MedsslError

VERSION = 3  # 1: centre-cropped squares; 2: the whole picture, aspect ratio kept; 3: 16-bit
# pictures windowed (`--window`), no longer divided by 257
log = logging.getLogger("medssl")


def cache_side(image_size: int) -> int:
    """The stored square's side for a training size: 8/7 of it, as ImageNet evaluation resizes."""
    return int(round(image_size * 8 / 7))


def shrunk_size(size: tuple[int, int], side: int) -> tuple[int, int]:
    """(width, height) of a picture of `size` with its short side resized to `side`."""
    w, h = size
    scale = side / min(w, h)
    return max(side, round(w * scale)), max(side, round(h * scale))


def shrink(path: str | Path, side: int, draft: bool = True, window: str = "auto",
           channels: int = 3) -> np.ndarray:
    """One image as an `h x w x channels` uint8 array: the whole picture, short side resized to
    `side`; with one channel its grey (luminance) picture."""
    img = load_rgb(path, min_side=side if draft else None, window=window)
    if channels == 1:
        img = img.convert("L")
    pixels = np.asarray(img.resize(shrunk_size(img.size, side), Image.BILINEAR), dtype=np.uint8)
    return pixels.reshape(*pixels.shape[:2], channels)


def _shape(path: str, side: int) -> tuple[int, int]:
    """The (height, width) `shrink` gives, from the file's header alone (EXIF orientation too)."""
    w, h = shrunk_size(picture_size(path), side)
    return h, w


def _shapes(args) -> list[tuple[int, int]]:
    side, paths = args
    return [_shape(p, side) for p in paths]


def source_stamp(path: Path) -> list[int]:
    """What tells that a source changed: its size and mtime, and its inode and ctime. A copy that
    keeps the mtime (`cp -p`, rsync) still gets a new ctime (and a new file a new inode), and
    nothing can set a ctime back: a picture replaced by another of the same size is noticed."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def _decode_rows(args) -> int:
    """Worker: decode `paths` into the data file at `data_path` at their byte `offsets`."""
    data_path, side, offsets, paths, shapes, window, channels = args
    fd = os.open(data_path, os.O_WRONLY)
    try:
        for offset, path, shape in zip(offsets, paths, shapes):
            pixels = shrink(path, side, window=window, channels=channels)
            if pixels.shape[:2] != tuple(shape):  # the header promised another size
                raise MedsslError(f"{path} decodes to {pixels.shape[1]}x{pixels.shape[0]} px "
                                  f"where its header says {shape[1]}x{shape[0]} (after shrinking). "
                                  "Fix: re-save the image from the download, or pass --no-cache.")
            os.pwrite(fd, pixels.tobytes(), offset)
    finally:
        os.close(fd)
    return len(paths)


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
    """Preprocessed images, one per relative path, read with `get(path)` as HWC uint8."""

    def __init__(self, folder: Path, side: int, entries: list, window: str = "auto",
                 channels: int = 3):
        self.folder, self.side, self.window = Path(folder), side, window
        self.channels = channels  # 3, or 1 for a grey stem: a third of the bytes
        # path -> (byte offset, height, width)
        self.row = {e[0]: (e[2], e[3], e[4]) for e in entries}
        self._fd: int | None = None  # opened lazily: every DataLoader worker gets its own

    @staticmethod
    def folder_for(root: Path, side: int, window: str = "auto", channels: int = 3) -> Path:
        key = f"{Path(root).resolve()}|{side}|v{VERSION}|{window}" + \
            (f"|{channels}ch" if channels != 3 else "")
        key = hashlib.sha1(key.encode()).hexdigest()[:16]
        return cache_dir() / "images" / f"{Path(root).name}-{side}px-{key}"

    @classmethod
    def build(cls, root: Path, rel_paths: list[str], side: int, workers: int | None = None,
              progress: bool = True, window: str = "auto", channels: int = 3) -> "ImageCache":
        """Open the cache of these images at this size, `--window` and number of channels,
        decoding only what is missing or changed."""
        root, window = Path(root), str(window)
        folder = cls.folder_for(root, side, window, channels)
        folder.mkdir(parents=True, exist_ok=True)
        # One builder at a time: the ranks of a torchrun job, or two jobs on one dataset, would
        # otherwise write the same temporary file. The second finds the cache built and reuses it.
        with _exclusive(folder / ".lock"):
            return cls._build(root, folder, rel_paths, side, workers, progress,
                              (window, channels))

    @classmethod
    def _build(cls, root: Path, folder: Path, rel_paths: list[str], side: int,
               workers: int | None, progress: bool, reading: tuple) -> ImageCache:
        """`reading`: (window, channels)."""
        window, channels = reading
        paths = sorted(set(rel_paths))
        stamps = {p: source_stamp(root / p) for p in paths}
        index_path, data_path = folder / "index.json", folder / "images.u8"
        old = json.loads(index_path.read_text()) if index_path.is_file() else {}
        old_entries = old.get("entries", []) if old.get("version") == VERSION else []
        old_rows = {e[0]: e for e in old_entries}
        if [e[0] for e in old_entries] == paths and data_path.is_file() \
                and all(old_rows[p][1] == stamps[p] for p in paths):
            return cls(folder, side, old_entries, window, channels)

        reused = {p for p in paths if p in old_rows and old_rows[p][1] == stamps[p]
                  and data_path.is_file()}
        todo = [p for p in paths if p not in reused]
        new_shapes = dict(zip(todo, _header_shapes([str(root / p) for p in todo], side, workers)))
        entries, offset = [], 0
        for p in paths:
            h, w = (old_rows[p][3], old_rows[p][4]) if p in reused else new_shapes[p]
            entries.append([p, stamps[p], offset, h, w])
            offset += h * w * channels
        tmp = folder / "images.u8.tmp"
        with open(tmp, "wb") as f:
            f.truncate(offset)
        if reused:  # copy the rows whose source did not change
            with open(data_path, "rb") as src, open(tmp, "r+b") as dst:
                for p, _, at, h, w in entries:
                    if p in reused:
                        src.seek(old_rows[p][2])
                        dst.seek(at)
                        dst.write(src.read(h * w * channels))
        row = {e[0]: e for e in entries}
        _decode(tmp, side, [row[p][2] for p in todo], [str(root / p) for p in todo],
                [(row[p][3], row[p][4]) for p in todo], workers, progress, reading)
        os.replace(tmp, data_path)
        index = {"version": VERSION, "root": str(root.resolve()), "side": side, "entries": entries}
        atomic_write(index_path, lambda tmp: tmp.write_text(json.dumps(index)))
        log.info("image cache %s: %d decoded, %d reused", folder, len(todo), len(reused))
        return cls(folder, side, entries, window, channels)

    def get(self, rel_path: str) -> np.ndarray:
        if self._fd is None:
            self._fd = os.open(self.folder / "images.u8", os.O_RDONLY)
        offset, h, w = self.row[rel_path]
        data = os.pread(self._fd, h * w * self.channels, offset)
        return np.frombuffer(data, dtype=np.uint8).reshape(h, w, self.channels)

    def __getstate__(self):  # a file descriptor does not travel to worker processes
        state = dict(self.__dict__)
        state["_fd"] = None
        return state


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _run(fn, jobs: list, workers: int | None, on_result=None) -> list:
    """fn over jobs, in a process pool when there are several jobs and workers; `on_result` is
    called with each result as it comes (progress)."""
    workers = max(1, workers or os.cpu_count() or 1)
    results = []
    if workers == 1 or len(jobs) < 2:
        outputs = map(fn, jobs)
        for result in outputs:
            results.append(result)
            if on_result:
                on_result(result)
        return results
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for result in pool.map(fn, jobs):
            results.append(result)
            if on_result:
                on_result(result)
    return results


def _header_shapes(paths: list[str], side: int, workers: int | None) -> list[tuple[int, int]]:
    """The row shape of every path, from the file headers (the sizes fix the byte offsets)."""
    jobs = [(side, c) for c in _chunks(paths, 256)]
    return [shape for part in _run(_shapes, jobs, workers) for shape in part]


def _decode(data_path: Path, side: int, offsets: list[int], paths: list[str],
            shapes: list[tuple[int, int]], workers: int | None, progress: bool,
            reading: tuple = ("auto", 3)) -> None:
    from tqdm.auto import tqdm

    jobs = [(str(data_path), side, o, p, s, *reading)
            for o, p, s in zip(_chunks(offsets, 16), _chunks(paths, 16), _chunks(shapes, 16))]
    bar = tqdm(total=len(paths), desc=f"caching images at {side}px", unit="img",
               disable=not progress or not paths, leave=False)
    _run(_decode_rows, jobs, workers, bar.update)
    bar.close()
