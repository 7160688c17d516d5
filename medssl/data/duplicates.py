"""Copies of one picture inside a dataset: exact, near and same-id duplicate groups.

Why: two of the five downloads file the same picture twice (ISIC under two classes, and in Train
and Test; Covid19 in train and test). A copy of a test image in training, or in SimCLR's pool,
inflates every test score, and a picture filed under two labels is label noise.

Every image's fingerprint comes from the decode pass that `check` (and every training run) makes
anyway (`images.inspect_images`): the file's length, the picture's full size, a 32x32
grey thumbnail of the whole picture and its 64-bit perceptual hash (pHash: the signs of its lowest
8x8 DCT frequencies against their median). It is kept that small because it is made for every
image: the finer comparisons decode again only the few pictures that need them.

- **exact**: the same decoded pixels. Byte-identical files (compared byte by byte); other files
  (another format, other metadata, a lossless re-encoding) when they are near copies of the same
  size and a full decode of both gives identical pixels.
- **near**: resized, re-encoded or slightly cropped copies. Candidates are pairs whose pHashes
  differ in at most `PHASH_MAX_BITS` bits; each is confirmed by a finer comparison, because
  chest X-rays of different patients look alike as thumbnails (their pHashes can differ in
  2 bits). A pair whose (slightly blurred) 32-px thumbnails correlate below `GATE_CORRELATION`
  is no copy (the cheap test, on every candidate at once); the others are decoded again and,
  once their crops are aligned (up to `MAX_CROP` of each side), the band-pass detail of
  the two pictures must correlate at `MIN_CORRELATION` or more, and fitting one to the other's
  brightness and contrast must leave at most `MAX_RESIDUAL` of its spread; at 64 px and, where
  both pictures are large enough, again at 128 px (decoded again, only for these pairs).
  Thresholds and the false-alarm rates they give: docs/duplicates.md (`bench/duplicates.py`
  measures them).
- **same-id**: names that identify a picture, where the dataset has them (`ISIC_0024468` in ISIC
  and HAM10000), found in two places.
"""

from __future__ import annotations

import filecmp
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medssl.data.fingerprint import SMALL, Fingerprint, grey_thumbnail
from medssl.data.images import load_rgb

THUMB = 64  # side of the first finer comparison (decoded again for candidate pairs)
FINE = 128  # side of the second, for pictures at least this large
PHASH_MAX_BITS = 10  # candidate pairs: pHashes at most this many bits apart (of 63)
GATE_CORRELATION = 0.9  # candidates below this 32-px correlation are not compared further
MIN_CORRELATION = 0.95  # confirmed: aligned band-pass detail correlates at least this much
MAX_RESIDUAL = 0.11  # ... and what is left after a brightness/contrast fit is at most this share
MAX_CROP = 0.03  # crops of up to 3% of each side are aligned before comparing


@dataclass(frozen=True)
class DuplicateGroup:
    """Paths (relative to the dataset root, sorted) that hold one picture."""

    paths: tuple[str, ...]
    kind: str  # "exact", "near" or "same-id": the strongest claim that holds for every member


# --- the finer comparison ------------------------------------------------------------------

def _band(x: np.ndarray) -> np.ndarray:
    """The detail a copy keeps and a look-alike does not: a difference of Gaussians (0.7 - 3 px)."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, 0.7, mode="nearest") - gaussian_filter(x, 3.0, mode="nearest")


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def _crop_grid(max_crop: float, step: float) -> np.ndarray:
    """Every (scale, offset) of a 1-D crop keeping at least 1 - 2 * max_crop of the axis."""
    pairs = []
    for scale in np.arange(1.0, 1.0 - 2 * max_crop - 1e-9, -step):
        pairs += [(scale, offset) for offset in np.arange(0.0, 1.0 - scale + 1e-9, step)]
    return np.array(pairs, dtype=np.float32)


def _resampling(n: int, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Linear-interpolation matrices (one per crop) taking an axis of n samples to the crop
    [offset, offset + scale] of it, resampled to n samples: shape (crops, n, n)."""
    pos = (offset[:, None] + scale[:, None] * (np.arange(n) + 0.5) / n) * n - 0.5
    pos = np.clip(pos, 0, n - 1)
    low = np.floor(pos).astype(int)
    high = np.minimum(low + 1, n - 1)
    frac = (pos - low).astype(np.float32)
    m = np.zeros((len(scale), n, n), dtype=np.float32)
    rows = np.arange(n)[None, :].repeat(len(scale), 0)
    crops = np.arange(len(scale))[:, None].repeat(n, 1)
    np.add.at(m, (crops, rows, low), 1 - frac)
    np.add.at(m, (crops, rows, high), frac)
    return m


