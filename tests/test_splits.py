"""Carved splits: seeded, stratified, grouped; saved and read back exactly."""

import pandas as pd
import pytest

from medssl.data import DataConfig, open_dataset
from medssl.data import fixtures as fx
from medssl.data.splits import read_split_csv, write_split_csv
from medssl.errors import MedsslError


@pytest.fixture(scope="module")
def ham_full(tmp_path_factory):
    return fx.make_ham10000(tmp_path_factory.mktemp("ham"))


def test_no_lesion_in_two_splits_and_shares_within_two_points(ham_full):
    s = open_dataset(DataConfig("ham10000", str(ham_full), seed=3)).samples
    assert (s.groupby("group")["split"].nunique() == 1).all()
    overall = s["label"].value_counts(normalize=True)
    for split, part in s.groupby("split"):
        share = part["label"].value_counts(normalize=True).reindex(overall.index, fill_value=0)
        assert (share - overall).abs().max() < 0.02, split
    sizes = s["split"].value_counts(normalize=True)
    assert sizes["test"] == pytest.approx(0.2, abs=0.01)
    assert sizes["val"] == pytest.approx(0.8 * 0.15, abs=0.01)


def test_same_seed_same_split_other_seed_other_split(tmp_path):
    root = fx.make_ham10000(tmp_path, per_class=40)
    a = open_dataset(DataConfig("ham10000", str(root), seed=1)).samples
    b = open_dataset(DataConfig("ham10000", str(root), seed=1)).samples
    c = open_dataset(DataConfig("ham10000", str(root), seed=2)).samples
    assert a.equals(b)
    assert not a["split"].equals(c["split"])


def test_fractions_are_settable(tmp_path):
    root = fx.make_ham10000(tmp_path, per_class=60)
    s = open_dataset(DataConfig("ham10000", str(root), val_fraction=0.3, test_fraction=0.25)).samples
    sizes = s["split"].value_counts(normalize=True)
    assert sizes["test"] == pytest.approx(0.25, abs=0.04)
    assert sizes["val"] == pytest.approx(0.75 * 0.3, abs=0.04)


def test_official_test_split_is_kept_and_val_comes_from_train(tmp_path):
    root = fx.make_covid19(tmp_path)
    s = open_dataset(DataConfig("covid19", str(root))).samples
    assert (s.loc[s["split"] == "test", "path"].str.startswith("test/")).all()
    assert (s.loc[s["split"] == "val", "path"].str.startswith("train/")).all()
    assert s.loc[s["split"] == "test"].shape[0] == 66


def test_chest_xray_val_keeps_patients_together(tmp_path):
    root = fx.make_chest_xray(tmp_path, per_class=80, duplicate_tree=False)
    s = open_dataset(DataConfig("chest_xray", str(root))).samples
    assert (s.groupby("group")["split"].nunique() == 1).all()
    assert (s["split"] == "val").any()


def test_split_file_round_trip_reproduces_the_split(tmp_path):
    root = fx.make_ham10000(tmp_path, per_class=30)
    original = open_dataset(DataConfig("ham10000", str(root), seed=5))
    path = tmp_path / "split.csv"
    write_split_csv(original.samples, path, "drop")
    assert list(pd.read_csv(path).columns) == ["path", "label", "group", "split", "reason",
                                               "duplicate_policy"]
    again = open_dataset(DataConfig("ham10000", str(root), seed=99, split_file=str(path)))
    assert again.samples.equals(original.samples)


def test_split_file_that_does_not_fit_the_dataset_is_refused(tmp_path):
    root = fx.make_covid19(tmp_path, per_class=5)
    table = open_dataset(DataConfig("covid19", str(root)))
    path = tmp_path / "split.csv"
    changed = table.samples.copy()
    changed.loc[0, "label"] = "Normal" if changed.loc[0, "label"] != "Normal" else "Covid"
    write_split_csv(changed, path, "drop")
    with pytest.raises(MedsslError, match=changed.loc[0, "path"]):
        read_split_csv(path, table)
    changed = table.samples.copy()
    changed.loc[0, "path"] = "train/Covid/not-there.png"
    write_split_csv(changed, path, "drop")
    with pytest.raises(MedsslError, match="not-there.png"):
        read_split_csv(path, table)
