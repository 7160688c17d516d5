"""Configuration files (issue 36, part 4): `--config FILE.yaml` gives the flags of a command
(dashes or underscores), the command line wins over it, every run writes the config.yaml that
reruns it, and `compare --print-config` shows the resolved grid without running it."""

import json

import pytest
import yaml

from medssl.data import fixtures as fx


@pytest.fixture(scope="module")
def covid(tmp_path_factory):
    return fx.make_covid19(tmp_path_factory.mktemp("data"), per_class=6)


def result(run):
    """What a finetuning found, less what differs between two runs of it (time, place)."""
    m = json.loads((run / "metrics.json").read_text())
    del m["wall_time_s"], m["config"]["out"], m["compute"]["images_per_s"]
    return m


FLAGS = ["--model", "M1", "--arch", "resnet18", "--image-size", "32", "--num-workers", "0",
         "--batch-size", "8", "--epochs", "1", "--lr", "1e-3", "--seed", "3"]


def test_a_file_with_the_flags_values_gives_the_same_run_and_its_config_reruns_it(
        covid, tmp_path, cli):
    base = ["finetune", "--dataset", "covid19", "--data-root", covid]
    code, _, err = cli(*base, *FLAGS, "--out", tmp_path / "flags")
    assert code == 0, err
    (tmp_path / "f.yaml").write_text(
        "model: M1\narch: resnet18\nimage-size: 32\nnum_workers: 0\nbatch-size: 8\n"
        "epochs: 3\nlr: 1.0e-3\nseed: 3\n")
    # epochs: 3 in the file, 1 on the command line: the command line wins.
    code, _, err = cli(*base, "--config", tmp_path / "f.yaml", "--epochs", "1",
                       "--out", tmp_path / "file")
    assert code == 0, err
    assert result(tmp_path / "file") == result(tmp_path / "flags")
    written = yaml.safe_load((tmp_path / "flags" / "config.yaml").read_text())
    assert written["model"] == "M1" and written["epochs"] == 1 and "out" not in written
    code, _, err = cli("finetune", "--config", tmp_path / "flags" / "config.yaml",
                       "--out", tmp_path / "again")
    assert code == 0, err
    assert result(tmp_path / "again") == result(tmp_path / "flags")
    assert json.loads((tmp_path / "again" / "identity.json").read_text()) == json.loads(
        (tmp_path / "flags" / "identity.json").read_text())


def test_print_config_shows_the_resolved_grid_and_runs_nothing(covid, tmp_path, cli):
    code, out, err = cli("compare", "--dataset", "covid19", "--data-root", covid, "--models",
                         "M1", "M2", "--ssl-methods", "simclr", "byol", "--out",
                         tmp_path / "grid", "--print-config")
    assert code == 0, err
    grid = yaml.safe_load(out)
    assert grid["lr-grid"] and grid["label-fractions"] == [1.0] and grid["arch"]  # resolved
    assert grid["models"] == ["M1", "M2"] and grid["ssl-methods"] == ["simclr", "byol"]
    assert "print-config" not in grid and not (tmp_path / "grid").exists()
    # As a --config file it is the same grid.
    (tmp_path / "grid.yaml").write_text(out)
    code, again, err = cli("compare", "--config", tmp_path / "grid.yaml", "--print-config")
    assert code == 0 and yaml.safe_load(again) == grid, err


def test_keys_are_the_flags_names_and_a_written_config_keeps_their_spelling(covid, tmp_path,
                                                                           cli):
    (tmp_path / "c.yaml").write_text(
        "no-cache: true\naug:\n  min_scale: 0.5\nmethod-opt:\n  temperature: 0.2\n"
        "logger: [csv]\nepochs: 1\nbatch-size: 8\nimage-size: 32\narch: resnet18\n"
        "num-workers: 0\n")
    code, _, err = cli("pretrain", "--dataset", "covid19", "--data-root", covid, "--config",
                       tmp_path / "c.yaml", "--out", tmp_path / "ssl")
    assert code == 0, err
    written = yaml.safe_load((tmp_path / "ssl" / "config.yaml").read_text())
    assert written["no-cache"] is True and written["aug"] == {"min_scale": 0.5}
    assert written["method-opt"] == {"temperature": 0.2} and written["logger"] == ["csv"]
    meta = json.loads((tmp_path / "ssl" / "backbone.json").read_text())
    assert meta["config"]["cache"] is False and meta["method_settings"]["temperature"] == 0.2
    # The written file reruns it (here: parsed back to the same flags).
    code, out, err = cli("pretrain", "--config", tmp_path / "ssl" / "config.yaml", "--out",
                         tmp_path / "again", "--epochs", "1")
    assert code == 0, err
    assert json.loads((tmp_path / "again" / "identity.json").read_text()) == json.loads(
        (tmp_path / "ssl" / "identity.json").read_text())


@pytest.mark.parametrize("text, said", [
    ("batch-size: [8, 16]\n", "batch-size takes one value"),
    ("epochz: 3\n", "'epochz' is no flag of `medssl finetune`. Did you mean epochs"),
    ("- 1\n- 2\n", "holds a list"),
    ("epochs: [1\n", "is not readable YAML"),
    ("full-val: maybe\n", "full-val is a switch"),
    ("aug: 3\n", "no flag of `medssl finetune`"),
    ("epochs: -1\n", "--epochs"),
])
def test_a_bad_config_file_is_one_message(covid, tmp_path, cli, capsys, text, said):
    (tmp_path / "c.yaml").write_text(text)
    try:
        code, _, err = cli("finetune", "--dataset", "covid19", "--data-root", covid, "--model",
                           "M1", "--config", tmp_path / "c.yaml", "--out", tmp_path / "r")
    except SystemExit as exc:  # argparse refuses a value the file gave, naming the flag
        code, err = exc.code, capsys.readouterr().err
    assert code == 2 and said in err, err
    assert not (tmp_path / "r").exists()


def test_config_without_a_command_is_refused_and_its_equals_form_works(covid, tmp_path, cli):
    (tmp_path / "c.yaml").write_text(f"dataset: covid19\ndata-root: {covid}\nseeds: [4]\n")
    code, _, err = cli("--config", tmp_path / "c.yaml")
    assert code == 2 and "--config names no command" in err
    code, out, err = cli("compare", f"--config={tmp_path / 'c.yaml'}", "--print-config")
    assert code == 0 and yaml.safe_load(out)["seeds"] == [4], err
