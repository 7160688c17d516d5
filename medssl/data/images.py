"""Decoding images the same way everywhere, and finding the broken ones before training starts.

Every reader of pictures (the check pass, the duplicate search, the cache, training without
the cache, `medssl.load_image`, the preview sheet) goes through `load_rgb` or `inspect_image`:
DICOM through `dicom`, everything else through Pillow, and values beyond 8 bits (DICOM, 16-bit
PNG and TIFF) through the run's `--window` (`windowing`)."""

from __future__ import annotations

import io
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medssl.data.dicom import DicomError, header, is_dicom, read_dicom
from medssl.data.fingerprint import SMALL, Fingerprint, fingerprint
from medssl.data.registry import Problem
from medssl.errors import MedsslError
from medssl.ranges import RANGES
from medssl.data.windowing import Window, parse_window, to_uint8, to_unit

# Decompression-bomb guard stays on, but fundus photographs (4288x2848) are far below it.
# $MEDSSL_MAX_IMAGE_PIXELS raises it for a dataset of genuinely huge pictures (slides, say).
MAX_PIXELS = 200_000_000


def max_pixels() -> int:
    """$MEDSSL_MAX_IMAGE_PIXELS, a whole number above 0, else MAX_PIXELS."""
    text = os.environ.get("MEDSSL_MAX_IMAGE_PIXELS") or str(MAX_PIXELS)
    try:
        value = RANGES["MEDSSL_MAX_IMAGE_PIXELS"].parse(text)
    except ValueError as exc:
        raise MedsslError(f"MEDSSL_MAX_IMAGE_PIXELS={text!r} is not a number of pixels ({exc}). "
                          f"Fix: a whole number above 0 (default {MAX_PIXELS}), or unset it.") \
            from None
    return value


try:  # decoding anywhere allows what the check allows
    Image.MAX_IMAGE_PIXELS = max_pixels()
except MedsslError:  # said where images are checked (check_image calls max_pixels again)
    pass


HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I", "F")  # Pillow's modes beyond 8 bits a sample


def to_rgb(img: Image.Image, window: Window | str = "auto") -> Image.Image:
    """EXIF orientation applied, then RGB from whatever mode the file had (L, P, RGBA, CMYK);
    16-bit and float pictures windowed to 8 bits (`windowing`), not divided down or clipped."""
    img = ImageOps.exif_transpose(img)
    if img.mode in HIGH_DEPTH:
        unit = to_unit(np.asarray(img, dtype=np.float64), parse_window(window))
        img = Image.fromarray(to_uint8(unit), "L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img if img.mode == "RGB" else img.convert("RGB")


def _draft_decode(img: Image.Image, min_side: int | None,
                  window: Window | str = "auto") -> Image.Image:
    """Decode an opened image; with `min_side`, JPEGs decode in draft mode at the smallest 1/2,
    1/4 or 1/8 scale whose short side is still at least that (much faster)."""
    if min_side and img.format == "JPEG" and min(img.size) > min_side:
        factor = min(img.size) / min_side
        img.draft(None, (int(img.size[0] / factor), int(img.size[1] / factor)))
    img.load()
    return to_rgb(img, window)


def _dicom_rgb(src: Path | str | bytes, window: Window | str) -> tuple[Image.Image, int]:
    pixels, frames = read_dicom(src, parse_window(window))
    return Image.fromarray(pixels).convert("RGB"), frames


def load_rgb(path: Path | str, min_side: int | None = None,
             window: Window | str = "auto") -> Image.Image:
    """Open, decode and convert one image (in draft mode with `min_side`, see `_draft_decode`),
    DICOM or not. A DICOM file that cannot be used raises MedsslError naming it."""
    if is_dicom(path):
        try:
            return _dicom_rgb(path, window)[0]
        except DicomError as exc:
            raise MedsslError(f"{path}: {exc}") from None
    with Image.open(path) as img:
        return _draft_decode(img, min_side, window)


def picture_size(path: Path | str) -> tuple[int, int]:
    """(width, height) of a picture as displayed, from its header alone."""
    if is_dicom(path):
        return header(path)["size"]
    with Image.open(path) as img:
        return oriented_size(img)


def load_image(path: Path | str, window: Window | str = "auto") -> np.ndarray:
    """One picture exactly as medssl's training sees it before resizing: decoded, windowed,
    turned to RGB, as an `H x W x 3` uint8 NumPy array (`medssl.load_image`)."""
    return np.asarray(load_rgb(path, window=window), dtype=np.uint8)


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image as displayed: EXIF orientations 5-8 swap the sides."""
    orientation = img.getexif().get(0x0112, 1)
    w, h = img.size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def inspect_image(path: Path | str, window: Window | str = "auto"
                  ) -> tuple[str | None, Fingerprint | None, str | None]:
    """Decode one image completely: why it cannot be used (None when it can), and, when it can,
    its fingerprint for the duplicate search and a note worth a warning (a multi-frame DICOM's
    first frame used). The file is read once, for all three."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "file not found", None, None
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})", None, None
    if not data:
        return "empty file (0 bytes)", None, None
    if is_dicom(path, data):
        try:
            decoded, frames = _dicom_rgb(data, window)
        except DicomError as exc:
            return str(exc), None, None
        note = (f"{frames} frames (a multi-frame DICOM): the first is used" if frames > 1
                else None)
        return None, fingerprint(data, decoded, decoded.size), note
    why, decoded, size = _decode_pillow(data, window)
    return (why, None, None) if why else (None, fingerprint(data, decoded, size), None)


