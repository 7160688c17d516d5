"""The generic datasets: any ImageFolder tree, any CSV, and the built-in demo."""

import hashlib

import pytest

from medssl.data import DataConfig, ReadOptions, open_dataset
from medssl.data import demo
from medssl.data import fixtures as fx
from medssl.errors import MedsslError


def make_tree(root, splits=("",), classes=("cats", "dogs"), n=6):
    for split in splits:
        for cls in classes:
            for i in range(n):
                fx.write(root / split / cls / f"{i}.png", fx.picture(f"{split}/{cls}/{i}", "PNG"))
    fx.write(root / ".DS_Store", b"junk")
    return root


def test_folder_flat_classes_get_carved_splits(tmp_path):
    root = make_tree(tmp_path / "mine", n=10)
    s = open_dataset(DataConfig("folder", str(root))).samples
    assert len(s) == 20
    assert set(s["split"]) == {"train", "val", "test"}


def test_folder_with_split_dirs_keeps_them(tmp_path):
    root = make_tree(tmp_path / "mine", splits=("train", "val", "test"))
    table = open_dataset(DataConfig("folder", str(root)))
    assert table.classes == ["cats", "dogs"]
    s = table.samples
    assert (s["split"] == s["path"].str.split("/").str[0]).all()


def test_folder_empty_class_is_an_error(tmp_path):
    root = make_tree(tmp_path / "mine", n=8)
    (root / "birds").mkdir()
    table = open_dataset(DataConfig("folder", str(root)))
    assert [p.path for p in table.errors] == ["birds/"]


def write_csv(folder, text):
    (folder / "labels.csv").write_text(text)
    return folder / "labels.csv"


def test_csv_paths_relative_to_the_csv_with_custom_columns(tmp_path):
    make_tree(tmp_path / "imgs", n=6)
    rows = "".join(f"imgs/{c}/{i}.png,{c},p{i // 2}\n" for c in ("cats", "dogs") for i in range(6))
    csv = write_csv(tmp_path, "\ufefffile,diagnosis,patient\r\n" + rows + "\n")
    opts = ReadOptions(path_column="file", label_column="diagnosis", group_column="patient")
    table = open_dataset(DataConfig("csv", str(csv), read_options=opts))
    assert len(table.samples) == 12 and table.classes == ["cats", "dogs"]
    assert (table.samples.groupby("group")["split"].nunique() == 1).all()
    # the folder holding exactly one CSV works as --data-root too
    assert open_dataset(DataConfig("csv", str(tmp_path), read_options=opts)).samples.equals(table.samples)


def test_csv_problems_missing_files_and_escaping_paths(tmp_path):
    make_tree(tmp_path / "imgs", n=6)
    rows = "".join(f"imgs/{c}/{i}.png,{c}\n" for c in ("cats", "dogs") for i in range(6))
    write_csv(tmp_path, "path,label\n" + rows + "imgs/cats/99.png,cats\n../secret.png,cats\n"
              + f"{tmp_path / 'imgs' / 'cats' / '0.png'},cats\n")
    fx.write(tmp_path / "imgs" / "cats" / "unlisted.png", fx.picture("unlisted", "PNG"))
    table = open_dataset(DataConfig("csv", str(tmp_path)))
    problems = {p.path: p.problem for p in table.errors}
    assert "missing on disk" in problems["imgs/cats/99.png"]
    assert "stay inside" in problems["labels.csv row 15"]
    assert "stay inside" in problems["labels.csv row 16"]  # an absolute path, even to a real image
    warnings = {p.path: p.problem for p in table.problems if p.severity == "warning"}
    assert warnings == {"imgs/cats/unlisted.png": "image not listed in labels.csv; ignored"}


def test_csv_without_its_label_column(tmp_path):
    write_csv(tmp_path, "path,diagnosis\na.png,x\n")
    with pytest.raises(MedsslError, match="has no column 'label'.*--csv-label-column"):
        open_dataset(DataConfig("csv", str(tmp_path)))


