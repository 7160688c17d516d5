"""Decoding images the same way everywhere, and finding the broken ones before training starts."""

from __future__ import annotations

import io
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medssl.data.fingerprint import SMALL, Fingerprint, fingerprint
from medssl.data.registry import Problem
from medssl.errors import MedsslError
from medssl.ranges import RANGES

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


def to_rgb(img: Image.Image) -> Image.Image:
    """EXIF orientation applied, then RGB from whatever mode the file had (L, P, RGBA, CMYK, 16-bit)."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit X-rays: scale to 8 bits instead of letting convert() clip everything above 255.
        arr = np.asarray(img, dtype=np.float32) / 257.0
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img if img.mode == "RGB" else img.convert("RGB")


def _draft_decode(img: Image.Image, min_side: int | None) -> Image.Image:
    """Decode an opened image; with `min_side`, JPEGs decode in draft mode at the smallest 1/2,
    1/4 or 1/8 scale whose short side is still at least that (much faster)."""
    if min_side and img.format == "JPEG" and min(img.size) > min_side:
        factor = min(img.size) / min_side
        img.draft(None, (int(img.size[0] / factor), int(img.size[1] / factor)))
    img.load()
    return to_rgb(img)


def load_rgb(path: Path | str, min_side: int | None = None) -> Image.Image:
    """Open, decode and convert one image (in draft mode with `min_side`, see `_draft_decode`)."""
    with Image.open(path) as img:
        return _draft_decode(img, min_side)


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image as displayed: EXIF orientations 5-8 swap the sides."""
    orientation = img.getexif().get(0x0112, 1)
    w, h = img.size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def inspect_image(path: Path | str) -> tuple[str | None, Fingerprint | None]:
    """Decode one image completely: why it cannot be used (None when it can), and, when it can,
    its fingerprint for the duplicate search. The file is read once, for both."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "file not found", None
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})", None
    if not data:
        return "empty file (0 bytes)", None
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
                decoded = _draft_decode(img, min_side=SMALL)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return (f"{_pixels(data)} pixels, above the {max_pixels():,} that guard against "
                "decompression bombs (a file made to exhaust memory). Fix: if the picture is "
                "genuine, downscale it, or raise the limit with MEDSSL_MAX_IMAGE_PIXELS"), None
    except UnidentifiedImageError:
        return "not an image Pillow can read (wrong extension, or a damaged file)", None
    except (OSError, SyntaxError, ValueError) as exc:
        return f"truncated or corrupt image data ({exc})", None
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    return None, fingerprint(data, decoded, size)


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


def image_problem(path: Path | str) -> str | None:
    """Why this file cannot be used as an image, or None when it decodes completely."""
    return inspect_image(path)[0]


def _inspect_all(paths: list[str]) -> list[tuple[str | None, Fingerprint | None]]:
    return [inspect_image(p) for p in paths]


def inspect_images(root: Path, rel_paths: list[str], workers: int | None = None,
                   progress: bool = True) -> tuple[list[Problem], dict[str, Fingerprint]]:
    """Decode every image once, in parallel: one Problem per file that fails, named by its path,
    and the fingerprint of every file that decodes."""
    paths = [str(root / p) for p in rel_paths]
    workers = workers or os.cpu_count() or 1
    chunk = 64
    chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
    bar = _progress(len(paths), progress)
    results: list[tuple[str | None, Fingerprint | None]] = []
    if workers <= 1 or len(paths) < 4 * chunk:
        for c in chunks:
            results += _inspect_all(c)
            bar.update(len(c))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for c, res in zip(chunks, pool.map(_inspect_all, chunks)):
                results += res
                bar.update(len(c))
    bar.close()
    problems = [Problem(rel, why) for rel, (why, _) in zip(rel_paths, results) if why]
    prints = {rel: f for rel, (_, f) in zip(rel_paths, results) if f is not None}
    return problems, prints


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="checking images", unit="img", disable=not enabled, leave=False)
