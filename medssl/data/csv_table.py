"""The generic `csv` dataset: a CSV with an image-path column and a label column.

Paths are relative to the CSV's folder and may not leave it. Optional columns give the split
(`train`/`val`/`test`) and a group id (patient, lesion) for grouped splits.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from medssl.data.files import images_in, is_junk, relpath
from medssl.data.registry import (SPLITS, DatasetAdapter, Problem, ReadOptions, SampleTable,
                                  make_samples, register)
from medssl.data.tables import read_table
from medssl.errors import MedsslError


@register
class CsvDataset(DatasetAdapter):
    name = "csv"
    generic = True
    grouping = "--csv-group-column (patient, lesion), else every image is its own group"
    title = "CSV of image paths and labels"
    download = "your own images and a CSV"
    expected_tree = """
<folder>/labels.csv      columns: path,label[,split][,group]  (--csv-path-column, --csv-label-column)
<folder>/<paths named in the CSV, relative to it>
"""

    def find_root(self, data_root) -> Path:
        """Returns the CSV file itself: the data root may name it, or a folder holding one CSV."""
        given = Path(data_root).expanduser() if data_root else self.default_root()
        if given.is_file() and given.suffix.lower() == ".csv":
            return given.resolve()
        if given.is_dir():
            csvs = sorted(p for p in given.glob("*.csv") if not is_junk(p.name))
            if len(csvs) == 1:
                return csvs[0].resolve()
            if len(csvs) > 1:
                raise MedsslError(f"{given} holds {len(csvs)} CSV files "
                                  f"({', '.join(p.name for p in csvs)}). "
                                  "Fix: pass --data-root <the CSV file> itself.")
        what = f"{given} does not exist." if not given.exists() else f"{given} holds no CSV file."
        raise MedsslError(self.missing_message(given, what))

    def read(self, csv_path: Path, options: ReadOptions) -> SampleTable:
        wanted = [options.path_column, options.label_column]
        # Asked for by name: the file must have them. Not asked for: `split` and `group` are
        # read when the file has them (as `medssl datasets` documents), "none" ignores them.
        named = [c for c in (options.split_column, options.group_column) if c and c != NONE]
        table = read_table(csv_path, wanted + named,
                           " (set the names with --csv-path-column / --csv-label-column / "
                           "--csv-split-column / --csv-group-column)", optional=DEFAULTS)
        split_column = _column(options.split_column, "split", table)
        group_column = _column(options.group_column, "group", table)
        root = csv_path.parent
        rows, problems, seen = [], [], set()
        labels = {}
        for i, rec in zip(table.index, table.to_dict("records")):  # i: the line in the file
            raw, label = rec[options.path_column], rec[options.label_column]
            where = f"{csv_path.name} row {i}"
            rel = PurePosixPath(raw.replace("\\", "/"))
            if not raw or rel.is_absolute() or ".." in rel.parts:
                problems.append(Problem(where, f"path '{raw}' must be relative to the CSV's "
                                        "folder and stay inside it"))
                continue
            if not label:
                problems.append(Problem(where, f"no label for '{raw}'"))
                continue
            split = rec.get(split_column, "").lower() if split_column else ""
            if split not in ("", *SPLITS):
                problems.append(Problem(where, f"unknown split '{split}'; expected train, val or test"))
                continue
            key = rel.as_posix()
            if key in seen:
                if labels[key] != label:  # which one is true cannot be guessed
                    problems.append(Problem(where, f"'{raw}' is listed again with label '{label}'"
                                            f" (first: '{labels[key]}'); keep one row"))
                else:
                    problems.append(Problem(where, f"'{raw}' is listed twice; the first row is "
                                            "used", "warning"))
                continue
            seen.add(key)
            labels[key] = label
            if (root / key).is_dir():
                problems.append(Problem(key, f"named in {csv_path.name} (row {i}) as an image, but "
                                        "it is a folder. Fix: name the image file inside it"))
            elif not (root / key).is_file():
                problems.append(Problem(key, f"named in {csv_path.name} (row {i}) but missing on disk"))
                continue
            group = rec.get(group_column, "") if group_column else ""
            rows.append((key, label, group or key, split))
        listed = seen | {p.path for p in problems}
        for image in images_in(root):
            if relpath(image, root) not in listed:
                problems.append(Problem(relpath(image, root), f"image not listed in "
                                        f"{csv_path.name}; ignored", "warning"))
        samples = make_samples(rows)
        classes = sorted(samples["label"].unique())
        notes = [f"labels: {csv_path.name}"]
        notes += [f"{what} from column '{c}' of {csv_path.name}"
                  for what, c in (("splits", split_column), ("groups", group_column)) if c]
        return SampleTable(self.name, root, classes, samples, problems, notes)


NONE = "none"  # --csv-split-column none / --csv-group-column none: ignore the file's column
DEFAULTS = ("split", "group")


def _column(asked: str | None, default: str, table) -> str | None:
    """The column to read: the one named by its flag, else `default` when the file has it."""
    if asked == NONE:
        return None
    if asked:
        return asked
    return default if default in table.columns else None
