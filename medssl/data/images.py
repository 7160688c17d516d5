"""Decoding images the same way everywhere, and finding the broken ones before training starts."""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medssl.data.registry import Problem

# Decompression-bomb guard stays on, but fundus photographs (4288x2848) are far below it.
Image.MAX_IMAGE_PIXELS = 200_000_000


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


def load_rgb(path: Path | str, min_side: int | None = None) -> Image.Image:
    """Open, decode and convert one image. With `min_side`, JPEGs decode in draft mode at the
    smallest 1/2, 1/4 or 1/8 scale whose short side is still at least that (much faster)."""
    with Image.open(path) as img:
        if min_side and img.format == "JPEG" and min(img.size) > min_side:
            factor = min(img.size) / min_side
            img.draft(None, (int(img.size[0] / factor), int(img.size[1] / factor)))
        img.load()
        return to_rgb(img)


def image_problem(path: Path | str) -> str | None:
    """Why this file cannot be used as an image, or None when it decodes completely."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Draft mode still reads every byte of the stream, so truncation is still caught.
            load_rgb(path, min_side=32)
    except FileNotFoundError:
        return "file not found"
    except UnidentifiedImageError:
        return "not an image Pillow can read (wrong extension, or a damaged file)"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"truncated or corrupt image data ({exc})"
    return None


def _problems_of(paths: list[str]) -> list[str | None]:
    return [image_problem(p) for p in paths]


def find_bad_images(root: Path, rel_paths: list[str], workers: int | None = None,
                    progress: bool = True) -> list[Problem]:
    """Decode every image once, in parallel; one Problem per file that fails, named by its path."""
    paths = [str(root / p) for p in rel_paths]
    workers = workers or os.cpu_count() or 1
    chunk = 64
    chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
    bar = _progress(len(paths), progress)
    results: list[str | None] = []
    if workers <= 1 or len(paths) < 4 * chunk:
        for c in chunks:
            results += _problems_of(c)
            bar.update(len(c))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for c, res in zip(chunks, pool.map(_problems_of, chunks)):
                results += res
                bar.update(len(c))
    bar.close()
    return [Problem(rel, why) for rel, why in zip(rel_paths, results) if why]


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="checking images", unit="img", disable=not enabled, leave=False)