def _decode_pillow(data: bytes, window: Window | str):
    """(why it cannot be used, or None; the picture at draft size; its full size)."""
    # The limit as set now (the environment may have changed since import), for this check only.
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Above the limit is refused, not warned about and decoded anyway.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                size = oriented_size(img)
                # Draft mode still reads every byte of the stream, so truncation is still caught.
                return None, _draft_decode(img, SMALL, window), size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return (f"{_pixels(data)} pixels, above the {max_pixels():,} that guard against "
                "decompression bombs (a file made to exhaust memory). Fix: if the picture is "
                "genuine, downscale it, or raise the limit with MEDSSL_MAX_IMAGE_PIXELS"), \
            None, None
    except UnidentifiedImageError:
        return "not an image Pillow can read (wrong extension, or a damaged file)", None, None
    except (OSError, SyntaxError, ValueError) as exc:
        return f"truncated or corrupt image data ({exc})", None, None
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _pixels(data: bytes) -> str:
    """`W x H = N` from the header alone, which Pillow reads without decoding."""
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
        return f"{w} x {h} = {w * h:,}"
    except Exception:  # the header itself is odd: say less rather than fail here
        return "more"
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def image_problem(path: Path | str, window: Window | str = "auto") -> str | None:
    """Why this file cannot be used as an image, or None when it decodes completely."""
    return inspect_image(path, window)[0]


def _inspect_all(args) -> list[tuple[str | None, Fingerprint | None, str | None]]:
    paths, window = args
    return [inspect_image(p, window) for p in paths]


def inspect_images(root: Path, rel_paths: list[str], workers: int | None = None,
                   progress: bool = True, window: Window | str = "auto"
                   ) -> tuple[list[Problem], dict[str, Fingerprint]]:
    """Decode every image once, in parallel: one Problem per file that fails (an error) or
    needs a word (a warning), named by its path, and the fingerprint of every file that
    decodes."""
    paths = [str(root / p) for p in rel_paths]
    workers = workers or os.cpu_count() or 1
    chunk = 64
    chunks = [(paths[i:i + chunk], str(window)) for i in range(0, len(paths), chunk)]
    bar = _progress(len(paths), progress)
    results: list[tuple[str | None, Fingerprint | None, str | None]] = []
    if workers <= 1 or len(paths) < 4 * chunk:
        for c in chunks:
            results += _inspect_all(c)
            bar.update(len(c[0]))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for c, res in zip(chunks, pool.map(_inspect_all, chunks)):
                results += res
                bar.update(len(c[0]))
    bar.close()
    problems = [Problem(rel, why) for rel, (why, _, _) in zip(rel_paths, results) if why]
    problems += [Problem(rel, note, "warning") for rel, (_, _, note) in zip(rel_paths, results)
                 if note]
    prints = {rel: f for rel, (_, f, _) in zip(rel_paths, results) if f is not None}
    return problems, prints


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="checking images", unit="img", disable=not enabled, leave=False)
