"""HAM10000, 7 classes: Harvard Dataverse (doi:10.7910/DVN/DBW86T) or the Kaggle mirror.

Images sit in `HAM10000_images_part_{1,2}/` or flat; Kaggle adds lowercase duplicate folders with
the same files again. The metadata (`.csv`, `.tab`, or no extension) gives `lesion_id`, the group
that keeps the up-to-six images of one lesion in one split.
"""

from __future__ import annotations

from pathlib import Path

from medssl.data.files import images_in, is_junk, relpath
from medssl.data.registry import (DatasetAdapter, Problem, ReadOptions, SampleTable, make_samples,
                                  register)
from medssl.data.tables import read_table

METADATA_NAMES = ("ham10000_metadata.csv", "ham10000_metadata.tab", "ham10000_metadata")


def metadata_file(folder: Path) -> Path | None:
    files = {p.name.lower(): p for p in folder.iterdir() if p.is_file() and not is_junk(p.name)}
    return next((files[n] for n in METADATA_NAMES if n in files), None)


def canonical_copy(paths: list[Path], root: Path) -> Path:
    """Of several copies of one image, the one in the original (not all-lowercase) folder."""
    return min(paths, key=lambda p: (p.parent.name.islower(), relpath(p, root)))


@register
class Ham10000Dataset(DatasetAdapter):
    name = "ham10000"
    title = "HAM10000"
    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    grouping = "lesion_id from the metadata (up to 6 images of one lesion)"
    image_id_pattern = r"ISIC_\d+"
    download = ("https://doi.org/10.7910/DVN/DBW86T (Harvard Dataverse) or "
                "https://www.kaggle.com/datasets/kmader/skin-cancer-mnist-ham10000")
    expected_tree = """
<folder>/
  HAM10000_metadata.csv   (or .tab, or no extension)
  HAM10000_images_part_1/ISIC_*.jpg   5000 images
  HAM10000_images_part_2/ISIC_*.jpg   5015 images
  (Kaggle's lowercase duplicates ham10000_images_part_*/ are ignored; flat images work too)
"""

    def is_root(self, path: Path) -> bool:
        return path.is_dir() and metadata_file(path) is not None

    def read(self, root: Path, options: ReadOptions) -> SampleTable:
        meta_path = metadata_file(root)
        meta = read_table(meta_path, ["lesion_id", "image_id", "dx"])
        meta_name = meta_path.name

        copies: dict[str, list[Path]] = {}
        for p in images_in(root):
            copies.setdefault(p.stem, []).append(p)
        duplicates = sum(len(v) - 1 for v in copies.values())

        rows, problems, seen = [], [], set()
        for i, rec in zip(meta.index, meta.itertuples(index=False)):  # i: the line in the file
            image_id, dx, lesion = rec.image_id, rec.dx, rec.lesion_id
            where = f"{meta_name} row {i}"
            if image_id in seen:
                problems.append(Problem(where, f"image '{image_id}' is listed twice; the first "
                                        "row is used", "warning"))
                continue
            seen.add(image_id)
            if dx not in self.classes:
                problems.append(Problem(where, f"unknown label dx='{dx}' for {image_id}; expected "
                                        f"one of: {', '.join(self.classes)}"))
                continue
            if image_id not in copies:
                problems.append(Problem(f"{image_id}.jpg", f"listed in {meta_name} (row {i}) but "
                                        "no such image file under the root"))
                continue
            path = canonical_copy(copies[image_id], root)
            rows.append((relpath(path, root), dx, lesion or image_id, ""))
        for stem in sorted(set(copies) - seen):
            problems.append(Problem(relpath(copies[stem][0], root),
                                    f"image not listed in {meta_name}; ignored", "warning"))
        notes = [f"metadata: {meta_name}"]
        if duplicates:
            notes.append(f"ignored {duplicates} duplicate copies of images (e.g. Kaggle's "
                         "lowercase ham10000_images_part_* folders)")
        return SampleTable(self.name, root, list(self.classes), make_samples(rows), problems, notes)
