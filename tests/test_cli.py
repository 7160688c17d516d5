"""The command line: listings, the check report, and one clear message for each bad input."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from medssl.data import fixtures as fx


def run_medssl(*args):
    """The real command in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "medssl", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_datasets_lists_every_dataset_with_its_download(cli):
    code, out, _ = cli("datasets")
    assert code == 0
    for name in ["ham10000", "isic", "covid19", "chest_xray", "idrid", "folder", "csv", "demo"]:
        assert f"\n{name} " in "\n" + out
    assert "kaggle.com/datasets/pranavraikokte/covid19-image-dataset" in out
    assert "Train/<class>/ISIC_xxxxxxx.jpg" in out


def test_wrong_root_names_what_was_expected_without_traceback(tmp_path):
    (tmp_path / "something_else").mkdir()
    result = run_medssl("check", "--dataset", "covid19", "--data-root", tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{tmp_path} does not hold the Covid19" in result.stderr
    assert "train/{Covid,Normal,Viral Pneumonia}" in result.stderr
    assert "kaggle.com/datasets/pranavraikokte/covid19-image-dataset" in result.stderr


def test_missing_root_and_default_root_are_explained(cli, tmp_path, monkeypatch):
    code, _, err = cli("check", "--dataset", "isic", "--data-root", tmp_path / "nope")
    assert code == 2 and "nope does not exist" in err
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("check", "--dataset", "idrid")
    assert code == 2 and "no --data-root given" in err and "B. Disease Grading/" in err


def test_unknown_dataset_and_bad_flags(cli):
    code, _, err = cli("check", "--dataset", "mnist")
    assert code == 2 and "Unknown dataset 'mnist'" in err and "ham10000" in err
    for flags in (["check", "--val-fraction", "1.5"], ["pretrain", "--epochs", "-1"],
                  ["pretrain", "--num-workers", "-2"], ["pretrain", "--batch-size", "x"],
                  ["pretrain", "--devices", "0"], ["pretrain", "--devices", "two"],
                  ["finetune", "--num-nodes", "0"], ["compare", "--strategy", "dp"],
                  ["pretrain", "--lr-scaling", "cubic"]):
        with pytest.raises(SystemExit) as exit_:
            cli(flags[0], "--dataset", "demo", *flags[1:])
        assert exit_.value.code == 2


def test_zero_byte_and_truncated_images_are_named(tmp_path):
    root = fx.make_idrid(tmp_path, per_class=4)
    (root / "1. Original Images" / "a. Training Set" / "IDRiD_002.jpg").write_bytes(b"")
    data = fx.image_bytes("JPEG", "RGB", size=64)
    (root / "1. Original Images" / "b. Testing Set" / "IDRiD_003.jpg").write_bytes(data[:200])
    result = run_medssl("check", "--dataset", "idrid", "--data-root", root)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "a. Training Set/IDRiD_002.jpg: empty file" in result.stdout
    assert "b. Testing Set/IDRiD_003.jpg: truncated" in result.stdout
    assert "usable: no" in result.stdout


def test_metadata_without_its_label_column(tmp_path, cli):
    root = fx.make_ham10000(tmp_path, per_class=3)
    meta = root / "HAM10000_metadata.csv"
    pd.read_csv(meta).drop(columns=["dx"]).to_csv(meta, index=False)
    code, _, err = cli("check", "--dataset", "ham10000", "--data-root", root)
    assert code == 2
    assert "HAM10000_metadata.csv has no column 'dx'" in err


def test_label_outside_the_class_list(tmp_path, cli):
    root = fx.make_ham10000(tmp_path, per_class=3)
    meta = root / "HAM10000_metadata.csv"
    df = pd.read_csv(meta)
    df.loc[4, "dx"] = "melanomaa"
    df.to_csv(meta, index=False)
    code, out, _ = cli("check", "--dataset", "ham10000", "--data-root", root)
    assert code == 1
    assert "HAM10000_metadata.csv row 6: unknown label dx='melanomaa'" in out


def test_training_preparation_refuses_layout_errors(tmp_path):
    from medssl.data import DataConfig, prepare
    from medssl.errors import MedsslError

    root = fx.make_isic(tmp_path, per_class=3)
    (root / "Train" / "melanomas").mkdir()
    (root / "Train" / "melanomas" / "x.jpg").write_bytes(fx.image_bytes())
    with pytest.raises(MedsslError, match="unknown class folder 'melanomas'"):
        prepare(DataConfig("isic", str(root)), progress=False)


def test_json_report_and_split_out(tmp_path, cli):
    root = fx.make_covid19(tmp_path, per_class=10)
    code, out, _ = cli("check", "--dataset", "covid19", "--data-root", root, "--json",
                       "--split-out", tmp_path / "split.csv")
    report = json.loads(out)
    assert code == 0
    assert {"dataset", "total", "splits", "groups", "problems"} <= set(report)
    assert report["dataset"] == "covid19" and report["total"] == 60
    assert set(report["splits"]) == {"train", "val", "test"}
    split = pd.read_csv(tmp_path / "split.csv")
    assert list(split.columns) == ["path", "label", "group", "split", "reason", "duplicate_policy"]
    assert len(split) == 60
    code, out, _ = cli("check", "--dataset", "covid19", "--data-root", root, "--json",
                       "--split-seed", "9", "--split-file", tmp_path / "split.csv")
    again = json.loads(out)
    assert again["splits"] == report["splits"]


def test_python_dash_m_and_console_script_agree(tmp_path):
    result = run_medssl("--version")
    assert result.returncode == 0 and result.stdout.startswith("medssl ")


def test_datasets_states_each_grouping_rule(cli):
    code, out, _ = cli("datasets")
    assert code == 0
    assert out.count("            groups: ") == 8
    assert "groups: patient: person<N> in pneumonia file names (bacteria and virus alike), IM-<N>" in out
    assert "groups: lesion_id from the metadata" in out
    assert "copies: found by content (exact and near) and by the picture's id in file names" in out


def test_no_flag_is_accepted_and_then_ignored():
    """Every flag of a training command lands in a field of its configuration (or in the one
    place that reads it): parse each command, and look for a flag no configuration has."""
    from dataclasses import fields

    from medssl.cli import build_parser
    from medssl.experiments.compare import CompareConfig
    from medssl.options import SSLOptions
    from medssl.training.finetune import FinetuneConfig
    from medssl.training.pretrain import PretrainConfig

    # Read outside the configurations: the command itself, and the CSV column names that
    # become `read_options`.
    elsewhere = {"command", "func", "verbose", "config", "print_config", "csv_path_column", "csv_label_column", "csv_split_column",
                 "csv_group_column"}
    from medssl.options import AnalysisOptions, LaunchOptions, RecipeOptions

    commands = {
        "pretrain": ([], {f.name for f in fields(PretrainConfig)}),
        "finetune": (["--model", "M1"], {f.name for f in fields(FinetuneConfig)}),
        # compare: the grid's own fields, the pretraining part behind `--ssl-`, the recipe.
        "compare": ([], {f.name for f in fields(CompareConfig)}
                    | {"ssl_" + f.name for f in fields(SSLOptions)}
                    | {f.name for f in fields(RecipeOptions)}
                    | {f.name for f in fields(AnalysisOptions)}
                    | {f.name for f in fields(LaunchOptions)}),
    }
    for command, (extra, known) in commands.items():
        args = build_parser().parse_args([command, "--dataset", "demo", *extra])
        ignored = sorted(set(vars(args)) - known - elsewhere)
        assert not ignored, f"{command} accepts {ignored} and no configuration reads them"


def test_the_choices_the_cli_offers_are_the_ones_the_code_acts_on():
    """names.py holds every choice list; the modules that act on a choice agree with it."""
    from medssl import names
    from medssl.data.transforms import AUGMENT_PRESETS
    from medssl.models.backbones import ARCHS

    assert names.ARCHS == tuple(ARCHS)
    assert names.AUGMENT_PRESETS == tuple(AUGMENT_PRESETS)


def test_help_and_datasets_start_without_torch():
    """`medssl --help` and `medssl datasets` answer at once: no torch, pandas or numpy import."""
    import subprocess
    import sys

    for args in (["--help"], ["datasets"]):
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "medssl", *args],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0
        imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
        assert "torch" not in imported, args
    assert "numpy" not in {line.rsplit("|", 1)[-1].strip() for line in subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "medssl", "--help"], capture_output=True,
        text=True, timeout=120).stderr.splitlines()}
