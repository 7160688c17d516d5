"""Bad input, tried as a hostile new user would: every case ends with a non-zero exit status, one
message naming the value or file and the fix, no traceback (nor medssl's "internal error", which
would mean a case nobody handled), and nothing new on disk: no half-made run folder, no stray
`runs/`, no half-written file.

The cases run in-process (`medssl.cli.main`), each in a fresh folder; one Ctrl-C case runs a real
process. docs/reliability.md lists them."""

import json
import os
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from medssl.cli import main
from medssl.data import fixtures as fx
from medssl.models import build_backbone, save_backbone
from tests.conftest import own_group

FAST = ["--arch", "resnet18", "--image-size", "32", "--num-workers", "0", "--batch-size", "8",
        "--epochs", "1"]
NO_GPU = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The files the cases point at: a dataset, and weight files of every wrong kind."""
    w = tmp_path_factory.mktemp("ws")
    root = fx.make_covid19(w, per_class=6)
    (w / "text.txt").write_text("hello world\n")
    (w / "empty.pt").write_bytes(b"")
    (w / "weights_dir").mkdir()
    torch.save([torch.zeros(1)], w / "list.pt")
    torch.save(resnet18(), w / "whole_model.pt")  # a pickled model, as the study saved
    torch.save(resnet18().state_dict(), w / "r18_with_fc.pth")  # torchvision's, fc included
    for name, data in (("text_ssl", None), ("empty_ssl", b""), ("no_json", "model"),
                       ("bad_json", "model"), ("r18_ssl", "model")):
        (w / name).mkdir()
        if data is None:
            (w / name / "backbone.pt").write_text("not weights\n")
        elif data == b"":
            (w / name / "backbone.pt").write_bytes(b"")
        else:
            save_backbone(build_backbone("resnet18"), w / name / "backbone.pt",
                          {"arch": "resnet18", "init": "random", "dataset": "covid19"})
        (w / name / "backbone.json").write_text(json.dumps(
            {"arch": "resnet18", "init": "random", "dataset": "covid19"}))
    (w / "no_json" / "backbone.json").unlink()
    (w / "bad_json" / "backbone.json").write_text("{ this is not json")
    (w / "a_file").write_text("I am a file\n")
    (w / "csv").mkdir()
    (w / "csv" / "a.jpg").write_bytes(fx.picture("a"))
    (w / "csv" / "labels.csv").write_text("path,label\na.jpg,x\n")
    return {"root": root, "w": w}


def finished_run(folder: Path) -> None:
    from medssl.runs import mark_finished

    folder.mkdir(parents=True)
    for name in ("metrics.json", "val_predictions.csv", "test_predictions.csv"):
        (folder / name).write_text("{}")
    mark_finished(folder, ("metrics.json", "val_predictions.csv", "test_predictions.csv"))


def interrupted_run(folder: Path, garbage: bool = False) -> None:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"garbage" if garbage else b"PK\x03\x04")


def resnet18_run_to_resume(folder: Path) -> None:
    """An interrupted resnet18 run: a checkpoint to resume from, and the identity it recorded."""
    from medssl.identity import run_identity, write_identity
    from medssl.training.finetune import FinetuneConfig, resolve

    (folder / "checkpoints").mkdir(parents=True)
    torch.save({"epoch": 0, "global_step": 1}, folder / "checkpoints" / "last.ckpt")
    made = resolve(FinetuneConfig(dataset="covid19", model="M1", arch="resnet18", image_size=32,
                                  batch_size=8, epochs=1, out=str(folder)))
    write_identity(folder, run_identity(made))


def csv_naming_a_folder(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    for i in range(10):
        fx.write(root / f"{i}.jpg", fx.picture(f"folder-row/{i}"))
    rows = [f"{i}.jpg,{'xy'[i % 2]}" for i in range(10)] + ["sub,y"]
    (root / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")


def one_class(root: Path) -> None:
    (root / "cat").mkdir(parents=True)
    for i in range(4):
        (root / "cat" / f"{i}.jpg").write_bytes(fx.picture(f"cat{i}"))


def truncated_dicom(folder: Path) -> None:
    """A grey DICOM dataset with one file cut short in its pixel data."""
    fx.make_grey_dicom(folder.parent, patients=3)
    good = next((folder.parent / "grey_dicom" / "clear").iterdir())
    (folder.parent / "grey_dicom").rename(folder)
    data = (folder / "clear" / good.name).read_bytes()
    (folder / "clear" / "cut.dcm").write_bytes(data[:-300])


def truncated_grid(folder: Path) -> None:
    run = folder / "M1" / "seed0"
    finished_run(run)
    (run / "metrics.json").write_text("{")  # cut short after the marker was written


FT = ["finetune", "--dataset", "covid19", "--data-root", "{root}", "--model", "M1", *FAST]
M3 = ["finetune", "--dataset", "covid19", "--data-root", "{root}", "--model", "M3", *FAST]
M2 = ["finetune", "--dataset", "covid19", "--data-root", "{root}", "--model", "M2", *FAST]
PT = ["pretrain", "--dataset", "covid19", "--data-root", "{root}", *FAST]
CHECK = ["check", "--dataset", "covid19", "--data-root", "{root}"]
# A foundation prior's runs are on its own network: no --arch.
F_FT = ["finetune", "--dataset", "covid19", "--data-root", "{root}", *FAST[2:]]
GRID = ["compare", "--dataset", "covid19", "--data-root", "{root}", "--models", "M1", "--seeds",
        "0", "--lr", "1e-3", *FAST]

# (id, argv, what stderr must say, extra environment, setup of the case's folder)
CASES = [
    # Places that cannot be written
    ("out-under-proc", [*PT, "--out", "/proc/medssl-run"], ["/proc/medssl-run", "cannot be written"]),
    ("out-is-a-file", [*FT, "--out", "{tmp}/a_file"], ["a_file is a file, not a folder"], None,
     lambda t: (t / "a_file").write_text("x")),
    ("out-below-a-file", [*PT, "--out", "{tmp}/a_file/run"], ["a_file is a file", "--out"], None,
     lambda t: (t / "a_file").write_text("x")),
    ("cache-under-proc", [*PT, "--out", "{tmp}/run"], ["$MEDSSL_CACHE_DIR", "--no-cache"],
     {"MEDSSL_CACHE_DIR": "/proc/medssl-cache"}),
    ("cache-is-a-file", [*FT, "--out", "{tmp}/run"], ["is a file", "--no-cache"],
     {"MEDSSL_CACHE_DIR": "{w}/a_file"}),
    ("grid-cache-unwritable", [*GRID, "--out", "{tmp}/grid"], ["--no-cache"],
     {"MEDSSL_CACHE_DIR": "/proc/medssl-cache"}),
    ("split-out-unwritable", [*CHECK, "--split-out", "/proc/medssl/split.csv"],
     ["--split-out /proc/medssl/split.csv cannot be written"]),
    ("split-out-is-a-folder", [*CHECK, "--split-out", "{w}/weights_dir"], ["is a folder"]),
    ("report-images-dir-unwritable", ["report", "{tmp}/grid", "--images-dir", "/proc/medssl-img"],
     ["--images-dir", "cannot be written"], None, lambda t: truncated_grid(t / "grid")),
    ("grid-out-unwritable", [*GRID, "--out", "/proc/medssl-grid"], ["/proc/medssl-grid"]),
    ("grid-images-dir-unwritable", [*GRID, "--out", "{tmp}/grid", "--images-dir", "/proc/x"],
     ["--images-dir"]),
    # Trainer and optimiser flags
    ("precision-bogus", [*FT, "--precision", "bogus"], ["--precision", "bogus"]),
    ("accelerator-unknown", [*FT, "--accelerator", "tpu9"], ["--accelerator", "tpu9"]),
    ("lr-negative", [*FT, "--lr", "-1"], ["--lr", "must be above 0"]),
    ("lr-zero", [*PT, "--lr", "0"], ["--lr", "must be above 0"]),
    ("lr-nan", [*FT, "--lr", "nan"], ["--lr", "not a finite number"]),
    ("lr-inf", [*PT, "--lr", "inf"], ["--lr", "not a finite number"]),
    ("lr-text", [*FT, "--lr", "fast"], ["--lr", "'fast' is not a number"]),
    ("grid-lr-nan", [*GRID, "--out", "{tmp}/grid", "--lr", "nan"], ["--lr"]),
    # Judging the results: refused when parsed, or before any run (no half-made grid left)
    ("grid-primary-metric-of-another-task", [*GRID, "--out", "{tmp}/grid", "--primary-metric",
                                             "qwk"], ["qwk does not apply to covid19", "Fix"]),
    ("grid-primary-metric-unknown", [*GRID, "--out", "{tmp}/grid", "--primary-metric", "f1"],
     ["--primary-metric", "invalid choice"]),
    ("grid-equivalence-margin-nan", [*GRID, "--out", "{tmp}/grid", "--equivalence-margin", "nan"],
     ["--equivalence-margin", "(0, 100)"]),
    ("checkpoint-interval-negative", [*FT, "--out", "{tmp}/run", "--checkpoint-interval", "-5"],
     ["--checkpoint-interval", "at least 0 (seconds between saves)"]),
    ("aug-min-scale-5", [*PT, "--aug", "min_scale=5"], ["min_scale=5", "out of range"]),
    ("aug-min-scale-0", [*PT, "--aug", "min_scale=0"], ["min_scale", "above 0"]),
    ("aug-negative-prob", [*PT, "--aug", "cj_prob=-0.1"], ["cj_prob=-0.1", "a probability"]),
    ("aug-hue-0.9", [*PT, "--aug", "cj_hue=0.9"], ["cj_hue=0.9", "0.5"]),
    ("aug-sigmas-reversed", [*PT, "--aug", "sigmas=2,1"], ["sigmas", "low <= high"]),
    ("aug-rotation", [*PT, "--out", "{tmp}/run", "--aug", "rr_prob=0.5"],
     ["rr_prob", "flips"]),
    ("aug-unknown-knob", [*PT, "--aug", "zoom=2"], ["zoom=2", "min_scale"]),
    ("devices-zero", [*FT, "--devices", "0"], ["--devices"]),
    ("epochs-zero", [*FT, "--epochs", "0"], ["--epochs"]),
    ("label-fraction-2", [*FT, "--label-fraction", "2"], ["--label-fraction"]),
    # Weight files of every wrong kind
    ("imagenet-weights-text", [*M3, "--out", "{tmp}/run", "--imagenet-weights", "{w}/text.txt"],
     ["text.txt is a text file", "torch.save(model.state_dict()"]),
    ("imagenet-weights-empty", [*M3, "--out", "{tmp}/run", "--imagenet-weights", "{w}/empty.pt"],
     ["empty.pt is an empty file"]),
    ("imagenet-weights-folder", [*M3, "--out", "{tmp}/run", "--imagenet-weights",
                                 "{w}/weights_dir"], ["weights_dir is a folder, not a weights file"]),
    ("imagenet-weights-list", [*M3, "--out", "{tmp}/run", "--imagenet-weights", "{w}/list.pt"],
     ["list.pt holds a list, not a state_dict"]),
    ("imagenet-weights-missing", [*M3, "--out", "{tmp}/run", "--imagenet-weights",
                                  "{w}/nowhere/r50.pth"], ["r50.pth does not exist"]),
    ("imagenet-weights-unknown-name", [*M3, "--out", "{tmp}/run", "--imagenet-weights",
                                       "IMAGENET1K_V9"], ["IMAGENET1K_V9", "IMAGENET1K_V1"]),
    ("imagenet-weights-other-arch", [*M3, "--arch", "resnet34", "--out", "{tmp}/run",
                                     "--imagenet-weights", "{w}/r18_with_fc.pth"],
     ["They are resnet18 weights", "--arch resnet18"]),
    ("imagenet-weights-pickled-model", [*M3, "--out", "{tmp}/run", "--imagenet-weights",
                                        "{w}/whole_model.pt"], ["weights_only=True"]),
    ("ssl-checkpoint-text", [*M2, "--out", "{tmp}/run", "--ssl-checkpoint", "{w}/text_ssl"],
     ["backbone.pt is a text file"]),
    ("ssl-checkpoint-empty", [*M2, "--out", "{tmp}/run", "--ssl-checkpoint", "{w}/empty_ssl"],
     ["backbone.pt is an empty file"]),
    ("ssl-checkpoint-missing", [*M2, "--out", "{tmp}/run", "--ssl-checkpoint", "{w}/nowhere"],
     ["there is none at", "medssl pretrain"]),
    ("ssl-checkpoint-no-json", [*M2, "--out", "{tmp}/run", "--ssl-checkpoint", "{w}/no_json"],
     ["backbone.json is missing"]),
    ("ssl-checkpoint-broken-json", [*M2, "--out", "{tmp}/run", "--ssl-checkpoint", "{w}/bad_json"],
     ["backbone.json is not a readable JSON file"]),
    ("ssl-checkpoint-other-arch", [*M2, "--arch", "resnet34", "--out", "{tmp}/run",
                                   "--ssl-checkpoint", "{w}/r18_ssl"], ["it is a resnet18"]),
    # Run folders
    ("resume-without-checkpoint", [*FT, "--out", "{tmp}/run", "--resume"], ["no checkpoint",
                                                                          "drop --resume"]),
    ("rerun-into-interrupted", [*FT, "--out", "{tmp}/run"], ["interrupted run", "--resume",
                                                             "--force"], None,
     lambda t: interrupted_run(t / "run")),
    ("rerun-into-finished", [*FT, "--out", "{tmp}/run"], ["already holds a finished run",
                                                          "--force"], None,
     lambda t: finished_run(t / "run")),
    ("resume-from-garbage", [*FT, "--out", "{tmp}/run", "--resume"],
     ["not a checkpoint this run can resume from"], None,
     lambda t: interrupted_run(t / "run", garbage=True)),
    ("grid-with-interrupted-run", [*GRID, "--out", "{tmp}/grid"], ["interrupted", "--resume"],
     None, lambda t: interrupted_run(t / "grid" / "M1" / "seed0")),
    ("report-missing-folder", ["report", "{tmp}/no_grid"], ["no_grid does not exist"]),
    ("report-truncated-metrics", ["report", "{tmp}/grid"],
     ["metrics.json is 1 bytes", "cut short", "No finished"], None,
     lambda t: truncated_grid(t / "grid")),
    # Data
    ("unknown-dataset", ["check", "--dataset", "covid-19"], ["covid-19", "covid19"]),
    ("missing-data-root", ["check", "--dataset", "covid19", "--data-root", "{tmp}/nowhere"],
     ["does not exist"]),
    ("split-file-missing", [*FT, "--out", "{tmp}/run", "--split-file", "{tmp}/nowhere.csv"],
     ["nowhere.csv"]),
    ("csv-split-column-absent", ["check", "--dataset", "csv", "--data-root", "{w}/csv",
                                 "--csv-split-column", "fold"], ["no column 'fold'"]),
    ("decompression-bomb", [*CHECK], ["decompression bombs", "MEDSSL_MAX_IMAGE_PIXELS"],
     {"MEDSSL_MAX_IMAGE_PIXELS": "100"}),
    # Issue 32: values that reached an internal error, and a resume of another run
    ("split-seed-negative", [*CHECK, "--split-seed", "-3"], ["--split-seed", "[0, 4294967295]"]),
    ("split-seed-above-2-32", [*CHECK, "--split-seed", str(2 ** 32)], ["--split-seed"]),
    ("grid-seeds-negative", [*GRID, "--out", "{tmp}/grid", "--seeds", "-1", "0"],
     ["--seeds", "whole numbers from 0"]),
    ("max-image-pixels-text", [*CHECK], ["MEDSSL_MAX_IMAGE_PIXELS='lots'", "Fix"],
     {"MEDSSL_MAX_IMAGE_PIXELS": "lots"}),
    ("batch-size-one", [*FT, "--out", "{tmp}/run", "--batch-size", "1"],
     ["--batch-size: 1: must be at least 2", "two or more images per batch"]),
    ("resume-with-another-arch", [*FT, "--out", "{tmp}/run", "--arch", "resnet34", "--resume"],
     ["Cannot resume", "arch: 'resnet18' -> 'resnet34'", "Fix"], None,
     lambda t: resnet18_run_to_resume(t / "run")),
    ("method-opt-nan", [*PT, "--method-opt", "temperature=nan"],
     ["temperature=nan", "finite number"]),
    ("method-opt-out-of-range", [*PT, "--out", "{tmp}/run", "--method-opt", "temperature=-1"],
     ["--method-opt temperature=-1", "must be above 0", "Fix"]),
    ("method-opt-count-fraction", [*PT, "--out", "{tmp}/run", "--method", "moco",
                                   "--method-opt", "queue_size=0.5"],
     ["queue_size=0.5", "not a whole number", "queue_size is a count"]),
    # Issue 34: DICOM files are read; a broken one is named with its reason
    ("folder-of-fake-dicoms", ["check", "--dataset", "folder", "--data-root", "{tmp}/scans"],
     ["a/0.dcm", "not a DICOM file: no DICM marker", "re-export it", "usable: no"], None,
     lambda t: [fx.write(t / "scans" / c / f"{i}.dcm", b"DICM") for c in "ab" for i in range(3)]),
    ("truncated-dicom-training", ["finetune", "--dataset", "folder", "--data-root", "{tmp}/grey",
                                  "--model", "M1", "--out", "{tmp}/run", *FAST],
     ["cut.dcm", "truncated or corrupt pixel data", "--skip-bad-images"], None,
     lambda t: truncated_dicom(t / "grey")),
    ("window-bogus", [*CHECK, "--window", "bright"], ["--window", "auto, minmax"]),
    ("window-zero-width", [*FT, "--window", "40,0"], ["--window", "width at least 1"]),
    ("in-channels-two", [*FT, "--in-channels", "2"], ["--in-channels", "invalid choice"]),
    ("preview-unwritable", [*CHECK, "--preview", "/proc/medssl/p.png"], ["/proc/medssl/p.png"]),
    ("data-root-is-a-yaml-file", ["check", "--dataset", "folder", "--data-root", "{tmp}/c.yaml"],
     ["--data-root", "c.yaml is a .yaml file, not a folder", "Fix"], None,
     lambda t: (t / "c.yaml").write_text("data: here\n")),
    ("class-folders-beside-split-folders", ["check", "--dataset", "folder", "--data-root",
                                            "{tmp}/tree"],
     ["train/, test/ are read as split folders", "(normal/) are not read",
      "rename the class folder"], None,
     lambda t: [fx.write(t / "tree" / c / f"{i}.png", fx.picture(f"{c}{i}", "PNG"))
                for c in ("train/covid", "train/normal", "test/covid", "test/normal", "normal")
                for i in range(3)]),
    ("csv-row-names-a-folder", ["check", "--dataset", "csv", "--data-root", "{tmp}/c"],
     ["sub", "as an image, but it is a folder", "Fix"], None,
     lambda t: csv_naming_a_folder(t / "c")),
    ("grid-out-inside-the-data", [*GRID, "--out", "{root}/runs"],
     ["--out", "lies inside the dataset's folder", "Fix"]),
    ("out-inside-the-data", [*FT, "--out", "{root}/run"], ["lies inside the dataset's folder"]),
    ("split-file-is-a-yaml-file", [*FT, "--out", "{tmp}/run", "--split-file", "{tmp}/s.yaml"],
     ["--split-file", "s.yaml is a .yaml file, not a split table", "Fix"], None,
     lambda t: (t / "s.yaml").write_text("split: here\n")),
    ("one-class-dataset", ["check", "--dataset", "folder", "--data-root", "{tmp}/one"],
     ["one class only (cat)", "two or more", "usable: no"], None, lambda t: one_class(t / "one")),
    ("one-class-training", ["finetune", "--dataset", "folder", "--data-root", "{tmp}/one",
                            "--model", "M1", "--out", "{tmp}/run", *FAST],
     ["one class only (cat)", "Fix"], None, lambda t: one_class(t / "one")),
    ("gpu-without-gpu", [*FT, "--accelerator", "gpu"], ["--accelerator gpu", "no CUDA GPU",
                                                        "--accelerator cpu"]),
    ("grid-gpu-without-gpu", [*GRID, "--out", "{tmp}/grid", "--accelerator", "gpu"],
     ["no CUDA GPU"]),
    # Foundation priors and protocols (docs/priors.md).
    ("priors-unknown", [*GRID, "--out", "{tmp}/grid", "--priors", "dinov9"],
     ["--priors", "Unknown prior 'dinov9'", "medssl priors"]),
    ("prior-file-missing", [*F_FT, "--model", "F-timm:vit_tiny_patch16_224", "--prior-weights",
                            "{tmp}/none.safetensors", "--out", "{tmp}/run"],
     ["none.safetensors does not exist", "Fix"]),
    ("prior-file-of-another-arch", [*F_FT, "--model", "F-timm:vit_tiny_patch16_224",
                                    "--prior-weights", "{w}/r18_with_fc.pth", "--out", "{tmp}/run"],
     ["r18_with_fc.pth", "does not fit", "Fix: a weights file of timm:vit_tiny_patch16_224"]),
    ("prior-gated-without-file", [*F_FT, "--model", "F-retfound", "--out", "{tmp}/run"],
     ["needs its weights as a file", "retfound=PATH", "CC BY-NC 4.0"]),
    ("prior-weights-for-m1", [*FT, "--prior-weights", "{w}/r18_with_fc.pth"],
     ["--prior-weights", "no foundation prior"]),
    ("init-with-a-path", [*PT, "--init", "timm:resnet10t=/x.pt"],
     ["--init", "goes in --prior-weights"]),
    ("continue-ssl-without-priors", [*GRID, "--out", "{tmp}/grid", "--continue-ssl", "simclr"],
     ["--continue-ssl", "Fix: add --priors"]),
    ("protocols-twice", [*GRID, "--out", "{tmp}/grid", "--protocols", "knn", "knn"],
     ["--protocols knn knn", "at most once"]),
    # Running the grid's cells at once (experiments.launch)
    ("jobs-zero", [*GRID, "--jobs", "0"], ["--jobs: 0: must be at least 1"]),
    ("jobs-and-launcher", [*GRID, "--out", "{tmp}/grid", "--jobs", "2", "--launcher", "local"],
     ["--jobs", "--slurm-max-parallel", "Fix"]),
    ("slurm-without-srun", [*GRID, "--out", "{tmp}/grid", "--launcher", "slurm"],
     ["no srun", "--dry-run"], {"PATH": "/usr/bin:/bin"}),
    ("slurm-time-zero", [*GRID, "--launcher", "slurm", "--slurm-time", "0"],
     ["--slurm-time: 0: must be at least 1 (minutes)"]),
    ("cell-with-jobs", [*GRID, "--cell", "finetune:M1:1", "--jobs", "2"],
     ["--cell finetune:M1:1 runs that one cell here", "Fix"]),
    ("devices-per-job-on-cpu", [*GRID, "--out", "{tmp}/grid", "--jobs", "2",
                                "--devices-per-job", "2", "--accelerator", "cpu"],
     ["--devices-per-job 2: no GPU is visible here", "Fix: drop it"]),
    ("slurm-flag-without-slurm", [*GRID, "--slurm-partition", "gpu"],
     ["--slurm-partition applies with --launcher slurm only", "Fix"]),
    ("devices-beside-slurm-gpus", [*GRID, "--launcher", "slurm", "--dry-run", "--devices", "4"],
     ["--devices 4 with --launcher slurm", "--slurm-gpus-per-job 4 instead"]),
    ("several-datasets-one-cell", ["compare", "--dataset", "covid19", "demo", "--cell",
                                   "finetune:M1:1", "--data-root", "{root}"],
     ["--cell is about one grid", "one --dataset"]),
    # Using a run, and configuration files (docs: README, "Using the chosen model").
    ("predict-missing-run", ["predict", "{tmp}/nothing", "--data-root", "{root}"],
     ["Run", "nothing does not exist", "Fix"]),
    ("explain-missing-run", ["explain", "{tmp}/nothing", "--data-root", "{root}"],
     ["Run", "nothing does not exist", "Fix"]),
    ("explain-out-not-a-picture", ["explain", "{tmp}/nothing", "--data-root", "{root}", "--out",
                                   "{tmp}/maps.csv"],
     ["--out", "maps.csv", "the sheet is a picture", "Fix"]),
    ("export-missing-run", ["export", "{tmp}/nothing", "--format", "onnx", "--out", "{tmp}/o"],
     ["nothing does not exist", "Fix"]),
    ("config-unknown-key", [*FT, "--config", "{tmp}/c.yaml"],
     ["'epochz' is no flag", "Did you mean epochs"], None,
     lambda t: (t / "c.yaml").write_text("epochz: 1\n")),
]


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if not p.relative_to(folder).parts[0] in ("cache", "torch_home")}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_ends_in_one_clear_message(case, ws, tmp_path, monkeypatch, capsys):
    name, argv, expected, env, setup = (*case, None, None)[:5]
    if "gpu-without-gpu" in name and not NO_GPU:
        pytest.skip("this machine has a GPU")
    places = {"root": ws["root"], "w": ws["w"], "tmp": tmp_path}
    monkeypatch.chdir(tmp_path)  # a default `runs/` would appear here
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value.format(**places))
    if setup:
        setup(tmp_path)
    before = snapshot(tmp_path)
    try:
        code = main([a.format(**places) for a in argv])
    except SystemExit as exc:  # argparse: exit 2 with its usage line and the flag named
        code = exc.code
    out, err = capsys.readouterr()
    err = out + err  # `check` prints the problems it finds to stdout
    assert code not in (0, None), err
    assert "Traceback" not in err and "internal error" not in err, err
    for text in expected:
        assert text in err, f"{text!r} not in:\n{err}"
    assert snapshot(tmp_path) == before, "the failed command left files behind"


def test_at_least_forty_bad_inputs_are_scripted():
    assert len(CASES) >= 40


def test_the_precisions_offered_are_lightnings():
    from lightning_fabric.plugins.precision.precision import (_PRECISION_INPUT_STR,
                                                              _PRECISION_INPUT_STR_ALIAS)

    from medssl.names import PRECISIONS

    accepted = set(typing.get_args(_PRECISION_INPUT_STR)) | set(
        typing.get_args(_PRECISION_INPUT_STR_ALIAS))
    assert set(PRECISIONS) <= accepted


def test_an_unexpected_error_is_one_line_and_its_traceback_a_file(monkeypatch, capsys, tmp_path):
    """A bug in medssl (not bad input) still ends without a traceback on screen: one line, exit
    1, and the traceback saved in a file named there."""
    import medssl.cli as cli

    monkeypatch.setattr(cli, "cmd_datasets", lambda args: 1 / 0)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.delenv("MEDSSL_DEBUG", raising=False)
    assert cli.main(["datasets"]) == 1
    err = capsys.readouterr().err
    assert "internal error (ZeroDivisionError" in err and "Traceback" not in err
    saved = next(tmp_path.glob("medssl-crash-*.txt")).read_text()
    assert "Traceback" in saved and "ZeroDivisionError" in saved


def test_os_errors_are_worded_with_the_path_and_the_fix():
    """Permission and read-only refusals cannot be staged as root or without a read-only mount,
    so the wording is checked on the errors the operating system raises."""
    import errno

    from medssl.oserrors import describe

    for code, words in ((errno.EACCES, "permission denied"),
                        (errno.EROFS, "read-only file system"),
                        (errno.ENOTDIR, "is a file, not a folder")):
        text = describe(OSError(code, os.strerror(code), "/data/runs/x/metrics.json"))
        assert "/data/runs/x/metrics.json" in text and words in text and "Fix:" in text
    full = describe(OSError(errno.ENOSPC, "No space left on device", "/data/run/last.ckpt"))
    assert "The disk is full" in full and "--resume" in full


def test_an_os_error_during_a_command_is_a_message(monkeypatch, capsys, tmp_path):
    import errno

    import medssl.cli as cli

    def refuse(args):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x.csv"))

    monkeypatch.setattr(cli, "cmd_datasets", refuse)
    assert cli.main(["datasets"]) == 2
    err = capsys.readouterr().err
    assert "x.csv: permission denied" in err and "Fix:" in err and "Traceback" not in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_exits_130_and_says_resume(sig, tmp_path):
    """Lightning catches Ctrl-C and exits 1; medssl turns it back into 130 and names --resume.
    SIGTERM (a job's time limit), sent to every process as `timeout` and batch systems do, ends
    the same way, not as an internal error."""
    root = fx.make_covid19(tmp_path, per_class=6)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "medssl", "finetune", "--dataset", "covid19", "--data-root",
           str(root), "--model", "M1", *FAST[:-1], "40", "--out", str(out),
           "--num-workers", "1",  # a loader worker, which SIGTERM reaches too
           "--checkpoint-interval", "0"]  # a checkpoint after the first epoch, to wait for
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=own_group, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while proc.poll() is None and not last.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(proc.pid, sig)  # the run and its loader workers, as a terminal or a job limit does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err and str(last) in err and "Traceback" not in err
    assert "saved as of the end of epoch" in err
    assert ("SIGTERM" if sig == signal.SIGTERM else "Ctrl-C") in err
    assert "internal error" not in err
    assert last.is_file()  # what Lightning saved stays, for --resume