def test_demo_is_generated_once_deterministically(tmp_path, isolated_cache):
    table = open_dataset(DataConfig("demo"))
    assert table.root == (isolated_cache / f"demo-v{demo.VERSION}").resolve()
    assert table.classes == demo.CLASSES
    lesions = len(demo.CLASSES) * demo.LESIONS_PER_CLASS
    assert lesions < len(table.samples) < 2 * lesions  # one or two views of every lesion
    assert table.samples["group"].nunique() == len(demo.CLASSES) * demo.LESIONS_PER_CLASS
    assert (table.samples.groupby("group")["split"].nunique() == 1).all()

    def digest(root):
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(root.rglob("*.png")))).hexdigest()

    other = tmp_path / "elsewhere"
    again = open_dataset(DataConfig("demo", str(other)))
    assert again.root != table.root
    assert digest(again.root) == digest(table.root)


def test_uppercase_extensions_are_images(tmp_path):
    root = tmp_path / "mine"
    for cls, ext, fmt in (("cats", "JPG", "JPEG"), ("dogs", "PNG", "PNG"), ("owls", "Jpeg", "JPEG")):
        for i in range(6):
            fx.write(root / cls / f"{i}.{ext}", fx.picture(f"{cls}{i}", fmt))
    table = open_dataset(DataConfig("folder", str(root)))
    assert table.classes == ["cats", "dogs", "owls"] and len(table.samples) == 18
    assert not table.errors


def test_csv_blank_lines_extra_columns_and_row_numbers(tmp_path):
    make_tree(tmp_path / "imgs", n=6)
    rows = [f"imgs/{c}/{i}.png,{c},extra{i}" for c in ("cats", "dogs") for i in range(6)]
    rows[3] = "../outside.png,cats,x"  # a bad row after the blank lines below
    text = "path,label,notes\n\n" + "\n".join(rows[:2]) + "\n,,\n" + "\n".join(rows[2:]) + "\n\n"
    write_csv(tmp_path, text)
    table = open_dataset(DataConfig("csv", str(tmp_path)))
    assert len(table.samples) == 11 and table.classes == ["cats", "dogs"]
    # Named by its real line in the file: header, blank, 2 rows, ",,", 1 row, then it.
    assert [p.path for p in table.errors] == ["labels.csv row 7"]


def test_csv_duplicate_paths(tmp_path):
    make_tree(tmp_path / "imgs", n=6)
    rows = "".join(f"imgs/{c}/{i}.png,{c}\n" for c in ("cats", "dogs") for i in range(6))
    write_csv(tmp_path, "path,label\n" + rows + "imgs/cats/0.png,cats\nimgs/cats/1.png,dogs\n")
    table = open_dataset(DataConfig("csv", str(tmp_path)))
    assert len(table.samples) == 12  # each image once
    warnings = {p.path: p.problem for p in table.problems if p.severity == "warning"}
    assert "listed twice; the first row is used" in warnings["labels.csv row 14"]
    # Two labels for one image: which is right cannot be guessed, so it is an error.
    assert {p.path: p.problem for p in table.errors} == {
        "labels.csv row 15": "'imgs/cats/1.png' is listed again with label 'dogs' (first: "
                             "'cats'); keep one row"}


