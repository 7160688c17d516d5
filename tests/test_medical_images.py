"""Medical images as they come (issue 34): DICOM through pydicom in every encoding of its own test
files, windowing of DICOM and 16-bit pictures, PatientID groups, the preview sheet, and one clear
message for each DICOM that cannot be used."""

import json

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

import medssl
from medssl.data import DataConfig, open_dataset
from medssl.data import fixtures as fx
from medssl.data.images import image_problem, inspect_image, load_rgb
from medssl.data.windowing import parse_window


dicom_like = fx.dicom_file  # a DICOM file with given 16-bit pixels, patient, photometric


def test_check_reads_pydicoms_own_files_in_every_encoding(tmp_path, cli):
    root = fx.make_dicom(tmp_path)
    code, out, err = cli("check", "--dataset", "folder", "--data-root", root, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["usable"] and report["total"] == sum(map(len, fx.DICOM_FILES.values())) + 1
    assert not [p for p in report["problems"] if p["severity"] == "error"]
    # One MR picture in six encodings, and once more without a suffix: one exact group.
    mr = {f"mr/{n}" for n in fx.DICOM_FILES["mr"] if n.startswith("MR_small")} | {"mr/IM0001"}
    groups = [g for g in report["duplicates"] if set(g["paths"]) & mr]
    assert len(groups) == 1 and set(groups[0]["paths"]) == mr and groups[0]["kind"] == "exact"
    # The 30-frame ultrasound loop: its first frame, and a warning that says so.
    assert {"path": "rgb/examples_ybr_color.dcm", "severity": "warning",
            "problem": "30 frames (a multi-frame DICOM): the first is used"} in report["problems"]


def test_a_monochrome1_file_and_its_monochrome2_twin_load_to_the_same_pixels(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.integers(200, 3000, (32, 40))
    plain = dicom_like(tmp_path / "m2.dcm", values)
    # MONOCHROME1 stores white as low: the same picture, its values turned over.
    inverted = dicom_like(tmp_path / "m1.dcm", 4095 - values, photometric="MONOCHROME1")
    for window in ("auto", "minmax", "1500,1000"):
        a = load_rgb(plain, window=window)
        b = load_rgb(inverted, window="auto" if window == "auto" else
                     window if window == "minmax" else "2596,1000")  # mirrored (DICOM: c - 0.5)
        assert np.array_equal(np.asarray(a), np.asarray(b)), window


def test_a_dicom_files_own_window_is_used_unless_another_is_given(tmp_path):
    values = np.tile(np.arange(0, 1000, 10), (8, 1))
    path = dicom_like(tmp_path / "w.dcm", values, window=(300, 201))
    own = medssl.load_image(path)[..., 0]
    assert own[0, 0] == 0 and own[0, -1] == 255  # 200..400 spans black to white
    assert own[0, 30] == 128  # the centre, 300, is mid-grey
    wide = medssl.load_image(path, window="minmax")[..., 0]
    assert wide[0, 0] == 0 and wide[0, -1] == 255 and wide[0, 30] == 77  # 300 of 0..990


def test_a_narrow_16_bit_png_fills_the_output_range(tmp_path):
    # An X-ray whose values use 1000-1200 of 65536: divided by 257 it was 3 grey levels.
    values = np.linspace(1000, 1200, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "narrow.png")
    out = medssl.load_image(tmp_path / "narrow.png")
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3)
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) > 190  # of 201 values
    fixed = medssl.load_image(tmp_path / "narrow.png", window="1100,101")
    # The centre, 1100, is mid-grey; 1050 and below black, 1150 and above white.
    assert set(fixed[values == 1100, 0]) <= {127, 128, 129}
    assert (fixed[values <= 1049, 0] == 0).all() and (fixed[values >= 1150, 0] == 255).all()


