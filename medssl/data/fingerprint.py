"""An image's fingerprint, made in the decode pass every image goes through (`images.inspect_image`):
what the duplicate search (`duplicates`) keeps of each picture to find its copies. Kept small,
since it is made for every image: the file's length, the picture's full size, a 32x32 grey
thumbnail and its 64-bit perceptual hash (pHash: the signs of its lowest 8x8 DCT frequencies
against their median).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

SMALL = 32  # side of the grey thumbnail every fingerprint keeps


@dataclass(frozen=True)
class Fingerprint:
    """What the decode pass keeps of one image to find its copies."""

    nbytes: int  # the file's length: two files of one length may be byte copies
    size: tuple[int, int]  # (width, height) of the full picture, EXIF orientation applied
    phash: int
    small: bytes  # SMALL x SMALL grey pixels, uint8


def _dct_rows(n: int, k: int) -> np.ndarray:
    """The first k rows of the orthonormal n-point DCT-II matrix."""
    i = np.arange(n)
    rows = np.cos(np.pi * (2 * i[None, :] + 1) * np.arange(k)[:, None] / (2 * n)) * np.sqrt(2 / n)
    rows[0] /= np.sqrt(2)
    return rows.astype(np.float32)


# The 63 pHash coefficients of a flattened 32x32 thumbnail in one matrix product: row (u, v) of
# the 2-D DCT is the outer product of the 1-D rows u and v (the constant term (0, 0) left out).
_DCT8 = _dct_rows(32, 8)
_PHASH_BASIS = np.einsum("ui,vj->uvij", _DCT8, _DCT8).reshape(64, 32 * 32)[1:]


def grey_thumbnail(img: Image.Image, side: int) -> np.ndarray:
    """The whole picture as a `side x side` grey uint8 array (aspect ratio not kept)."""
    return np.asarray(_grey(img, side))


def _grey(img: Image.Image, side: int) -> Image.Image:
    return img.convert("L").resize((side, side), Image.BILINEAR, reducing_gap=2.0)


def _phash_of(small: Image.Image) -> int:
    """pHash of a 32x32 grey image: its 63 lowest DCT frequencies (the constant term left out),
    each a bit: above or below their median."""
    coefficients = _PHASH_BASIS @ np.frombuffer(small.tobytes(), np.uint8).astype(np.float32)
    bits = coefficients > np.partition(coefficients, 31)[31]
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def fingerprint(data: bytes, img: Image.Image, full_size: tuple[int, int]) -> Fingerprint:
    """The fingerprint of a decoded image (`img`, possibly draft-decoded) and its file's bytes.
    (Two small PIL operations and one matrix product: this runs for every image in the check
    pass. No digest of the file's bytes: hashing a 100-KB JPEG costs a tenth of decoding it, and
    byte copies are candidates like any other copy, compared byte by byte then.)"""
    small = _grey(img, SMALL)
    return Fingerprint(len(data), tuple(full_size), _phash_of(small), small.tobytes())
