"""Each published download, as it unpacks, gives exactly the real image counts."""

import pytest

from medssl.data import DataConfig, open_dataset
from medssl.data import fixtures as fx


def totals(report):
    return {split: sum(counts.values()) for split, counts in report["splits"].items()}


def test_ham10000_full_download_counts_every_image_once(tmp_path, check_json):
    root = fx.make_ham10000(tmp_path)
    code, report = check_json("--dataset", "ham10000", "--data-root", root)
    assert code == 0, report["problems"]
    assert report["total"] == 10015
    assert report["groups"] == 7470
    per_class = {c: sum(report["splits"][s][c] for s in report["splits"]) for c in report["classes"]}
    assert per_class == fx.HAM_COUNTS
    assert report["problems"] == []


@pytest.mark.parametrize("variant", [
    dict(kaggle=True), dict(metadata="tab"), dict(metadata="noext"), dict(flat=True)])
def test_every_ham10000_download_variant_reads_as_the_original(tmp_path, check_json, variant):
    """Kaggle's re-upload, a tab-separated or extension-less metadata file, one flat folder:
    each reads to the very report of the original layout (at 40 images a class: the layouts,
    not the count, differ; the full count is the test above's)."""
    reports = []
    for name, options in (("original", {}), ("variant", variant)):
        root = fx.make_ham10000(tmp_path / name, per_class=40, **options)
        code, report = check_json("--dataset", "ham10000", "--data-root", root)
        assert code == 0, report["problems"]
        reports.append({k: report[k] for k in ("total", "groups", "splits", "problems")})
    assert reports[0] == reports[1]


def test_ham10000_kaggle_duplicates_resolve_to_the_original_folders(tmp_path):
    root = fx.make_ham10000(tmp_path, per_class=5, kaggle=True)
    table = open_dataset(DataConfig("ham10000", str(root)))
    assert table.samples["path"].str.startswith("HAM10000_images_part_").all()
    assert any("duplicate" in n for n in table.notes)


def test_isic_official_split_and_reupload_copies(tmp_path, check_json):
    root = fx.make_isic(tmp_path, reupload_copies=4)
    code, report = check_json("--dataset", "isic", "--data-root", root)
    assert code == 0
    assert report["total"] == 2239 + 118
    assert totals(report)["test"] == 118
    assert report["splits"]["test"]["vascular lesion"] == 3
    assert any("re-upload copies" in n for n in report["notes"])


def test_covid19_mixed_files_keyed_by_path_not_name(tmp_path, check_json):
    root = fx.make_covid19(tmp_path)
    code, report = check_json("--dataset", "covid19", "--data-root", root)
    assert code == 0
    assert report["total"] == 251 + 66
    assert totals(report)["test"] == 66
    table = open_dataset(DataConfig("covid19", str(root)))
    names = table.samples["path"].str.rsplit("/", n=1).str[-1]
    assert names.duplicated().any()  # `01.jpeg` is in several classes ...
    assert not table.samples["path"].duplicated().any()  # ... and still counted once each


def test_chest_xray_ignores_duplicate_tree_and_macosx_and_folds_val(tmp_path, check_json):
    root = fx.make_chest_xray(tmp_path)
    code, report = check_json("--dataset", "chest_xray", "--data-root", root)
    assert code == 0
    assert report["total"] == 5856
    assert totals(report)["test"] == 624
    table = open_dataset(DataConfig("chest_xray", str(root)))
    assert not table.samples["path"].str.contains("__MACOSX|chest_xray/").any()
    assert table.samples["path"].str.startswith("val/").sum() == 16
    assert not table.samples.loc[table.samples["path"].str.startswith("val/"), "split"].eq("test").any()


def test_chest_xray_groups_by_patient(tmp_path):
    root = fx.make_chest_xray(tmp_path, per_class=30, duplicate_tree=False)
    s = open_dataset(DataConfig("chest_xray", str(root))).samples
    pneumonia = s[s["label"] == "PNEUMONIA"]
    assert pneumonia["group"].str.fullmatch(r"person\d+").all()
    assert pneumonia["group"].nunique() < len(pneumonia)  # several images per patient
    normal = s[s["label"] == "NORMAL"]
    assert normal["group"].str.fullmatch(r"im-\d+").all()


def test_chest_xray_patient_ids_ignore_organism_and_normal2_prefix():
    from pathlib import Path

    from medssl.data.chest_xray import patient_of

    assert patient_of(Path("person12_bacteria_47.jpeg")) == patient_of(Path("person12_virus_3.jpeg"))
    assert patient_of(Path("person12_bacteria_47.jpeg")) != patient_of(Path("person13_virus_3.jpeg"))
    assert patient_of(Path("IM-0115-0001.jpeg")) == patient_of(Path("NORMAL2-IM-0115-0002.jpeg"))
    assert patient_of(Path("IM-0115-0001.jpeg")) != patient_of(Path("IM-0116-0001.jpeg"))
    assert patient_of(Path("scan.jpeg")) is None


def test_idrid_numbering_restarts_per_split(tmp_path, check_json):
    root = fx.make_idrid(tmp_path)
    code, report = check_json("--dataset", "idrid", "--data-root", root)
    assert code == 0
    assert report["total"] == 413 + 103
    assert [report["splits"]["test"][g] for g in "01234"] == fx.IDRID_COUNTS["test"]
    s = open_dataset(DataConfig("idrid", str(root))).samples.set_index("path")
    assert s.loc["1. Original Images/a. Training Set/IDRiD_001.jpg", "split"] != "test"
    assert s.loc["1. Original Images/b. Testing Set/IDRiD_001.jpg", "split"] == "test"


@pytest.mark.parametrize("name, make", list(fx.MAKERS.items()))
def test_data_root_may_be_the_download_or_its_parent(tmp_path, name, make):
    root = make(tmp_path, per_class=4)
    from_root = open_dataset(DataConfig(name, str(root)))
    from_parent = open_dataset(DataConfig(name, str(root.parent)))
    assert from_root.root == from_parent.root == root.resolve()
    assert from_root.samples.equals(from_parent.samples)