def test_a_dicom_folders_split_keeps_each_patient_in_one_split(tmp_path):
    rng = np.random.default_rng(1)
    for label in ("a", "b"):
        for patient in range(8):
            for k in range(3):  # three pictures of each patient
                dicom_like(tmp_path / "dcm" / label / f"{patient}_{k}.dcm",
                           rng.integers(0, 4000, (24, 24)), patient=f"{label}{patient}")
    table = open_dataset(DataConfig(dataset="folder", data_root=str(tmp_path / "dcm")))
    splits = table.samples.groupby("group")["split"].nunique()
    assert len(splits) == 16 and (splits == 1).all()
    assert set(table.samples["split"]) == {"train", "val", "test"}
    assert any("grouped by PatientID" in n for n in table.notes)


def test_the_preview_sheet_shows_pictures_per_class_and_split(tmp_path, cli):
    from medssl.data.preview import chosen

    root = fx.make_dicom(tmp_path)
    code, out, err = cli("check", "--dataset", "folder", "--data-root", root, "--preview",
                         tmp_path / "sheet.png")
    assert code == 0, err
    table = open_dataset(DataConfig(dataset="folder", data_root=str(root)))
    shown = sum(len(paths) for _, _, paths in chosen(table))
    assert f"preview: {shown} picture(s)" in out and shown >= 6
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.format == "PNG" and sheet.width > 800


def test_a_truncated_dicom_is_named_with_its_reason(tmp_path):
    data = open(get_testdata_file("MR_small.dcm"), "rb").read()
    (tmp_path / "cut.dcm").write_bytes(data[:-500])
    why = image_problem(tmp_path / "cut.dcm")
    assert why.startswith("truncated or corrupt pixel data") and "less than expected" in why
    (tmp_path / "head.dcm").write_bytes(data[:300])  # cut inside the header
    assert "DICOM" in image_problem(tmp_path / "head.dcm")


def test_a_compressed_dicom_without_its_plugin_names_the_package(tmp_path, monkeypatch):
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEG2000Lossless

    # As if neither pylibjpeg-openjpeg nor python-gdcm nor Pillow's JPEG 2000 were installed.
    monkeypatch.setattr(get_decoder(JPEG2000Lossless), "_available", {})
    why = image_problem(get_testdata_file("MR_small_jp2klossless.dcm"))
    assert "compressed as JPEG 2000 Image Compression (Lossless Only)" in why
    assert "no installed package decodes it. Fix: pip install pylibjpeg pylibjpeg-openjpeg" in why


