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
    assert grid["models"] == ["M1", "M2", "M2-byol"] and grid["lr-grid"]  # resolved
    assert grid["ssl-methods"] == ["simclr", "byol"] and not (tmp_path / "grid").exists()


@pytest.mark.parametrize("text, said", [
    ("epochz: 3\n", "'epochz' is no flag of `medssl finetune`. Did you mean epochs"),
    ("- 1\n- 2\n", "holds a list"),
    ("epochs: [1\n", "is not readable YAML"),
    ("full-val: maybe\n", "full-val is a switch"),
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
