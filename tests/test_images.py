"""Every colour mode becomes RGB; broken files are named before training, never inside a worker."""


import numpy as np
import pytest
from PIL import Image

from medssl.data import DataConfig, prepare
from medssl.data import fixtures as fx
from medssl.data.images import image_problem, load_rgb
from medssl.errors import MedsslError


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "LA", "I;16"])
def test_every_mode_loads_as_rgb(tmp_path, mode):
    arr = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    if mode == "I;16":
        img = Image.fromarray(arr.astype(np.uint16) * 257)
    else:
        img = Image.fromarray(arr).convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    img.save(path)
    out = load_rgb(path, window="minmax")
    assert out.mode == "RGB" and out.size == (16, 16)
    if mode == "I;16":  # windowed from 16 bits (0..65535 to 0..255), not clipped to white
        assert np.asarray(out)[..., 0].max() == 255 and np.asarray(out)[0, 1, 0] == 1


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "x.jpg", exif=exif)
    assert load_rgb(tmp_path / "x.jpg").size == (20, 40)


def test_draft_mode_keeps_at_least_the_requested_side(tmp_path):
    Image.new("RGB", (800, 600), "blue").save(tmp_path / "x.jpg")
    small = load_rgb(tmp_path / "x.jpg", min_side=100)
    assert 100 <= min(small.size) < 600


def test_broken_files_are_recognised(tmp_path):
    good = fx.image_bytes("JPEG", "RGB", size=64)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "cut.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "good.jpg").write_bytes(good)
    assert "empty" in image_problem(tmp_path / "empty.jpg")
    assert "truncated" in image_problem(tmp_path / "cut.jpg")
    assert "not an image" in image_problem(tmp_path / "text.jpg")
    assert image_problem(tmp_path / "good.jpg") is None


def _break_two(root):
    empty = root / "train" / "Covid" / "01.jpeg"
    truncated = root / "test" / "Normal" / "01.jpeg"
    empty.write_bytes(b"")
    data = fx.image_bytes("JPEG", "RGB", size=64)
    truncated.write_bytes(data[: len(data) // 2])
    return {"train/Covid/01.jpeg", "test/Normal/01.jpeg"}


def test_prepare_stops_with_the_list_of_bad_files(tmp_path):
    root = fx.make_covid19(tmp_path, per_class=6)
    bad = _break_two(root)
    with pytest.raises(MedsslError) as err:
        prepare(DataConfig("covid19", str(root)), progress=False)
    for path in bad:
        assert path in str(err.value)
    assert "--skip-bad-images" in str(err.value)


def test_prepare_can_skip_bad_files_and_counts_them(tmp_path, caplog):
    root = fx.make_covid19(tmp_path, per_class=6)
    bad = _break_two(root)
    table, info = prepare(DataConfig("covid19", str(root)), skip_bad_images=True, progress=False)
    assert len(table.samples) == 36 - 2
    assert set(info["skipped_bad_images"]) == bad
    assert not table.samples["path"].isin(bad).any()
    assert "left out 2 unreadable image(s)" in caplog.text
    assert all(path in caplog.text for path in bad)


def test_bad_images_found_in_parallel_workers(tmp_path):
    root = fx.make_chest_xray(tmp_path, per_class=200, duplicate_tree=False)
    victim = sorted((root / "train" / "PNEUMONIA").glob("*.jpeg"))[7]
    victim.write_bytes(b"")
    with pytest.raises(MedsslError, match=victim.name):
        prepare(DataConfig("chest_xray", str(root)), workers=2, progress=False)


def test_check_lists_bad_files_as_problems_and_fails(tmp_path, check_json):
    root = fx.make_covid19(tmp_path, per_class=6)
    bad = _break_two(root)
    code, report = check_json("--dataset", "covid19", "--data-root", root)
    assert code == 1
    assert {p["path"] for p in report["problems"]} == bad
    assert report["usable"] is False
