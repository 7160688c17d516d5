"""The built-in `demo` dataset: synthetic dermoscopy-like lesions, generated offline on first use.

Four classes differ by border and texture, with overlap:
- nevus: round, smooth border, even pigment;
- melanoma: irregular, blurred border, blotches of a darker and a lighter tone;
- keratosis: moderately irregular, with fine waxy ridges;
- vascular: clusters of lobules.
Colour is drawn from one palette for every class, and skin tone, lighting, size, position, hairs
and noise vary in every class: nothing but structure tells the classes apart, which is what
self-supervision with colour jitter should learn and a random network does not. Each lesion is imaged
once or twice (rotated, shifted, relit), so `lesionNNNN` is a group that splits must keep together.
Generation is seeded and needs no network: the same files appear on every machine.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from medssl.data.files import cache_dir
from medssl.data.folder import scan_class_folders
from medssl.data.registry import DatasetAdapter, ReadOptions, SampleTable, make_samples, register

CLASSES = ["keratosis", "melanoma", "nevus", "vascular"]
VERSION = 2
SIZE = 96  # stored size; training crops and resizes from it
CANVAS = 160  # rendered size: any rotation leaves a clean centre square of 113 px to crop views from
LESIONS_PER_CLASS = 120
SEED = 20240601
MARKER = ".medssl-demo"
PALETTE = [[0.44, 0.28, 0.19], [0.26, 0.15, 0.12], [0.58, 0.42, 0.29], [0.62, 0.20, 0.30],
           [0.38, 0.37, 0.48]]  # brown, dark brown, tan, red-purple, blue-grey
_GROUP = re.compile(r"^(lesion\d+)_\d+$")


def _smooth_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """A low-frequency random field in [0, 1]: blotches of pigment, uneven lighting."""
    small = rng.random((cells, cells)).astype(np.float32)
    img = Image.fromarray((small * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def _tone(rng: np.random.Generator, base: list[float], spread: float) -> np.ndarray:
    """A colour near `base`: mostly lighter or darker, a little shifted per channel."""
    return np.asarray(base) * rng.uniform(1 - spread, 1 + spread) + rng.uniform(-0.03, 0.03, 3)


def _render_lesion(rng: np.random.Generator, cls: str) -> np.ndarray:
    """One lesion on skin, float RGB in [0, 1] on a CANVAS x CANVAS grid."""
    n = CANVAS
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    skin = _tone(rng, [0.86, 0.66, 0.55], 0.12)
    img = np.broadcast_to(skin, (n, n, 3)).copy()
    img *= (0.85 + 0.3 * _smooth_noise(rng, 3, n))[..., None]

    cx, cy = 0.5 + rng.normal(0, 0.04, 2)
    radius = rng.uniform(0.16, 0.26)
    rr, theta = np.hypot(xx - cx, yy - cy), np.arctan2(yy - cy, xx - cx)
    if cls == "vascular":
        mask = np.zeros((n, n), np.float32)
        for _ in range(rng.integers(3, 7)):
            lx, ly = cx + rng.normal(0, radius * 0.6), cy + rng.normal(0, radius * 0.6)
            lr = radius * rng.uniform(0.3, 0.55)
            mask = np.maximum(mask, 1 / (1 + np.exp((np.hypot(xx - lx, yy - ly) - lr) / 0.012)))
    else:
        irregularity = {"nevus": 0.03, "keratosis": 0.12, "melanoma": 0.35}[cls] * rng.uniform(0.6, 1.4)
        border = np.ones_like(theta)
        for k in range(2, 9):
            border += irregularity / k * rng.normal() * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        edge = {"nevus": 0.008, "keratosis": 0.012, "melanoma": 0.02}[cls]
        mask = 1 / (1 + np.exp((rr - radius * border) / edge))

    # Colour says nothing about the class: every lesion draws its pigment from one shared palette,
    # as lighting, cameras and skin differ between clinics. Classes differ by border and texture,
    # cues that survive SimCLR's colour jitter and that a random network does not single out.
    colour = _tone(rng, PALETTE[rng.integers(len(PALETTE))], 0.15)
    if cls == "nevus":  # even, slightly darker at the centre
        pigment = colour * (0.85 + 0.25 * np.clip(rr / radius, 0, 1))[..., None]
    elif cls == "melanoma":  # blotches of a darker and a lighter tone of the same pigment
        mix = np.clip(_smooth_noise(rng, 6, n) * 1.6 - 0.3, 0, 1)[..., None]
        pigment = colour * 0.55 * (1 - mix) + np.minimum(colour * 1.5, 1) * mix
    elif cls == "keratosis":  # fine waxy ridges
        freq, angle = rng.uniform(14, 22), rng.uniform(0, np.pi)
        stripes = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)) + 3 * _smooth_noise(rng, 5, n))
        speckle = rng.normal(0, 0.05, (n, n))
        pigment = colour * (1 + 0.35 * stripes + speckle)[..., None]
    else:  # vascular: lobules, each with a dark rim
        pigment = colour * (0.85 + 0.3 * _smooth_noise(rng, 8, n))[..., None]
        mask = mask * (0.75 + 0.25 * (mask > 0.9))

    img = img * (1 - mask[..., None]) + pigment * mask[..., None]
    for _ in range(rng.poisson(0.3)):  # hairs: thin dark arcs across skin and lesion alike
        p0, d = rng.uniform(0, 1, 2), rng.normal(0, 1, 2)
        d /= np.linalg.norm(d) + 1e-6
        dist = np.abs((xx - p0[0]) * d[1] - (yy - p0[1]) * d[0] + 0.3 * rng.normal() * (xx - p0[0]) ** 2)
        img *= (1 - 0.6 * np.exp(-(dist / 0.004) ** 2))[..., None]
    return np.clip(img, 0, 1)


def _view(rng: np.random.Generator, lesion: np.ndarray) -> Image.Image:
    """One photograph of a lesion: rotated, shifted, relit, with sensor noise, at SIZE px."""
    img = Image.fromarray((lesion * 255).astype(np.uint8))
    img = img.rotate(rng.uniform(0, 360), resample=Image.BILINEAR, expand=False,
                     fillcolor=tuple(int(v) for v in np.asarray(img)[2, 2]))
    side = SIZE * 1.04
    x0, y0 = (CANVAS - side) / 2 + rng.uniform(-6, 6, 2)
    img = img.resize((SIZE, SIZE), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
    arr = np.asarray(img, np.float32) * rng.uniform(0.85, 1.15) + rng.normal(0, 6, (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def generate(target: Path) -> None:
    """Write the demo dataset to `target`, atomically: a half-written folder never looks done."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-tmp-", dir=target.parent))
    try:
        rng = np.random.default_rng(SEED)
        lesion_id = 0
        for cls in CLASSES:
            (tmp / cls).mkdir()
            for _ in range(LESIONS_PER_CLASS):
                lesion = _render_lesion(rng, cls)
                for k in range(1 + int(rng.random() < 0.5)):
                    _view(rng, lesion).save(tmp / cls / f"lesion{lesion_id:04d}_{k}.png")
                lesion_id += 1
        (tmp / MARKER).write_text(f"medssl demo dataset v{VERSION}, seed {SEED}\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def group_of(path: Path) -> str | None:
    m = _GROUP.match(path.stem)
    return m.group(1) if m else None


@register
class DemoDataset(DatasetAdapter):
    name = "demo"
    generic = True
    grouping = "lesion: lesionNNNN in the file name (one or two images of each)"
    title = "built-in synthetic demo of lesion-like images"
    classes = CLASSES
    download = "nothing to download: generated on first use"
    expected_tree = f"""
<cache>/demo-v{VERSION}/<class>/lesionNNNN_K.png   ($MEDSSL_CACHE_DIR or ~/.cache/medssl, or --data-root)
"""

    def find_root(self, data_root) -> Path:
        base = Path(data_root).expanduser() if data_root else cache_dir()
        if self.is_root(base):
            return base.resolve()
        target = base / f"demo-v{VERSION}"
        if not self.is_root(target):
            generate(target)
        return target.resolve()

    def is_root(self, path: Path) -> bool:
        marker = path / MARKER
        return marker.is_file() and f"v{VERSION}," in marker.read_text()

    def read(self, root: Path, options: ReadOptions) -> SampleTable:
        rows, problems, _ = scan_class_folders(root, root, "", self.classes, group_of=group_of)
        return SampleTable(self.name, root, list(self.classes), make_samples(rows), problems)
