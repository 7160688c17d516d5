"""A fair recipe (issue 16): the lr grid chosen on val, replicated pretraining, the val split at
a label fraction, the overfitting measures, compute, the cosine schedule."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medssl.data import fixtures as fx
from medssl.errors import MedsslError
from medssl.experiments.lr_search import choose_lr, finetune_with_lr_grid
from medssl.training.finetune import run_finetune
from tests.test_finetune import FAST, csv_dataset, finetune_cfg


def test_the_lr_grid_chooses_on_val_only(tmp_path):
    chosen = []
    for name, permute in (("a", False), ("b", True)):  # b: the test labels shuffled
        cfg = finetune_cfg(csv_dataset(tmp_path / name, permute), tmp_path / f"r{name}" / "M1",
                           base=str(tmp_path / f"r{name}"))
        out = finetune_with_lr_grid(replace(cfg, lr=None, lr_grid=[1e-4, 3e-2], epochs=2))
        chosen.append(json.loads((out / "metrics.json").read_text()))
    a, b = chosen
    assert a["lr_selected"] == b["lr_selected"] and a["lr_grid"] == [1e-4, 3e-2]
    assert a["lr_search"]["values"] == b["lr_search"]["values"]
    assert a["test"] != b["test"]  # the permutation reached the test labels, not the choice
    # The choice is the best val value of the search, and the kept run is that run.
    values = a["lr_search"]["values"]
    assert values[f"{a['lr_selected']:g}"] == min(values.values())
    assert a["lr"] == a["lr_selected"] and a["selection"]["value"] == min(values.values())
    # Search runs stay out of the results table.
    from medssl.report.tables import collect_runs

    runs, _ = collect_runs(tmp_path / "ra")
    assert len(runs) == 1 and runs["lr_searched"].all()


def test_choose_lr_reads_only_the_selection_on_val(tmp_path):
    runs = {}
    for lr, val_loss, test_acc in ((1e-4, 0.9, 0.99), (1e-3, 0.5, 0.10), (1e-2, 0.7, 0.50)):
        run = tmp_path / f"lr{lr:g}"
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps({
            "selection": {"metric": "val/loss", "mode": "min", "value": val_loss},
            "test": {"acc": test_acc}}))
        runs[lr] = {0: run}
    assert choose_lr(runs)[0] == 1e-3


def test_choose_lr_takes_the_mean_over_the_seeds(tmp_path):
    # Seed 0 alone would pick 1e-3; the mean over the three seeds picks 1e-4.
    values = {1e-4: (0.6, 0.5, 0.5), 1e-3: (0.4, 0.9, 0.8)}
    runs = {}
    for lr, per_seed in values.items():
        for seed, val_loss in enumerate(per_seed):
            run = tmp_path / f"lr{lr:g}" / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "metrics.json").write_text(json.dumps({
                "selection": {"metric": "val/loss", "mode": "min", "value": val_loss}}))
            runs.setdefault(lr, {})[seed] = run
    lr, record = choose_lr(runs)
    assert lr == 1e-4 and record["values"]["0.0001"] == pytest.approx(1.6 / 3)
    assert record["per_seed"]["0.001"] == {"0": 0.4, "1": 0.9, "2": 0.8}


def test_lr_and_lr_grid_together_are_refused(cli, tmp_path):
    code, _, err = cli("finetune", "--dataset", "demo", "--model", "M1", "--lr", "1e-3",
                       "--lr-grid", "1e-4", "1e-3", "--out", tmp_path / "r")
    assert code == 2 and "--lr 0.001 and --lr-grid both given" in err
    with pytest.raises(MedsslError, match="--lr-grid runs one finetuning per learning rate"):
        run_finetune(finetune_cfg(tmp_path, tmp_path / "r", lr_grid=[1e-3]))


def test_per_seed_pretraining_by_default_and_the_label_fraction_protocol(tmp_path, cli):
    root = fx.make_covid19(tmp_path, per_class=10)
    out = tmp_path / "grid"
    code, stdout, err = cli("compare", "--dataset", "covid19", "--data-root", root, "--models",
                            "M1", "M2", "--seeds", "0", "1", "--label-fractions",
                            "0.5", "--epochs", "2", "--ssl-epochs", "1", "--lr-schedule", "cosine",
                            "--lr", "1e-3", "--out", out, *FAST)
    assert code == 0, err
    # By default one backbone per seed, and seed k finetunes from pretraining k.
    for seed in (0, 1):
        meta = json.loads((out / "ssl-random" / f"seed{seed}" / "backbone.json").read_text())
        assert meta["seed"] == seed and meta["images_seen"] == meta["steps"] * meta["batch_size"]
        m = json.loads((out / "M2" / "frac0.5" / f"seed{seed}" / "metrics.json").read_text())
        assert m["prior"]["ssl_checkpoint"].endswith(f"ssl-random/seed{seed}/backbone.pt")
        assert m["compute"]["pretrain_images_seen"] == meta["images_seen"]
    assert not (out / "ssl-random" / "backbone.pt").exists()
    results = pd.read_csv(out / "results.csv").set_index("model")
    assert results.at["M2", "sd_includes"] == "finetuning + pretraining"
    assert results.at["M1", "sd_includes"] == "finetuning"
    assert "finetuning + pretraining" in stdout

    run = out / "M1" / "frac0.5" / "seed0"
    m = json.loads((run / "metrics.json").read_text())
    split = pd.read_csv(run / "split.csv")
    val = split[split["split"] == "val"]
    chosen = pd.read_csv(run / "selection_val.csv")
    # Selection saw half of val, stratified, every class kept.
    assert m["selection"]["val_images"] == len(chosen) < len(val)
    assert set(chosen["label"]) == set(val["label"]) and set(chosen["path"]) <= set(val["path"])
    assert len(pd.read_csv(run / "val_predictions.csv")) == len(chosen)
    # The overfitting measures, from the logged clean pass over labelled train images.
    curves = pd.read_csv(run / "logs" / "metrics.csv")
    assert curves["train_eval/acc"].notna().sum() == 2 and curves["train_eval/loss"].notna().sum() == 2
    o = m["overfitting"]
    by_epoch = curves.dropna(subset=["val/loss"]).set_index("epoch")
    last = by_epoch.loc[by_epoch.index.max()]
    assert o["last_epoch"] == 2 and o["selected_epoch"] == m["selection"]["epoch"]
    assert o["acc_gap_last"] == pytest.approx(last["train_eval/acc"] - last["val/acc"])
    assert o["val_loss_rise"] == pytest.approx(last["val/loss"] - by_epoch["val/loss"].min())
    assert set(m["test_last"]) >= {"acc", "ece", "brier"} and m["lr_schedule"] == "cosine"
    assert m["compute"]["finetune_images_seen"] == 2 * m["labelled_train_images"]
    assert (out / "reliability.png").is_file()
    # --full-val keeps the whole val split for selection.
    full = run_finetune(replace(_config_of(m), full_val=True, out=str(tmp_path / "full"),
                                resume=False, force=True))
    f = json.loads((full / "metrics.json").read_text())
    assert f["selection"]["val_images"] == len(val) and f["selection"]["val"] == "full"
    assert not (full / "selection_val.csv").exists()


def _config_of(metrics):
    from medssl.data import ReadOptions
    from medssl.training.finetune import FinetuneConfig

    config = dict(metrics["config"])
    config["read_options"] = ReadOptions(**config["read_options"])
    return FinetuneConfig(**config)


def test_compare_chooses_each_models_lr_on_the_mean_over_all_seeds(tmp_path, cli):
    root = fx.make_covid19(tmp_path, per_class=6)
    out = tmp_path / "grid"
    code, stdout, err = cli("compare", "--dataset", "covid19", "--data-root", root, "--models",
                            "M1", "--seeds", "0", "1", "--epochs", "1", "--lr-grid", "1e-4", "1e-2",
                            "--out", out, *FAST)
    assert code == 0, err
    searched = sorted((p.parent.parent.name, p.parent.name)
                      for p in (out / "lr-search" / "M1").rglob("finished.json"))
    # Every seed at every rate: no seed is the search's alone.
    assert searched == [("lr0.0001", "seed0"), ("lr0.0001", "seed1"), ("lr0.01", "seed0"),
                        ("lr0.01", "seed1")]
    m0, m1 = (json.loads((out / "M1" / f"seed{s}" / "metrics.json").read_text()) for s in (0, 1))
    assert m0["lr_selected"] == m1["lr_selected"] == m0["lr"] == m1["lr"]
    assert m0["lr_grid"] == m1["lr_grid"] == [1e-4, 1e-2]
    record = m0["lr_search"]
    assert record == m1["lr_search"] and record["on"] == "mean over seeds"
    assert record["seeds"] == [0, 1]
    # The choice is the best mean of the seeds' val values (val loss: the lowest).
    means = {lr: np.mean(list(v.values())) for lr, v in record["per_seed"].items()}
    chosen = f"{m0['lr_selected']:g}"
    assert means[chosen] == min(means.values()) and record["values"] == pytest.approx(means)
    # Each seed's result is its own run at the chosen rate.
    for seed, m in ((0, m0), (1, m1)):
        assert m["selection"]["value"] == record["per_seed"][chosen][str(seed)]
    results = pd.read_csv(out / "results.csv")
    assert list(results["seeds"]) == [2]  # the search runs are not rows of the table
    assert f"{chosen} (chosen on val)" in stdout and "mean val selection value" in stdout


def test_adding_seeds_never_leaves_a_row_at_two_rates(tmp_path, cli):
    root = fx.make_covid19(tmp_path, per_class=6)
    out = tmp_path / "grid"
    args = ["compare", "--dataset", "covid19", "--data-root", root, "--models", "M1", "--epochs",
            "1", "--lr-grid", "1e-4", "1e-2", "--out", out, *FAST]
    code, _, err = cli(*args, "--seeds", "0")
    assert code == 0, err
    code, _, err = cli(*args, "--seeds", "0", "1")
    assert code == 0, err
    m0, m1 = (json.loads((out / "M1" / f"seed{s}" / "metrics.json").read_text()) for s in (0, 1))
    # Both seeds carry the choice made over both, whatever seed 0 alone had chosen.
    assert m0["lr_search"]["seeds"] == m1["lr_search"]["seeds"] == [0, 1]
    assert m0["lr"] == m1["lr"] == m0["lr_selected"]


def test_a_grid_made_with_one_pretraining_mode_is_not_mixed_with_the_other(tmp_path, cli):
    root = fx.make_covid19(tmp_path, per_class=6)
    out = tmp_path / "grid"
    args = ["compare", "--dataset", "covid19", "--data-root", root, "--models", "M2", "--seeds",
            "0", "1", "--epochs", "1", "--ssl-epochs", "1", "--lr", "1e-3", "--out", out, *FAST]
    code, _, err = cli(*args, "--shared-ssl")
    assert code == 0, err
    code, _, err = cli(*args)  # now per seed: seed 1 would start from another pretraining
    assert code == 2 and "--shared-ssl" in err and "Fix" in err
    assert not (out / "ssl-random" / "seed1").exists()  # nothing trained for it
    code, _, err = cli(*args, "--shared-ssl")  # the mode it was made with: all reused
    assert code == 0, err


def test_compare_resume_continues_an_interrupted_search_run(tmp_path, monkeypatch):
    """A search run with a checkpoint of its own resumes under --resume (the model's own folder
    has none before the search adopts a run)."""
    from types import SimpleNamespace

    import medssl.experiments.compare as compare
    import medssl.training.finetune as finetune
    from medssl.experiments.grid import Cell
    from medssl.experiments.lr_search import search_dir

    base = tmp_path / "grid"
    started = search_dir(base, "M1", 1.0, 1e-3, 0)
    (started / "checkpoints").mkdir(parents=True)
    (started / "checkpoints" / "last.ckpt").write_bytes(b"")
    seen = {}

    def fake_run(cfg):  # records how each run was started, and writes what a run would
        seen[cfg.out] = cfg.resume
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out) / "metrics.json").write_text(json.dumps(
            {"selection": {"metric": "val/loss", "mode": "min", "value": cfg.lr}, "config": {}}))
        for name in ("val_predictions.csv", "test_predictions.csv"):
            (Path(cfg.out) / name).write_text("x")
        from medssl.runs import FINETUNE_OUTPUTS, mark_finished
        mark_finished(Path(cfg.out), FINETUNE_OUTPUTS)
        return Path(cfg.out)

    monkeypatch.setattr(finetune, "run_finetune", fake_run)
    cfg = SimpleNamespace(seeds=[0], shared_ssl=False, resume=True, imagenet_weights=None,
                          recipe=compare.RecipeOptions(lr_grid=[1e-3, 1e-4]))
    compare.run_finetune_cell(cfg, base, Cell("finetune", "M1", 1.0),
                              {"dataset": "covid19", "arch": "resnet18"})
    assert seen[str(started)] is True  # its checkpoint: resumed
    assert seen[str(search_dir(base, "M1", 1.0, 1e-4, 0))] is False  # none: started
