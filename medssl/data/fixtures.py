"""Fake downloads in each published layout, with tiny images, for tests and dry runs.

`per_class=None` writes the real image counts (HAM10000 10,015 with 7,470 lesions, ISIC 2239+118,
Covid19 251+66, chest X-ray 5,856, IDRiD 413+103); a number caps every class of every split, for
fast tests. Each carries the quirks of the real download: duplicate trees, `__MACOSX`, `._*`,
`.DS_Store`, metadata variants, CRLF, mixed extensions and colour modes. Every file holds its own
picture (seeded by its name), except where the real download holds one picture twice: at full
size, ISIC's 155 ids filed twice and Covid19's five images in both train and test are copies here
too, in the real pattern (counted from the real file lists).

    python -m medssl.data.fixtures covid19 /tmp/fixtures     # prints the folder it wrote
    python -m medssl.data.fixtures digits /tmp/real          # scikit-learn's real digits, as folders
"""

from __future__ import annotations

import io
import shutil
import sys
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00" + b"Mac OS X        " + bytes(58)

HAM_COUNTS = {"nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115}
HAM_LESION_SIZES = {1: 5514, 2: 1423, 3: 490, 4: 34, 5: 5, 6: 4}  # images per lesion, real
ISIC_COUNTS = {  # (train, test)
    "actinic keratosis": (114, 16), "basal cell carcinoma": (376, 16), "dermatofibroma": (95, 16),
    "melanoma": (438, 16), "nevus": (357, 16), "pigmented benign keratosis": (462, 16),
    "seborrheic keratosis": (77, 3), "squamous cell carcinoma": (181, 16), "vascular lesion": (139, 3)}
COVID_COUNTS = {"Covid": (111, 26), "Normal": (70, 20), "Viral Pneumonia": (70, 20)}
CHEST_COUNTS = {"train": {"NORMAL": 1341, "PNEUMONIA": 3875}, "val": {"NORMAL": 8, "PNEUMONIA": 8},
                "test": {"NORMAL": 234, "PNEUMONIA": 390}}
IDRID_COUNTS = {"train": [134, 20, 136, 74, 49], "test": [34, 5, 32, 19, 13]}


# Skin Cancer ISIC: ids filed twice, as (original folder, second folder): count. From the real
# Kaggle file list: 18 test images have a copy in Train, 137 Train images a copy in Train under
# another class.
ISIC_COPIES = {(("Test", "actinic keratosis"), ("Train", "nevus")): 15,
               (("Test", "seborrheic keratosis"), ("Train", "melanoma")): 3,
               (("Train", "actinic keratosis"), ("Train", "nevus")): 62,
               (("Train", "melanoma"), ("Train", "seborrheic keratosis")): 75}
# Covid19: files in both train/Covid and test/Covid under one name, seen in the real file list.
COVID_COPIES = ("COVID-00003b.jpg", "COVID-00012.jpg", "COVID-00022.jpg", "COVID-00033.jpg",
                "COVID-00037.jpg")


def seed_of(name: str) -> int:
    """A picture's seed from a file's name: every file its own picture, the same on every run."""
    return zlib.crc32(name.encode())


@lru_cache(maxsize=None)
def image_bytes(fmt: str = "JPEG", mode: str = "RGB", size: int = 16, seed: int = 0) -> bytes:
    """A tiny real image (random pixels: no two seeds give pictures that look alike)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return encode(Image.fromarray(arr).convert(mode), fmt)


def picture(name: str, fmt: str = "JPEG", mode: str = "RGB", size: int = 16) -> bytes:
    """The picture of the file called `name` (see `seed_of`)."""
    return image_bytes(fmt, mode, size, seed_of(name))


def encode(img: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def xray_like(seed: int, size: int = 128) -> Image.Image:
    """A chest-X-ray-like grey picture: one anatomy for everyone (body, two lungs, ribs, spine,
    heart), with each patient's own position, size, rib shapes, lung markings, exposure and
    noise. Pictures of different seeds look alike as thumbnails, as real chest X-rays do: the
    duplicate search must tell them apart (tests, bench/duplicates.py)."""
    rng = np.random.default_rng(seed)
    n = size
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    cx, cy, sc = 0.5 + rng.normal(0, 0.03), 0.52 + rng.normal(0, 0.03), rng.uniform(0.85, 1.1)
    img = np.full((n, n), rng.uniform(0.02, 0.1), np.float32)
    body = ((xx - cx) / (0.42 * sc)) ** 2 + ((yy - cy) / (0.55 * sc)) ** 2 < 1
    img[body] = rng.uniform(0.55, 0.75)
    lungs = np.zeros_like(img)
    for side in (-1, 1):
        lx, ly = cx + side * rng.uniform(0.15, 0.2) * sc, cy - rng.uniform(0.02, 0.08)
        rx, ry = rng.uniform(0.11, 0.15) * sc, rng.uniform(0.28, 0.34) * sc
        lungs = np.maximum(lungs, np.clip(1.3 - ((xx - lx) / rx) ** 2 - ((yy - ly) / ry) ** 2, 0, 1))
    img -= lungs * rng.uniform(0.35, 0.5)
    ribs = np.zeros_like(img)
    y0, spacing = cy - 0.3 * sc, rng.uniform(0.055, 0.075) * sc
    for k in range(10):  # each rib its own height, curve and width
        yk = y0 + k * spacing + rng.normal(0, 0.006)
        bend = rng.uniform(0.6, 1.2)
        width = rng.uniform(0.008, 0.014)
        ribs += np.exp(-(((yy - yk - bend * (xx - cx) ** 2) / width) ** 2))
    img += lungs * np.clip(ribs, 0, 1) * rng.uniform(0.12, 0.2)
    img += np.exp(-((xx - cx) / 0.04) ** 2) * body * rng.uniform(0.1, 0.2)  # spine
    hx, hy = cx + rng.uniform(0.02, 0.08), cy + rng.uniform(0.08, 0.15)
    img += np.exp(-(((xx - hx) / 0.12) ** 2 + ((yy - hy) / 0.1) ** 2)) * rng.uniform(0.15, 0.3)
    markings = np.zeros_like(img)  # lung markings: smooth random texture at three scales
    for cells, amp in ((12, 0.5), (24, 0.35), (48, 0.25)):
        small = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
        markings += amp * np.asarray(small.resize((n, n), Image.BICUBIC), np.float32) / 255
    img += lungs * (markings - markings.mean()) * rng.uniform(0.1, 0.2)
    img += rng.normal(0, 0.02, img.shape)
    img = np.clip(img, 0, 1) ** rng.uniform(0.8, 1.25)
    return Image.fromarray((img * 255).astype(np.uint8), "L")


def copy_of(img: Image.Image, how: str, rng: np.random.Generator | None = None) -> bytes:
    """Bytes of a copy of `img`: "png" (the same pixels, another format), "resized" (60-85% and
    re-encoded as JPEG), "cropped" (up to 2% off each side, re-encoded) or "both"."""
    rng = rng or np.random.default_rng(0)
    if how == "png":
        return encode(img, "PNG")
    w, h = img.size
    if how in ("cropped", "both"):
        l, t, r, b = rng.uniform(0.005, 0.02, 4)
        img = img.crop((int(l * w), int(t * h), w - int(r * w), h - int(b * h)))
    if how in ("resized", "both"):
        f = rng.uniform(0.6, 0.85)
        img = img.resize((round(img.size[0] * f), round(img.size[1] * f)), Image.BICUBIC)
    return encode(img.convert("RGB"), "JPEG", quality=int(rng.integers(75, 92)))


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _cap(n: int, per_class: int | None) -> int:
    return n if per_class is None else min(n, per_class)


def _junk(folder: Path) -> None:
    write(folder / ".DS_Store", b"\x00\x00\x00\x01Bud1")


def make_ham10000(parent: Path, per_class: int | None = None, kaggle: bool = False,
                  metadata: str = "csv", flat: bool = False, seed: int = 0) -> Path:
    """Dataverse layout (or Kaggle's, with lowercase duplicate folders and hmnist CSVs).

    `metadata`: "csv", "tab" (tab-separated, quoted, as Dataverse serves it) or "noext".
    """
    rng = np.random.default_rng(seed)
    root = parent / ("skin-cancer-mnist-ham10000" if kaggle else "HAM10000")
    counts = {dx: _cap(n, per_class) for dx, n in HAM_COUNTS.items()}
    if per_class is None:
        sizes = [s for s, k in HAM_LESION_SIZES.items() for _ in range(k)]
    else:
        sizes, left = [], sum(counts.values())
        while left:
            sizes.append(min(left, int(rng.integers(1, 4))))
            left -= sizes[-1]
    # Largest lesions first, each to a class that still needs that many images, weighted by need,
    # so that the per-class totals come out exact.
    need, rows, image_no = dict(counts), [], 24306
    for lesion_no, size in enumerate(sorted(sizes, reverse=True)):
        fits = [dx for dx in need if need[dx] >= size]
        weights = np.array([need[dx] for dx in fits], dtype=float)
        dx = fits[int(rng.choice(len(fits), p=weights / weights.sum()))]
        need[dx] -= size
        for _ in range(size):
            rows.append((f"HAM_{lesion_no:07d}", f"ISIC_{image_no:07d}", dx))
            image_no += 1
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]

    header = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
    if not kaggle:
        header.append("dataset")
    lines = []
    for i, (lesion, image, dx) in enumerate(rows):
        age = "" if i % 170 == 0 else f"{float(rng.integers(1, 18) * 5):.1f}"
        values = [lesion, image, dx, "histo", age, "male", "back"] + ([] if kaggle else ["vidir_modern"])
        lines.append(values)
    if metadata == "tab":
        text = "\t".join(header) + "\n" + "".join(
            "\t".join(f'"{v}"' if not v.replace(".", "").isdigit() else v for v in vals) + "\n"
            for vals in lines)
        name = "HAM10000_metadata.tab"
    else:
        text = ",".join(header) + "\n" + "".join(",".join(vals) + "\n" for vals in lines)
        name = "HAM10000_metadata.csv" if metadata == "csv" else "HAM10000_metadata"
    write(root / name, text.encode())

    folders = ["HAM10000_images_part_1", "HAM10000_images_part_2"]
    if kaggle:
        folders += ["ham10000_images_part_1", "ham10000_images_part_2"]
        write(root / "hmnist_8_8_L.csv", b"pixel0000,label\n0,2\n")
    half = min(5000, len(rows) // 2)
    for i, (_, image, _) in enumerate(rows):
        jpg = picture(image)
        if flat:
            write(root / f"{image}.jpg", jpg)
            continue
        part = 0 if i < half else 1
        for f in folders[part::2]:  # Kaggle's lowercase folders: the same files again
            write(root / f / f"{image}.jpg", jpg)
    _junk(root)
    write(parent / "__MACOSX" / root.name / "._HAM10000_metadata.csv", APPLEDOUBLE)
    return root


def make_isic(parent: Path, per_class: int | None = None, reupload_copies: int = 3,
              real_copies: bool | None = None) -> Path:
    """`real_copies` (default: at full size) files pictures twice as the real download does
    (`ISIC_COPIES`): the second folder holds the first's file, same name, same bytes."""
    root = parent / "Skin cancer ISIC The International Skin Imaging Collaboration"
    image_no = 10000
    names: dict[tuple[str, str], list[str]] = {}
    for split_no, split in enumerate(("Train", "Test")):
        for cls, counts in ISIC_COUNTS.items():
            n = _cap(counts[split_no], per_class)
            names[(split, cls)] = [f"ISIC_{image_no + i:07d}.jpg" for i in range(n)]
            image_no += n
    if per_class is None if real_copies is None else real_copies:
        taken = {folder: 0 for folder in names}  # files of each folder already in a pair
        for (first, second), n in ISIC_COPIES.items():
            for _ in range(n):
                names[second][taken[second]] = names[first][taken[first]]
                taken[first] += 1
                taken[second] += 1
    for (split, cls), files in names.items():
        folder = root / split / cls
        for name in files:
            write(folder / name, picture(name))
        _junk(folder)
    # Some re-uploads carry browser copies `name(1).jpg` beside `name.jpg`: not new images.
    train_nevus = sorted((root / "Train" / "nevus").glob("*.jpg"))
    for p in train_nevus[:reupload_copies]:
        write(p.with_name(f"{p.stem}(1).jpg"), p.read_bytes())
    return root


def make_covid19(parent: Path, per_class: int | None = None,
                 real_copies: bool | None = None) -> Path:
    """Mixed .jpeg/.jpg/.png, grayscale and RGB; the same file name in several classes (different
    pictures). `real_copies` (default: at full size): the five Covid pictures the real download
    has in both train and test (`COVID_COPIES`)."""
    root = parent / "Covid19-dataset"
    kinds = [(".jpeg", "JPEG", "RGB"), (".jpg", "JPEG", "L"), (".png", "PNG", "RGB"),
             (".jpeg", "JPEG", "L"), (".png", "PNG", "L")]
    copies = per_class is None if real_copies is None else real_copies
    for split_no, split in enumerate(("train", "test")):
        for cls, counts in COVID_COUNTS.items():
            for i in range(_cap(counts[split_no], per_class)):
                ext, fmt, mode = kinds[i % len(kinds)]
                rel = f"{split}/{cls}/{i + 1:02d}{ext}"
                if copies and cls == "Covid" and i < len(COVID_COPIES):
                    rel, fmt, mode = f"{split}/{cls}/{COVID_COPIES[i]}", "JPEG", "RGB"
                    write(root / rel, picture(COVID_COPIES[i]))  # train and test: one picture
                    continue
                write(root / rel, picture(rel, fmt, mode))
    return root


def make_chest_xray(parent: Path, per_class: int | None = None, duplicate_tree: bool = True,
                    seed: int = 0) -> Path:
    """`chest_xray/` with a nested full duplicate, `__MACOSX` AppleDoubles and `.DS_Store`s.

    Pneumonia files are `person<N>_<bacteria|virus>_<M>.jpeg`, several per patient; patient
    numbers never repeat across splits. Normal files carry no patient id.
    """
    rng = np.random.default_rng(seed)
    outer = parent / "chest_xray"
    trees = [outer, outer / "chest_xray"] if duplicate_tree else [outer]
    person, image_no = 1, 1
    files: list[tuple[str, bytes]] = []
    for split, classes in CHEST_COUNTS.items():
        for cls, n in classes.items():
            n = _cap(n, per_class)
            made = 0
            while made < n:
                if cls == "NORMAL":
                    prefix = "NORMAL2-IM" if made % 3 else "IM"
                    names = [f"{prefix}-{image_no:04d}-0001.jpeg"]
                    image_no += 1
                else:
                    kind = "bacteria" if made % 4 else "virus"
                    k = min(n - made, int(rng.integers(1, 4)))
                    names = [f"person{person}_{kind}_{image_no + j}.jpeg" for j in range(k)]
                    person, image_no = person + 1, image_no + k
                for name in names:
                    rel = f"{split}/{cls}/{name}"
                    files.append((rel, picture(rel, "JPEG", "RGB" if made % 25 == 0 else "L")))
                    made += 1
    for tree in trees:
        for rel, data in files:
            write(tree / rel, data)
        for d in ("", "train", "test", "train/NORMAL"):
            _junk(tree / d)
    for rel, _ in files:  # macOS resource forks: `._name.jpeg`, same folder names, not images
        p = Path(rel)
        write(outer / "__MACOSX" / "chest_xray" / p.parent / f"._{p.name}", APPLEDOUBLE)
    return outer


def make_idrid(parent: Path, per_class: int | None = None, header_space: bool = True) -> Path:
    """Numbering restarts per split; the training CSV has CRLF and nine empty trailing columns."""
    root = parent / "B. Disease Grading"
    for split, folder, csv_name, empties in (
            ("train", "a. Training Set", "a. IDRiD_Disease Grading_Training Labels.csv", 9),
            ("test", "b. Testing Set", "b. IDRiD_Disease Grading_Testing Labels.csv", 0)):
        grades = [g for g, n in enumerate(IDRID_COUNTS[split]) for _ in range(_cap(n, per_class))]
        risk = "Risk of macular edema " if header_space and split == "train" else "Risk of macular edema"
        lines = [",".join(["Image name", "Retinopathy grade", risk] + [""] * empties)]
        for i, grade in enumerate(grades, start=1):
            name = f"IDRiD_{i:03d}"
            write(root / "1. Original Images" / folder / f"{name}.jpg", picture(f"{split}/{name}"))
            lines.append(",".join([name, str(grade), str(i % 3)] + [""] * empties))
        write(root / "2. Groundtruths" / csv_name, ("\r\n".join(lines) + "\r\n").encode())
    return root


def make_digits(parent: Path, per_class: int | None = None, size: int = 32) -> Path:
    """A small *real* labelled image set that needs no network: scikit-learn's bundled handwritten
    digits (1,797 scans, 8x8, 10 classes), upscaled to `size` px and written as class folders for
    the `folder` dataset. Used to check that SSL learns something on real images, not only on demo.
    """
    from sklearn.datasets import load_digits

    root = parent / "digits"
    digits = load_digits()
    seen: dict[int, int] = {}
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        seen[label] = seen.get(label, 0) + 1
        if per_class is not None and seen[label] > per_class:
            continue
        grey = Image.fromarray((pixels * (255 / 16)).astype(np.uint8), "L")
        folder = root / f"digit{label}"
        folder.mkdir(parents=True, exist_ok=True)
        grey.resize((size, size), Image.BICUBIC).save(folder / f"{i:04d}.png")
    return root


# pydicom's own test files (shipped inside the package), by class: CT and MR pictures and
# colour ones, in every encoding the DICOM reader must decode. The MR files are one picture in
# six encodings (little and big endian, implicit VR, RLE, JPEG 2000 and JPEG-LS lossless); three
# colour files are one picture as RLE, JPEG lossless and JPEG 2000: exact copies of each other.
# examples_ybr_color.dcm is a 30-frame ultrasound loop (its first frame is used, with a warning).
DICOM_FILES = {
    "ct": ["CT_small.dcm", "693_J2KI.dcm", "JPGExtended.dcm", "JPEG2000.dcm",
           "JPEGLSNearLossless_16.dcm", "image_dfl.dcm"],
    "mr": ["MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
           "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
           "examples_overlay.dcm"],
    "rgb": ["SC_rgb_rle.dcm", "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_gdcm_KY.dcm",
            "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_jls_lossy_line.dcm", "ExplVR_BigEnd.dcm",
            "examples_rgb_color.dcm", "examples_jpeg2k.dcm", "examples_ybr_color.dcm"],
}


def make_dicom(parent: Path, per_class: int | None = None) -> Path:
    """pydicom's bundled test files as a `folder` dataset (DICOM_FILES), plus the first MR file
    once more under a name without a suffix (`IM0001`: found by its preamble)."""
    from pydicom.data import get_testdata_file

    root = parent / "dicom"
    for label, names in DICOM_FILES.items():
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for name in names[:per_class]:
            shutil.copyfile(get_testdata_file(name), folder / name)
    shutil.copyfile(get_testdata_file("MR_small.dcm"), root / "mr" / "IM0001")
    return root


def dicom_file(path: Path, pixels: np.ndarray, patient: str = "P1",
               photometric: str = "MONOCHROME2", window: tuple | None = None) -> Path:
    """A DICOM file holding these 16-bit grey pixels: pydicom's MR_small.dcm with its picture,
    PatientID and photometric interpretation replaced (and its window, or none)."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.set_pixel_data(pixels.astype(np.uint16), photometric, 16)
    ds.PatientID = patient
    for key in ("WindowCenter", "WindowWidth"):
        if key in ds:
            delattr(ds, key)
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_grey_dicom(parent: Path, patients: int = 6, per_patient: int = 2,
                    size: int = 48) -> Path:
    """A grey 16-bit DICOM `folder` dataset of two classes told apart by a bright or a dark
    disc (X-ray-like backgrounds, 12-bit values), several pictures per PatientID."""
    root = parent / "grey_dicom"
    for c, label in enumerate(("clear", "opacity")):
        for p in range(patients):
            for k in range(per_patient):
                seed = seed_of(f"{label}{p}_{k}")
                base = np.asarray(xray_like(seed, size), dtype=np.float64) * 12
                yy, xx = np.mgrid[:size, :size]
                disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 5) ** 2
                base[disc] = 3600 if c else 200
                dicom_file(root / label / f"{label}{p}_{k}.dcm", base, patient=f"{label}-{p}")
    return root


MAKERS = {"ham10000": make_ham10000, "isic": make_isic, "covid19": make_covid19,
          "chest_xray": make_chest_xray, "idrid": make_idrid}
# Not a fake download: a real, small labelled image set in the `folder` layout.
OFFLINE_SETS = {"digits": make_digits, "dicom": make_dicom}


if __name__ == "__main__":
    everything = {**MAKERS, **OFFLINE_SETS}
    if len(sys.argv) not in (3, 4) or sys.argv[1] not in everything:
        sys.exit(f"usage: python -m medssl.data.fixtures {{{','.join(everything)}}} OUT_DIR [PER_CLASS]")
    cap = int(sys.argv[3]) if len(sys.argv) == 4 else None
    print(everything[sys.argv[1]](Path(sys.argv[2]), cap))