_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    if n not in _GRIDS:
        crops = _crop_grid(MAX_CROP, 0.005)
        _GRIDS[n] = (crops, _resampling(n, crops[:, 0], crops[:, 1]))
    return _GRIDS[n]


def _best_crop(profile_a: np.ndarray, profile_b: np.ndarray, matrices: np.ndarray) -> int:
    """The crop of A's 1-D profile that best matches B's (by correlation)."""
    warped = matrices @ profile_a
    warped = warped - warped.mean(axis=1, keepdims=True)
    target = profile_b - profile_b.mean()
    scores = (warped @ target) / (np.linalg.norm(warped, axis=1) * np.linalg.norm(target) + 1e-9)
    return int(np.argmax(scores))


def similarity(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """How alike two same-size grey thumbnails are once a crop of up to MAX_CROP per side is
    undone, whichever of the two is the cropped one: (correlation of their band-pass detail,
    residual left after fitting one to the other's brightness and contrast, as a share of its
    spread). A copy keeps both: detail correlated above 0.98 and a residual under 0.1, measured.
    Different pictures that look alike (chest X-rays, smooth lesions) can keep the first, not
    the second.

    A crop along one axis is a scale and an offset of that axis, so it is found from the
    column and row means (1-D profiles) on a grid of crops, separately for x and y; a 2-px
    border is left out of the comparison."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    n = a.shape[0]
    _, matrices = _grid(n)
    inner = slice(2, n - 2)
    best = (-1.0, 1.0)
    for src, dst in ((a, b), (b, a)):
        mx = matrices[_best_crop(src.mean(axis=0), dst.mean(axis=0), matrices)]
        my = matrices[_best_crop(src.mean(axis=1), dst.mean(axis=1), matrices)]
        warped = my @ src @ mx.T
        detail = _correlation(_band(warped)[inner, inner], _band(dst)[inner, inner])
        x, y = warped[inner, inner].ravel(), dst[inner, inner].ravel()
        fit = np.polyfit(x, y, 1) if x.std() > 0 else np.array([0.0, y.mean()])
        residual = float((y - np.polyval(fit, x)).std() / (y.std() + 1e-6))
        if detail > best[0]:
            best = (detail, residual)
    return best


def looks_like_a_copy(a: np.ndarray, b: np.ndarray) -> bool:
    detail, residual = similarity(a, b)
    return detail >= MIN_CORRELATION and residual <= MAX_RESIDUAL


# --- the search ------------------------------------------------------------------------------

def candidate_pairs(hashes: np.ndarray, max_bits: int = PHASH_MAX_BITS) -> np.ndarray:
    """Index pairs (i < j) whose 64-bit hashes differ in at most `max_bits` bits: every pair,
    in blocks (10,000 images are 50 million pairs, about a second)."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    found = []
    block = 128  # 128 rows x all columns: fits the CPU caches better than larger blocks
    for start in range(0, len(hashes), block):
        rows = hashes[start:start + block]
        distance = np.bitwise_count(rows[:, None] ^ hashes[None, start:])
        i, j = np.nonzero(distance <= max_bits)
        keep = j > i  # columns start at `start`: j is offset by it too
        found.append(np.stack([i[keep] + start, j[keep] + start], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), dtype=int)


class _Union:
    """Union-find over image indexes. Not scipy's connected_components: the pairs arrive one
    by one, and the search asks as it goes whether two images are already one picture (to skip
    comparing them again)."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)

    def components(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            out.setdefault(self.find(i), []).append(i)
        return out


def _pixel_digest(path: Path, window: str) -> bytes:
    return hashlib.blake2b(load_rgb(path, window=window).tobytes(), digest_size=16).digest()


def _thumb(path: Path, side: int, window: str) -> np.ndarray:
    return grey_thumbnail(load_rgb(path, min_side=side, window=window), side)


def gate(prints: list[Fingerprint], pairs: np.ndarray) -> np.ndarray:
    """The candidate pairs worth a finer look: their 32-px thumbnails, slightly blurred (copies
    cropped by a few pixels still agree), correlate at GATE_CORRELATION or more. All at once."""
    from scipy.ndimage import gaussian_filter

    if len(pairs) == 0:
        return pairs
    used = np.unique(pairs)
    small = np.stack([np.frombuffer(prints[i].small, np.uint8).reshape(SMALL, SMALL)
                      for i in used]).astype(np.float32)
    small = gaussian_filter(small, (0, 0.5, 0.5), mode="nearest").reshape(len(used), -1)
    small -= small.mean(axis=1, keepdims=True)
    small /= np.linalg.norm(small, axis=1, keepdims=True) + 1e-6
    row = np.full(len(prints), -1)
    row[used] = np.arange(len(used))
    keep = np.zeros(len(pairs), dtype=bool)
    for start in range(0, len(pairs), 65536):  # chunks: a million look-alike pairs fit too
        a, b = pairs[start:start + 65536, 0], pairs[start:start + 65536, 1]
        keep[start:start + 65536] = (small[row[a]] * small[row[b]]).sum(axis=1) >= GATE_CORRELATION
    # Identical thumbnails pass whatever their correlation (a flat picture has none): byte
    # copies of a blank image are still copies.
    same = [k for k in np.nonzero(~keep)[0] if prints[pairs[k, 0]].small == prints[pairs[k, 1]].small]
    keep[same] = True
    return pairs[keep]


def confirmed_near(root: Path, a: str, b: str, fa: Fingerprint, fb: Fingerprint,
                   thumbs: dict, window: str = "auto") -> bool:
    """The finer comparison of one candidate pair: aligned detail at 64 px, then at 128 px
    where both pictures have that many pixels (decoded again; kept in `thumbs` for other pairs)."""
    for side in (THUMB, FINE):
        if side == FINE and min(*fa.size, *fb.size) < FINE:
            return True
        for path in (a, b):
            if (path, side) not in thumbs:
                thumbs[(path, side)] = _thumb(root / path, side, window)
        if not looks_like_a_copy(thumbs[(a, side)], thumbs[(b, side)]):
            return False
    return True


def _progress(pairs: np.ndarray, enabled: bool):
    """Look-alike datasets can leave thousands of pairs to compare (each a few ms): say so."""
    from tqdm.auto import tqdm

    return tqdm(pairs, desc="comparing look-alike pairs", unit="pair", leave=False,
                disable=not enabled or len(pairs) < 500)


def find_duplicates(root: Path, fingerprints: dict[str, Fingerprint], image_id=None,
                    progress: bool = False, window: str = "auto") -> list[DuplicateGroup]:
    """Every group of two or more paths holding one picture. `image_id(path)` names the picture
    where the dataset's file names do (None otherwise); `window`: the run's `--window`, so that
    pictures are compared as training sees them (one DICOM picture in two encodings is one
    exact copy)."""
    paths = sorted(fingerprints)
    if len(paths) < 2:
        return []
    prints = [fingerprints[p] for p in paths]
    content = _Union(len(paths))  # exact and near copies
    same_pixels = _Union(len(paths))  # exact copies only
    everything = _Union(len(paths))  # and same-id

    thumbs: dict[tuple[str, int], np.ndarray] = {}
    pixels: dict[str, bytes] = {}
    hashes = np.array([f.phash for f in prints], dtype=np.uint64)
    pairs = gate(prints, candidate_pairs(hashes))
    for i, j in _progress(pairs, progress):
        i, j = int(i), int(j)
        if same_pixels.find(i) == same_pixels.find(j):
            continue
        a, b = paths[i], paths[j]
        if prints[i].nbytes == prints[j].nbytes and filecmp.cmp(root / a, root / b, shallow=False):
            for u in (content, same_pixels, everything):  # byte copies: nothing to compare
                u.join(i, j)
            continue
        if not confirmed_near(root, a, b, prints[i], prints[j], thumbs, window):
            continue
        content.join(i, j)
        everything.join(i, j)
        if prints[i].size == prints[j].size:  # the same picture re-saved? compare every pixel
            for p in (a, b):
                if p not in pixels:
                    pixels[p] = _pixel_digest(root / p, window)
            if pixels[a] == pixels[b]:
                same_pixels.join(i, j)

    if image_id is not None:
        first_of: dict[str, int] = {}
        for i, p in enumerate(paths):
            name = image_id(p)
            if name is None:
                continue
            if name in first_of:
                everything.join(first_of[name], i)
            else:
                first_of[name] = i

    groups = []
    for members in everything.components().values():
        if len(members) < 2:
            continue
        if len({same_pixels.find(i) for i in members}) == 1:
            kind = "exact"
        elif len({content.find(i) for i in members}) == 1:
            kind = "near"
        else:
            kind = "same-id"
        groups.append(DuplicateGroup(tuple(sorted(paths[i] for i in members)), kind))
    return sorted(groups, key=lambda g: g.paths)
