"""Run identity (medssl.identity): a run is resumed or reused only as the run it was; a rerun with
another recipe or split never shows the old results as new."""

import json

import pytest

from medssl.data import fixtures as fx
from medssl.errors import MedsslError
from medssl.identity import differences, run_identity
from medssl.options import MAY_CHANGE
from medssl.runs import IDENTITY, MARKER
from medssl.training.finetune import FinetuneConfig

FAST = ["--arch", "resnet18", "--image-size", "32", "--num-workers", "0", "--batch-size", "8"]


def test_an_identity_names_what_changed_and_ignores_what_may():
    base = FinetuneConfig(dataset="covid19", model="M1", lr=1e-3, epochs=2)
    same = FinetuneConfig(dataset="covid19", model="M1", lr=1e-3, epochs=2, num_workers=4,
                          devices=2, out="elsewhere", data_root="/moved")
    assert differences(run_identity(base), run_identity(same)) == []
    other = FinetuneConfig(dataset="covid19", model="M1", lr=0.5, epochs=2, seed=7)
    changed = differences(run_identity(base), run_identity(other))
    assert changed == ["lr: 0.001 -> 0.5", "seed: 0 -> 7"]
    # Nothing that changes a result may change on resume.
    assert not MAY_CHANGE & {"lr", "epochs", "seed", "batch_size", "image_size", "split_seed",
                             "val_fraction", "precision", "arch", "duplicates"}


def test_resume_with_another_recipe_is_refused_naming_the_fields(tmp_path, cli):
    root = fx.make_covid19(tmp_path, per_class=6)
    out = tmp_path / "run"

    def finetune(*flags):
        return cli("finetune", "--dataset", "covid19", "--data-root", root, "--model", "M1",
                   "--epochs", "2", "--out", out, "--arch", "resnet18", "--image-size", "32",
                   "--batch-size", "8", *flags)

    code, _, err = finetune("--lr", "1e-5", "--num-workers", "0")
    assert code == 0, err
    assert json.loads((out / IDENTITY).read_text())["settings"]["lr"] == 1e-5
    (out / MARKER).unlink()  # as if killed after its last checkpoint
    code, _, err = finetune("--lr", "0.5", "--seed", "7", "--num-workers", "0", "--resume")
    assert code == 2
    assert "Cannot resume" in err and "lr: 1e-05 -> 0.5" in err and "seed: 0 -> 7" in err
    assert "Fix" in err and not (out / MARKER).exists()
    # What may change on resume (here the loader workers) does not stop it.
    code, _, err = finetune("--lr", "1e-5", "--num-workers", "1", "--resume")
    assert code == 0, err
    # `report` on this one run (not a grid) reports it, without an interval.
    code, text, err = cli("report", out)
    assert code == 0, err
    assert text.startswith("M1 on covid19, seed 0, label fraction 1") and "balanced accuracy" in text


def test_a_rerun_of_a_grid_with_another_recipe_or_split_is_refused(tmp_path, cli):
    root = fx.make_covid19(tmp_path, per_class=6)
    out = tmp_path / "grid"
    args = ["compare", "--dataset", "covid19", "--data-root", root, "--models", "M1", "M2",
            "--seeds", "0", "--lr", "1e-3", "--out", out, *FAST]
    code, first, err = cli(*args, "--epochs", "1", "--ssl-epochs", "1")
    assert code == 0, err
    code, again, err = cli(*args, "--epochs", "1", "--ssl-epochs", "1")  # the same: reused
    assert code == 0, err
    # Another finetuning recipe: the finished runs are not shown as the new recipe's.
    code, out_text, err = cli(*args, "--epochs", "2", "--ssl-epochs", "1")
    assert code == 2 and "Cannot reuse" in err and "epochs: 1 -> 2" in err and "Fix" in err
    assert "results" not in out_text
    # Another pretraining recipe: refused too, though every finetuning from it finished.
    code, _, err = cli(*args, "--epochs", "1", "--ssl-epochs", "2")
    assert code == 2 and "Cannot reuse" in err and "ssl-random" in err and "epochs: 1 -> 2" in err
    # Another split: the grid's split.csv is not silently reused.
    code, _, err = cli(*args, "--epochs", "1", "--ssl-epochs", "1", "--split-seed", "3")
    assert code == 2 and "split.csv was made with other split settings" in err
    assert "split_seed: 0 -> 3" in err


def test_report_refuses_to_pool_runs_of_other_settings_in_one_row(tmp_path, cli):
    root = fx.make_covid19(tmp_path, per_class=6)
    out = tmp_path / "grid"
    common = ["--dataset", "covid19", "--data-root", root, "--model", "M1", *FAST]
    for seed, epochs in ((0, "1"), (1, "2")):  # seed 1 made with another recipe
        code, _, err = cli("finetune", *common, "--seed", seed, "--epochs", epochs, "--lr",
                           "1e-3", "--out", out / "M1" / f"seed{seed}")
        assert code == 0, err
    code, _, err = cli("report", out)
    assert code == 2 and "would pool runs made with other settings" in err
    assert "epochs: 1 -> 2" in err


def test_a_run_without_a_recorded_identity_is_not_reused_blindly(tmp_path):
    from medssl.identity import check_same_run

    (tmp_path / "old").mkdir()
    with pytest.raises(MedsslError, match="records no identity.*Fix"):
        check_same_run(tmp_path / "old", run_identity(FinetuneConfig(dataset="covid19")), "reuse")


def test_an_lr_search_run_is_not_reused_by_a_search_with_another_recipe(tmp_path, cli,
                                                                        monkeypatch):
    """`finetune --lr-grid` keeps its search runs under <base>/lr-search and reuses a finished
    one; a later search with another recipe must not choose among the old runs' values."""
    root = fx.make_covid19(tmp_path, per_class=8)
    monkeypatch.chdir(tmp_path)  # the search runs go under runs/covid19/, beside the cwd
    search = ["finetune", "--dataset", "covid19", "--data-root", root, "--model", "M1",
              "--lr-grid", "1e-3", "1e-2", *FAST]
    code, _, err = cli(*search, "--epochs", "1", "--out", tmp_path / "first")
    assert code == 0, err
    code, _, err = cli(*search, "--epochs", "2", "--out", tmp_path / "second")
    assert code == 2 and "Cannot reuse" in err and "epochs: 1 -> 2" in err, err
    assert not (tmp_path / "second" / MARKER).exists()