def test_an_unsupported_photometric_interpretation_is_refused(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PhotometricInterpretation = "HSV"  # retired from DICOM
    ds.save_as(tmp_path / "hsv.dcm")
    why = image_problem(tmp_path / "hsv.dcm")
    assert "photometric interpretation 'HSV' is not supported" in why and "MONOCHROME2" in why


def test_bad_windows_are_refused(cli, tmp_path):
    for bad in ("40", "a,b", "40,0", "nan,10"):
        with pytest.raises(ValueError):
            parse_window(bad)
    with pytest.raises(SystemExit):
        cli("check", "--dataset", "demo", "--window", "40")
    assert str(parse_window(" MinMax ")) == "minmax" and str(parse_window("40,400")) == "40,400"


def test_the_fingerprint_is_of_the_windowed_picture(tmp_path):
    # Decode pass, cache and duplicate search read through one reader: two windows, two pictures.
    path = dicom_like(tmp_path / "x.dcm", np.tile(np.arange(0, 1000, 10), (8, 1)),
                      window=(300, 201))
    (_, own, _), (_, wide, _) = inspect_image(path, "auto"), inspect_image(path, "minmax")
    assert own.size == wide.size == (100, 8) and own.small != wide.small


FAST = ["--arch", "resnet18", "--image-size", "32", "--num-workers", "0", "--batch-size", "8"]


def test_a_grey_dicom_set_trains_a_one_channel_stem_from_imagenet_weights(tmp_path, cli,
                                                                           monkeypatch, caplog):
    """--in-channels 1: the cache keeps one channel (a third of the bytes), ImageNet's stem is
    summed over RGB (recorded), and the exported backbone loads strictly into a torchvision
    ResNet whose conv1 takes one channel."""
    import logging

    import torch
    from torch import nn
    from torchvision.models import resnet18

    caplog.set_level(logging.INFO, logger="medssl")
    monkeypatch.setenv("MEDSSL_CACHE_DIR", str(tmp_path / "cache"))
    root = fx.make_grey_dicom(tmp_path)
    rgb = resnet18()  # stands in for ImageNet's weights (none offline): a file, as a user's
    torch.save(rgb.state_dict(), tmp_path / "imagenet.pt")
    common = ["--dataset", "folder", "--data-root", root, "--imagenet-weights",
              tmp_path / "imagenet.pt", "--in-channels", "1", *FAST]
    code, _, err = cli("pretrain", *common, "--init", "imagenet", "--epochs", "1",
                       "--out", tmp_path / "ssl")
    assert code == 0, err
    meta = json.loads((tmp_path / "ssl" / "backbone.json").read_text())
    assert meta["in_channels"] == 1 and "summed over its 3 RGB" in meta["stem_adapted"]
    assert len(meta["normalize"]["mean"]) == 1
    assert "for 1 input channel(s): conv1 summed" in caplog.text
    plain = resnet18()
    plain.fc = nn.Identity()
    plain.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    state = torch.load(tmp_path / "ssl" / "backbone.pt", weights_only=True)
    plain.load_state_dict(state, strict=True)
    # The cache of this size holds one byte a pixel.
    folders = list((tmp_path / "cache" / "images").iterdir())
    assert len(folders) == 1
    index = json.loads((folders[0] / "index.json").read_text())
    rows = sum(e[3] * e[4] for e in index["entries"])
    assert (folders[0] / "images.u8").stat().st_size == rows
    # Finetuning M3 (ImageNet) and M4 (ImageNet -> SimCLR) on one channel.
    code, _, err = cli("finetune", *common, "--model", "M3", "--epochs", "1", "--lr", "1e-3",
                       "--out", tmp_path / "m3")
    assert code == 0, err
    code, _, err = cli("finetune", *common, "--model", "M4", "--epochs", "1", "--lr", "1e-3",
                       "--ssl-checkpoint", tmp_path / "ssl" / "backbone.pt", "--out",
                       tmp_path / "m4")
    assert code == 0, err
    # A 1-channel backbone does not fit a 3-channel run: named, with the flag.
    code, _, err = cli("finetune", *common[:-len(FAST) - 2], *FAST, "--model", "M4", "--epochs",
                       "1", "--lr", "1e-3", "--ssl-checkpoint", tmp_path / "ssl" / "backbone.pt",
                       "--out", tmp_path / "m4rgb")
    assert code == 2 and "takes 1 input channel(s), this run --in-channels 3" in err


def test_a_csv_dataset_reads_dicom_files_with_and_without_a_suffix(tmp_path, cli):
    rng = np.random.default_rng(2)
    rows = ["path,label"]
    for i in range(8):
        name = f"scans/{i}.dcm" if i % 2 else f"scans/IM{i:04d}"  # half without a suffix
        dicom_like(tmp_path / "c" / name, rng.integers(0, 4000, (24, 24)), patient=f"p{i}")
        rows.append(f"{name},{'ab'[i % 2]}")
    (tmp_path / "c" / "labels.csv").write_text("\n".join(rows) + "\n")
    code, out, err = cli("check", "--dataset", "csv", "--data-root", tmp_path / "c", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["total"] == 8 and not report["problems"] and report["groups"] == 8


def test_a_16_bit_tiff_is_windowed_like_a_png(tmp_path):
    values = np.linspace(30000, 30400, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "x.tif")
    Image.fromarray(values).save(tmp_path / "x.png")
    tif, png = medssl.load_image(tmp_path / "x.tif"), medssl.load_image(tmp_path / "x.png")
    assert np.array_equal(tif, png) and tif.min() == 0 and tif.max() == 255
