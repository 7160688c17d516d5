"""Copies of one picture: found (exact, near, same-id), reported, and kept out of training."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medssl.data import DataConfig, open_dataset
from medssl.data import fixtures as fx
from medssl.data.duplicates import DuplicateGroup, find_duplicates
from medssl.data.images import inspect_images
from medssl.data.splits import EXCLUDED, apply_duplicate_policy, assign_splits
from medssl.errors import MedsslError

# The planted copies: (what, kind, original, copy). Every other file is its own look-alike
# chest X-ray, so the search must also find nothing else.
PLANTED = [
    ("byte copy of a test image", "exact", "test/Covid/01.jpeg", "train/Covid/copy-bytes.jpeg"),
    ("resized, re-encoded copy of a test image", "near", "test/Normal/02.jpg",
     "train/Normal/copy-resized.jpg"),
    ("test image re-saved in another format under another class", "exact",
     "test/Viral Pneumonia/03.png", "train/Covid/copy-other-class.bmp"),
    ("cropped copy in train under another class", "near", "train/Normal/04.jpeg",
     "train/Viral Pneumonia/copy-cropped.jpg"),
    ("byte copy in train under the same class", "exact", "train/Covid/05.png",
     "train/Covid/copy-bytes2.png"),
]


def plant(root, seed_base=1000):
    """Every file of a small Covid19 fixture becomes a distinct 160-px chest X-ray look-alike,
    then the PLANTED copies are added."""
    for i, p in enumerate(sorted(root.rglob("*.*"))):
        p.write_bytes(fx.encode(fx.xray_like(seed_base + i, 160), "PNG" if p.suffix == ".png" else "JPEG"))
    rng = np.random.default_rng(0)
    for what, _, original, copy in PLANTED:
        src = root / original
        if what.startswith("byte copy"):
            data = src.read_bytes()
        elif "another format" in what:
            data = fx.encode(Image.open(src), "BMP")
        else:
            data = fx.copy_of(Image.open(src), "resized" if "resized" in what else "cropped", rng)
        fx.write(root / copy, data)
    return root


@pytest.fixture(scope="module")
def planted_root(tmp_path_factory):
    return plant(fx.make_covid19(tmp_path_factory.mktemp("planted"), per_class=6, real_copies=False))


def test_check_reports_each_planted_group_and_nothing_else(planted_root, check_json, tmp_path):
    code, report = check_json("--dataset", "covid19", "--data-root", planted_root,
                              "--split-out", tmp_path / "split.csv")
    assert code == 0
    found = {(tuple(g["paths"]), g["kind"]) for g in report["duplicates"]}
    assert found == {(tuple(sorted([a, b])), kind) for _, kind, a, b in PLANTED}
    by_paths = {tuple(g["paths"]): g for g in report["duplicates"]}
    cross = by_paths[tuple(sorted(["train/Normal/04.jpeg", "train/Viral Pneumonia/copy-cropped.jpg"]))]
    assert sorted(cross["labels"]) == ["Normal", "Viral Pneumonia"]
    # Copies under different labels are also a warning (two groups: one across train/test).
    warned = [p for p in report["problems"] if "different labels" in p["problem"]]
    assert len(warned) == 2 and all(p["severity"] == "warning" for p in warned)

    split = pd.read_csv(tmp_path / "split.csv", keep_default_na=False).set_index("path")
    published_test = sorted(str(p.relative_to(planted_root)) for p in (planted_root / "test").rglob("*.*"))
    assert sorted(split.index[split["split"] == "test"]) == published_test  # as published
    for what, _, original, copy in PLANTED:
        if original.startswith("test/"):
            assert split.at[copy, "split"] == EXCLUDED and "copy of test image" in split.at[copy, "reason"]
    for path in ("train/Normal/04.jpeg", "train/Viral Pneumonia/copy-cropped.jpg"):
        assert split.at[path, "split"] == EXCLUDED and "different labels" in split.at[path, "reason"]
    assert split.at["train/Covid/05.png", "split"] in ("train", "val")  # one of two kept
    assert split.at["train/Covid/copy-bytes2.png", "split"] == EXCLUDED
    assert (split.loc[split["split"] == EXCLUDED, "duplicate_policy"] == "drop").all()
    assert report["excluded_by_reason"] == {"copies of test images": 3,
                                            "copies filed under different labels": 2,
                                            "extra copies of a kept image": 1}


def test_keep_reproduces_the_published_split_and_still_reports(planted_root, check_json):
    _, keep = check_json("--dataset", "covid19", "--data-root", planted_root, "--duplicates", "keep")
    _, drop = check_json("--dataset", "covid19", "--data-root", planted_root)
    assert keep["duplicates"] != [] and [g["paths"] for g in keep["duplicates"]] == \
        [g["paths"] for g in drop["duplicates"]]
    assert keep["excluded"] == []
    table = open_dataset(DataConfig("covid19", str(planted_root), duplicates="keep"))
    s = table.samples.set_index("path")
    for _, _, original, copy in PLANTED:  # every copy where the download put it
        assert s.at[copy, "split"] in ("train", "val") and s.at[original, "split"] != EXCLUDED
    assert (s.loc[s.index.str.startswith("test/"), "split"] == "test").all()


def test_check_text_lists_the_groups(planted_root, cli):
    code, out, _ = cli("check", "--dataset", "covid19", "--data-root", planted_root)
    assert code == 0
    assert "duplicate groups: 5" in out
    assert "excluded train/Covid/copy-bytes.jpeg" not in out  # the split column comes first
    assert "train/Covid/copy-bytes.jpeg (copy of test image test/Covid/01.jpeg)" in out
    assert "left out of train/val/SSL: 6 image(s)" in out


def samples(rows):
    return pd.DataFrame(rows, columns=["path", "label", "group", "split"], dtype=object)


def test_policy_branches():
    s = samples([("a", "x", "a", "test"), ("b", "x", "b", "train"), ("c", "y", "c", "train"),
                 ("d", "x", "d", "train"), ("e", "x", "e", "val"), ("f", "x", "f", "train"),
                 ("g", "x", "g", "train"), ("h", "y", "h", "train"), ("i", "x", "i", "train")])
    groups = [DuplicateGroup(("a", "b", "c"), "exact"),   # a test image, copied twice into train
              DuplicateGroup(("d", "e"), "near"),         # one label, one copy in official val
              DuplicateGroup(("f", "g"), "exact"),        # one label, both in train
              DuplicateGroup(("h", "i"), "near")]         # two labels
    out = apply_duplicate_policy(s, groups, "drop").set_index("path")
    assert list(out["split"]) == ["test", EXCLUDED, EXCLUDED, EXCLUDED, "val", "train", EXCLUDED,
                                  EXCLUDED, EXCLUDED]
    assert out.at["b", "reason"] == "copy of test image a"
    assert out.at["d", "reason"] == "copy of e, which is kept"  # the official val copy is kept
    assert out.at["g", "reason"] == "copy of f, which is kept"
    assert out.at["h", "reason"] == "copies filed under different labels: x, y"
    kept = apply_duplicate_policy(s, groups, "keep").set_index("path")
    assert (kept["split"] == s.set_index("path")["split"]).all() and (kept["reason"] == "").all()
    assert kept.at["b", "group"] == kept.at["c", "group"] == "a"  # one group for the carve
    with pytest.raises(MedsslError, match="--duplicates 'maybe'"):
        apply_duplicate_policy(s, groups, "maybe")


def test_a_carved_split_keeps_each_group_together():
    """No official test split (HAM10000): with `keep`, all copies land in one carved split;
    with `drop` one copy of a one-label group remains, and none of a two-label group."""
    rng = np.random.default_rng(0)
    rows = [(f"img{i:03d}", "xy"[i % 2], f"lesion{i // 2}", "") for i in range(400)]
    groups = [DuplicateGroup(tuple(sorted({f"img{j:03d}" for j in rng.choice(400, 3)})), "near")
              for _ in range(40)]
    groups = [g for g in groups if len(g.paths) > 1]
    for policy in ("keep", "drop"):
        out = assign_splits(samples(rows), seed=1, duplicates=groups, policy=policy).set_index("path")
        assert set(out["split"]) >= {"train", "val", "test"}
        for g in groups:
            used = out.loc[list(g.paths)]
            used = used[used["split"] != EXCLUDED]
            assert used["split"].nunique() <= 1, (policy, g, used)
            if policy == "drop":
                assert len(used) <= 1
        # lesions stay together too
        assert (out[out["split"] != EXCLUDED].groupby("group")["split"].nunique() == 1).all()


def test_isic_real_file_structure_drops_the_cross_class_copies(tmp_path):
    """The full-size ISIC fixture files pictures twice as the real download does."""
    root = fx.make_isic(tmp_path)
    table = open_dataset(DataConfig("isic", str(root)))
    s = table.samples
    assert (s["split"] == "test").sum() == 118
    assert s["split"].isin(["train", "val"]).sum() == 1947  # 2239 - 2 x 137 - 18
    ids = s["path"].str.extract(r"(ISIC_\d+)")[0]
    test_ids = set(ids[s["split"] == "test"])
    assert not test_ids & set(ids[s["split"].isin(["train", "val"])])
    assert len(table.duplicates) == 155 and {g.kind for g in table.duplicates} == {"exact"}
    kept = open_dataset(DataConfig("isic", str(root), duplicates="keep")).samples
    assert kept["split"].isin(["train", "val"]).sum() == 2239  # the published, leaky split


def test_covid19_full_fixture_keeps_the_real_leak_out(tmp_path):
    root = fx.make_covid19(tmp_path)
    s = open_dataset(DataConfig("covid19", str(root))).samples.set_index("path")
    for name in fx.COVID_COPIES:
        assert s.at[f"test/Covid/{name}", "split"] == "test"
        assert s.at[f"train/Covid/{name}", "split"] == EXCLUDED
    assert (s["split"] == "test").sum() == 66


def fingerprints_of(folder):
    names = sorted(p.name for p in folder.iterdir())
    bad, prints = inspect_images(folder, names, workers=1, progress=False)
    assert bad == []
    return prints


def test_look_alike_chest_xrays_are_not_copies_but_their_copies_are(tmp_path):
    """40 patients' X-ray look-alikes (pHashes a few bits apart): no group. Their resized,
    cropped and re-encoded copies: each found, as near."""
    folder = tmp_path / "xr"
    folder.mkdir()
    for seed in range(40):
        fx.xray_like(seed, 192).save(folder / f"p{seed:02d}.png")
    assert find_duplicates(folder, fingerprints_of(folder)) == []
    rng = np.random.default_rng(1)
    for seed, how in enumerate(["resized", "cropped", "both", "resized", "cropped", "both"]):
        fx.write(folder / f"p{seed:02d}-{how}.jpg", fx.copy_of(Image.open(folder / f"p{seed:02d}.png"), how, rng))
    groups = find_duplicates(folder, fingerprints_of(folder))
    assert {g.paths: g.kind for g in groups} == {
        (f"p{seed:02d}-{how}.jpg", f"p{seed:02d}.png"): "near"
        for seed, how in enumerate(["resized", "cropped", "both", "resized", "cropped", "both"])}


def test_exact_means_the_same_pixels_whatever_the_file(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    photo = fx.xray_like(7, 150).convert("RGB")
    photo.save(folder / "a.jpg", quality=90)
    Image.open(folder / "a.jpg").save(folder / "a-as-png.png")  # decoded pixels, lossless
    photo.save(folder / "b.png")
    info = __import__("PIL.PngImagePlugin", fromlist=["PngInfo"]).PngInfo()
    info.add_text("Comment", "re-saved with other metadata")
    photo.save(folder / "b-meta.png", pnginfo=info)
    fx.xray_like(8, 150).save(folder / "other.png")
    groups = {g.paths: g.kind for g in find_duplicates(folder, fingerprints_of(folder))}
    # a.jpg and b.png are one picture too, but JPEG changed its pixels: near, not exact.
    assert groups == {("a-as-png.png", "a.jpg", "b-meta.png", "b.png"): "near"}
    a_only = find_duplicates(folder, {k: v for k, v in fingerprints_of(folder).items()
                                      if k.startswith("a")})
    assert [(g.paths, g.kind) for g in a_only] == [(("a-as-png.png", "a.jpg"), "exact")]
    b_only = find_duplicates(folder, {k: v for k, v in fingerprints_of(folder).items()
                                      if k.startswith("b")})
    assert [(g.paths, g.kind) for g in b_only] == [(("b-meta.png", "b.png"), "exact")]


def test_same_id_in_two_folders_is_one_picture(tmp_path):
    root = fx.make_isic(tmp_path, per_class=3, reupload_copies=0)
    fx.write(root / "Train" / "melanoma" / "ISIC_0099999.jpg", fx.picture("one"))
    fx.write(root / "Test" / "nevus" / "ISIC_0099999.jpg", fx.picture("another"))
    table = open_dataset(DataConfig("isic", str(root)))
    assert [(g.paths, g.kind) for g in table.duplicates] == [
        (("Test/nevus/ISIC_0099999.jpg", "Train/melanoma/ISIC_0099999.jpg"), "same-id")]
    assert table.samples.set_index("path").at["Train/melanoma/ISIC_0099999.jpg", "split"] == EXCLUDED


def test_a_split_file_must_fit_the_policy(planted_root, tmp_path, cli):
    code, _, _ = cli("check", "--dataset", "covid19", "--data-root", planted_root,
                     "--duplicates", "keep", "--split-out", tmp_path / "keep.csv")
    assert code == 0
    code, _, err = cli("check", "--dataset", "covid19", "--data-root", planted_root,
                       "--split-file", tmp_path / "keep.csv")
    assert code == 2 and "made with --duplicates keep" in err and "this run asks for" in err
    # An older split file (no policy column) that puts copies on both sides is refused under drop.
    old = pd.read_csv(tmp_path / "keep.csv").drop(columns=["reason", "duplicate_policy"])
    old.to_csv(tmp_path / "old.csv", index=False)
    code, _, err = cli("check", "--dataset", "covid19", "--data-root", planted_root,
                       "--split-file", tmp_path / "old.csv")
    assert code == 2 and "copies of one picture where --duplicates drop forbids them" in err
    code, out, _ = cli("check", "--dataset", "covid19", "--data-root", planted_root, "--json",
                       "--duplicates", "keep", "--split-file", tmp_path / "old.csv")
    assert code == 0 and json.loads(out)["excluded"] == []


def test_ssl_that_saw_a_copy_of_a_test_image_is_refused(planted_root, tmp_path, cli):
    """The leak check compares content: SimCLR under `keep` trained on train/Covid/copy-bytes.jpeg,
    a copy of test/Covid/01.jpeg, so a `drop` run holding that test image out refuses it."""
    small = ["--arch", "resnet18", "--image-size", "32", "--num-workers", "0", "--batch-size", "8"]
    ssl = tmp_path / "ssl"
    assert cli("pretrain", "--dataset", "covid19", "--data-root", planted_root, "--epochs", "1",
               "--duplicates", "keep", "--out", ssl, *small)[0] == 0
    meta = json.loads((ssl / "backbone.json").read_text())
    assert meta["data"]["duplicates"]["policy"] == "keep"
    assert meta["data"]["duplicates"]["groups"] == 5
    # The same split under `drop` (the same val): only the copies differ, not the paths.
    from medssl.data.registry import COLUMNS
    from medssl.data.splits import write_split_csv

    table = open_dataset(DataConfig("covid19", str(planted_root)))
    ssl_split = pd.read_csv(ssl / "split.csv", dtype=str, keep_default_na=False)[COLUMNS]
    write_split_csv(apply_duplicate_policy(ssl_split, table.duplicates, "drop"),
                    tmp_path / "drop.csv", "drop")
    code, _, err = cli("finetune", "--dataset", "covid19", "--data-root", planted_root, "--model",
                       "M2", "--ssl-checkpoint", ssl, "--split-file", tmp_path / "drop.csv",
                       "--epochs", "1", "--out", tmp_path / "ft", *small)
    assert code == 2, err
    assert "pretrained on 3 image(s)" in err and "copy-bytes.jpeg, a copy of test/Covid/01.jpeg" in err, err
    # Without --split-file the run takes the SSL's own split, made under keep: said, not mixed.
    code, _, err = cli("finetune", "--dataset", "covid19", "--data-root", planted_root, "--model",
                       "M2", "--ssl-checkpoint", ssl, "--epochs", "1", "--out", tmp_path / "ft2",
                       *small)
    assert code == 2 and "made with --duplicates keep" in err


def test_a_dataset_of_nothing_but_copies_is_a_clear_error(tmp_path):
    for cls in ("cats", "dogs"):
        for i in range(5):
            fx.write(tmp_path / "mine" / cls / f"{i}.png", fx.picture("the same one", "PNG"))
    with pytest.raises(MedsslError, match="No training images are left.*--duplicates keep"):
        open_dataset(DataConfig("folder", str(tmp_path / "mine")))
    # Kept, the ten copies are one group, and one group cannot be carved into splits.
    with pytest.raises(MedsslError, match="10 images in 1 groups: too few to split"):
        open_dataset(DataConfig("folder", str(tmp_path / "mine"), duplicates="keep"))


def test_left_out_copies_are_never_cached_nor_served(planted_root, isolated_cache):
    """Excluded rows stay in the table (and split.csv) but no loader reads them."""
    from types import SimpleNamespace

    from medssl.data.torch_dataset import ImageDataset
    from medssl.training.loaders import open_cache

    table = open_dataset(DataConfig("covid19", str(planted_root)))
    excluded = set(table.samples.loc[table.samples["split"] == EXCLUDED, "path"])
    assert len(excluded) == 6
    cache = open_cache(table, SimpleNamespace(cache=True, image_size=32, progress=False,
                                                 in_channels=3))
    assert not excluded & set(cache.row) and len(cache.row) == len(table.samples) - 6
    served = ImageDataset(table, None, lambda x: x, 37, cache)
    assert not excluded & set(served.rel_paths) and len(served) == len(table.samples) - 6