def csv_with_columns(folder, n=8):
    """A CSV with the documented optional columns: its own split (test images chosen by the
    user) and groups (two images per patient)."""
    lines = ["path,label,split,group"]
    for i in range(n * 2):
        cls = "ab"[i % 2]
        fx.write(folder / f"{i}.png", fx.picture(f"csvcols/{i}", "PNG"))
        lines.append(f"{i}.png,{cls},{'test' if i < 4 else 'train'},patient{i // 2}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_csv_split_and_group_columns_are_read_when_present(tmp_path):
    root = csv_with_columns(tmp_path / "mine")
    table = open_dataset(DataConfig("csv", str(root)))
    s = table.samples.set_index("path")
    # The user's own test set is kept exactly, not carved again at random.
    assert sorted(s.index[s["split"] == "test"], key=lambda p: int(p.split(".")[0])) == \
        [f"{i}.png" for i in range(4)]
    assert s.at["5.png", "group"] == s.at["4.png", "group"] == "patient2"
    assert any("splits from column 'split'" in n for n in table.notes)
    # `none` ignores the file's column: the splits are carved (seeded), groups kept apart.
    carved = open_dataset(DataConfig("csv", str(root), read_options=ReadOptions(
        split_column="none"))).samples.set_index("path")
    assert set(carved["split"]) == {"train", "val", "test"}
    assert list(carved.loc[carved["split"] == "test"].index) != [f"{i}.png" for i in range(4)]


def test_doubtful_labels_are_warnings_in_check(tmp_path, check_json):
    """Allowed, rarely meant: names that differ only by case, a class with no train image."""
    root = make_tree(tmp_path / "mine", classes=("covid", "Covid", "normal"), n=6)
    code, report = check_json("--dataset", "folder", "--data-root", root)
    warnings = [p["problem"] for p in report["problems"] if p["severity"] == "warning"]
    assert code == 0 and any("'Covid' and 'covid' differ only by case" in w for w in warnings)

    lines = ["path,label,split"] + [f"{i}.png,{'ab'[i % 2]},train" for i in range(8)] + \
        ["8.png,c,test", "9.png,c,test"]
    for i in range(10):
        fx.write(tmp_path / "c" / f"{i}.png", fx.picture(f"onlytest/{i}", "PNG"))
    (tmp_path / "c" / "labels.csv").write_text("\n".join(lines) + "\n")
    code, report = check_json("--dataset", "csv", "--data-root", tmp_path / "c")
    warnings = [p["problem"] for p in report["problems"] if p["severity"] == "warning"]
    assert any("class 'c' has no train images (2 in test)" in w for w in warnings), warnings


def csv_dataset(root, labels: list[str], sep: str = ","):
    """A CSV dataset of one picture per label: `path<sep>label` rows in labels.csv."""
    for i in range(len(labels)):
        fx.write(root / f"{i}.png", fx.picture(f"{root.name}/{i}", "PNG"))
    rows = [f"path{sep}label"] + [f"{i}.png{sep}{label}" for i, label in enumerate(labels)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_labels_that_are_one_number_are_warned_about(tmp_path, check_json):
    # A CSV's `1` and `1.0` (or `01`) become two classes: said, as case-only differences are.
    root = csv_dataset(tmp_path / "n", [("1", "1.0", "01", "2")[i % 4] for i in range(16)])
    code, report = check_json("--dataset", "csv", "--data-root", root)
    warnings = [p["problem"] for p in report["problems"] if p["severity"] == "warning"]
    assert code == 0 and any("'01' and '1' and '1.0' are the same number" in w
                             for w in warnings), warnings
    assert not any("'2'" in w for w in warnings)


def test_files_no_adapter_reads_are_counted_by_kind_in_check(tmp_path, check_json):
    # 20 PNGs read, 6 NIfTI volumes and 2 GIFs beside them: said, by kind, never skipped in
    # silence. (DICOM files are read since issue 34: test_medical_images.py.) A file without a
    # suffix that is not DICOM (no marker after its preamble) is counted too, not read.
    root = make_tree(tmp_path / "mine", n=10)
    for i in range(6):
        fx.write(root / "cats" / f"scan{i}.nii", b"\x5c\x01")
    for i in range(2):
        fx.write(root / "dogs" / f"anim{i}.gif", b"GIF89a")
    fx.write(root / "dogs" / "LICENSE", b"free for research")
    code, report = check_json("--dataset", "folder", "--data-root", root)
    assert code == 0 and report["total"] == 20
    assert any("not read: (no suffix): 1 file; .gif: 2 files (GIF" in n and
               ".nii: 6 files (NIfTI" in n for n in report["notes"]), report["notes"]


def test_a_semicolon_separated_csv_is_read(tmp_path, check_json):
    # A spreadsheet export in many locales: `path;label`, not one column named 'path;label'.
    root = csv_dataset(tmp_path / "s", ["ab"[i % 2] for i in range(10)], sep=";")
    code, report = check_json("--dataset", "csv", "--data-root", root)
    assert code == 0 and report["classes"] == ["a", "b"] and report["total"] == 10


def test_a_class_folder_named_like_a_split_is_a_class(tmp_path, check_json):
    # `test/` of images beside `control/`: two classes, not a test split with one class beside.
    root = make_tree(tmp_path / "mine", classes=("test", "control"), n=6)
    code, report = check_json("--dataset", "folder", "--data-root", root)
    assert code == 0 and report["classes"] == ["control", "test"] and report["total"] == 12
