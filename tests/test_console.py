"""A quiet console (issue 36, part 7): medssl's own lines and warnings, not the libraries'
banners, tips and warnings, unless --verbose. Run as a user runs it, in its own process, so
that nothing of pytest's logging or warning capture plays a part."""

import subprocess
import sys

import pytest

from medssl.data import fixtures as fx

NOISE = ("GPU available", "TPU available", "Tip:", "litlogger", "Warning:", "`Trainer.fit` stopped")


@pytest.fixture(scope="module")
def covid(tmp_path_factory):
    return fx.make_covid19(tmp_path_factory.mktemp("data"), per_class=4)


def finetune(covid, out, *extra) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "medssl", "finetune", "--dataset", "covid19", "--data-root",
         str(covid), "--model", "M1", "--arch", "resnet18", "--image-size", "32", "--epochs", "1",
         "--batch-size", "8", "--num-workers", "0", "--imagenet-weights", "IMAGENET1K_V1",
         "--out", str(out), *extra], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_a_tiny_finetune_says_medssls_lines_and_nothing_of_the_libraries(covid, tmp_path):
    said = finetune(covid, tmp_path / "quiet")
    assert not [n for n in NOISE if n in said], said
    assert "epoch 1/1" in said and "metrics written to" in said  # medssl's own progress
    # medssl's own warnings always show (ImageNet weights given to a random init: ignored).
    assert "--imagenet-weights IMAGENET1K_V1 is ignored" in said
    loud = finetune(covid, tmp_path / "loud", "--verbose")
    assert "GPU available" in loud  # the libraries' lines, when asked for


def test_logger_chooses_where_the_curves_go_and_a_missing_package_is_named(covid, tmp_path,
                                                                           cli):
    import importlib.util

    base = ["finetune", "--dataset", "covid19", "--data-root", covid, "--model", "M1", "--arch",
            "resnet18", "--image-size", "32", "--epochs", "1", "--batch-size", "8",
            "--num-workers", "0"]
    code, _, err = cli(*base, "--logger", "csv", "--out", tmp_path / "csv")
    assert code == 0, err
    assert (tmp_path / "csv" / "logs" / "metrics.csv").is_file()  # always: the report reads it
    assert not (tmp_path / "csv" / "tensorboard").exists()
    if importlib.util.find_spec("mlflow") is None:  # as on this project's machines
        code, _, err = cli(*base, "--logger", "mlflow", "--out", tmp_path / "ml")
        assert code == 2 and "needs the mlflow package" in err and "pip install mlflow" in err
        assert not (tmp_path / "ml").exists()
    with pytest.raises(SystemExit):  # an unknown logger: argparse names the choices
        cli(*base, "--logger", "neptune")
