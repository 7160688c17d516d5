"""Finetuning M1-M4: the prior is really loaded, selection never sees test, the grid reuses runs."""

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.models import resnet18

from medssl.data import ReadOptions
from medssl.data import fixtures as fx
from medssl.data.splits import label_subset
from medssl.errors import MedsslError
from medssl.models import build_backbone, save_backbone
from medssl.models.backbones import imagenet_weights_file
from medssl.models.priors import load_prior
from medssl.options import ModelOptions
from medssl.training.finetune import FinetuneConfig, run_finetune

FAST = ["--arch", "resnet18", "--image-size", "32", "--num-workers", "0", "--batch-size", "16"]


RESNET18 = ModelOptions(arch="resnet18")  # the model part a run passes to load_prior


def ssl_file(folder: Path, arch="resnet18", init="random", dataset="covid19", seed=3) -> Path:
    torch.manual_seed(seed)
    model = build_backbone(arch)
    save_backbone(model, folder / "backbone.pt", {"arch": arch, "init": init, "dataset": dataset})
    return folder / "backbone.pt"


def test_m2_starts_from_the_ssl_file_and_m3_from_the_imagenet_file(tmp_path, offline_torch_home):
    path = ssl_file(tmp_path / "ssl")
    backbone, source = load_prior("M2", RESNET18, "covid19", path)
    saved = torch.load(path, weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in backbone.state_dict().items())
    assert source["ssl_checkpoint"] == str(path)

    name, cache = imagenet_weights_file("resnet18")
    cache.mkdir(parents=True)
    torch.manual_seed(7)
    reference = resnet18().state_dict()
    torch.save(reference, cache / name)
    backbone, source = load_prior("M3", RESNET18, "covid19")
    assert all(torch.equal(v, reference[k]) for k, v in backbone.state_dict().items())
    # M1 is random: not the ImageNet weights, and not the SSL file.
    m1, _ = load_prior("M1", RESNET18, "covid19")
    assert not torch.equal(m1.state_dict()["conv1.weight"], reference["conv1.weight"])


def test_ssl_backbones_that_do_not_fit_are_refused_by_name(tmp_path):
    with pytest.raises(MedsslError, match="(?s)none at .*ssl-random.*medssl pretrain --dataset covid19"):
        load_prior("M2", RESNET18, "covid19", base=tmp_path)
    other_arch = ssl_file(tmp_path / "a", arch="resnet34")
    with pytest.raises(MedsslError, match="it is a resnet34, this run uses --arch resnet18"):
        load_prior("M2", RESNET18, "covid19", other_arch)
    other_data = ssl_file(tmp_path / "b", dataset="isic")
    with pytest.raises(MedsslError, match="pretrained on isic.*--allow-other-dataset"):
        load_prior("M2", RESNET18, "covid19", other_data)
    assert load_prior("M2", RESNET18, "covid19", other_data, allow_other_dataset=True)
    with pytest.raises(MedsslError, match="from random init, M4 needs imagenet"):
        load_prior("M4", RESNET18, "covid19", ssl_file(tmp_path / "c"))
    # The JSON claims resnet18, the weights are resnet34: the strict load still catches it.
    lying = ssl_file(tmp_path / "d", arch="resnet34")
    lying.with_suffix(".json").write_text(json.dumps({"arch": "resnet18", "init": "random",
                                                      "dataset": "covid19"}))
    with pytest.raises(MedsslError, match="does not fit this backbone"):
        load_prior("M2", RESNET18, "covid19", lying)


def test_label_fraction_is_stratified_seeded_and_keeps_every_class():
    samples = pd.DataFrame({"path": [f"{i}.png" for i in range(230)],
                            "label": ["a"] * 200 + ["b"] * 27 + ["c"] * 3,
                            "group": [str(i) for i in range(230)], "split": "train"})
    subset = label_subset(samples, 0.1, seed=0)
    assert subset["label"].value_counts().to_dict() == {"a": 20, "b": 3, "c": 1}
    assert subset.equals(label_subset(samples, 0.1, seed=0))
    assert not subset.equals(label_subset(samples, 0.1, seed=1))
    assert label_subset(samples, 1.0, seed=0).equals(samples)


def csv_dataset(folder: Path, permute_test: bool) -> Path:
    """A csv dataset with an official test split; optionally with test labels shuffled."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        label = ["dark", "light"][i % 2]
        split = "test" if i >= 44 else "train"
        value = 60 if label == "dark" else 190
        arr = np.clip(rng.normal(value, 40, (24, 24, 3)), 0, 255).astype(np.uint8)
        (folder / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(folder / "img" / f"{i}.png")
        rows.append({"path": f"img/{i}.png", "label": label, "split": split})
    table = pd.DataFrame(rows)
    if permute_test:
        test = table["split"] == "test"
        table.loc[test, "label"] = rng.permutation(table.loc[test, "label"].to_numpy())
    table.to_csv(folder / "labels.csv", index=False)
    return folder


def finetune_cfg(root, out, **kw) -> FinetuneConfig:
    return FinetuneConfig(dataset="csv", model="M1", data_root=str(root), out=str(out),
                          arch="resnet18", image_size=32, epochs=3, batch_size=16, lr=1e-3,
                          num_workers=0, progress=False, read_options=ReadOptions(split_column="split"),
                          **kw)


def test_selection_never_looks_at_test_labels(tmp_path):
    a = json.loads((run_finetune(finetune_cfg(csv_dataset(tmp_path / "a", False), tmp_path / "ra"))
                    / "metrics.json").read_text())
    b = json.loads((run_finetune(finetune_cfg(csv_dataset(tmp_path / "b", True), tmp_path / "rb"))
                    / "metrics.json").read_text())
    assert a["selection"] == b["selection"]
    assert a["val"] == b["val"] and a["train"] == b["train"]
    assert a["test"] != b["test"]  # the permutation did reach the test labels


def test_finetune_outputs_and_finished_folder(tmp_path, cli):
    root = fx.make_covid19(tmp_path, per_class=8)
    out = tmp_path / "run"
    args = ["finetune", "--dataset", "covid19", "--data-root", root, "--model", "M1", "--epochs",
            "2", "--out", out, "--label-fraction", "0.5", "--seed", "1", *FAST]
    code, stdout, err = cli(*args)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "M1" and m["seed"] == 1 and m["label_fraction"] == 0.5
    assert 1 <= m["selection"]["epoch"] <= 2 and m["selection"]["metric"] == "val/loss"
    for split in ("train", "val", "test"):
        assert {"acc", "balanced_acc", "macro_f1", "auroc", "loss", "per_class_recall",
                "confusion_matrix"} <= set(m[split])
    labelled = pd.read_csv(out / "labelled_train.csv")
    assert m["labelled_train_images"] == len(labelled) == m["train"]["n"]
    preds = pd.read_csv(out / "test_predictions.csv")
    assert list(preds.columns) == ["path", "label", "prob_Covid", "prob_Normal", "prob_Viral Pneumonia"]
    assert np.allclose(preds.filter(like="prob_").sum(axis=1), 1, atol=1e-4)
    curves = pd.read_csv(out / "logs" / "metrics.csv")
    assert {"train/acc", "val/acc", "train/loss", "val/loss", "val/balanced_acc", "val/auroc",
            "val/macro_f1", "val/recall/Viral Pneumonia"} <= set(curves.columns)
    code, _, err = cli(*args)
    assert code == 2 and "already holds a finished run (finished.json)" in err


def test_ssl_that_saw_test_images_is_refused(tmp_path, cli):
    root = fx.make_covid19(tmp_path, per_class=8)
    ssl = ssl_file(tmp_path / "ssl")
    # A split where SimCLR trained on every image, test ones included.
    code, out, _ = cli("check", "--dataset", "covid19", "--data-root", root, "--split-out",
                       tmp_path / "s.csv")
    everything = pd.read_csv(tmp_path / "s.csv").assign(split="train")
    everything.to_csv(ssl.parent / "split.csv", index=False)
    code, _, err = cli("finetune", "--dataset", "covid19", "--data-root", root, "--model", "M2",
                       "--ssl-checkpoint", ssl, "--split-file", tmp_path / "s.csv", "--epochs", "1",
                       "--out", tmp_path / "run", *FAST)
    assert code == 2 and "pretrained on" in err and "holds out for val/test" in err


def test_batch_size_above_the_dataset_is_clamped_and_said(tmp_path, cli, caplog):
    root = fx.make_covid19(tmp_path, per_class=6)
    args = [*FAST[:-1], "1000"]  # FAST ends with the batch size
    for command in (["finetune", "--model", "M1"], ["pretrain"]):
        caplog.clear()
        code, _, err = cli(*command, "--dataset", "covid19", "--data-root", root, "--epochs", "1",
                           "--out", tmp_path / command[0], *args)
        assert code == 0, err
        assert "--batch-size 1000 is above the" in caplog.text, command


@pytest.mark.parametrize("flag, value", [("--label-fraction", "0"), ("--label-fraction", "1.5"),
                                         ("--epochs", "0"), ("--model", "M5")])
def test_bad_finetune_flags(cli, capsys, flag, value):
    args = ["finetune", "--dataset", "demo", "--model", "M1", flag, value]
    with pytest.raises(SystemExit) as exit_:
        cli(*args)
    assert exit_.value.code == 2 and flag in capsys.readouterr().err


def test_compare_runs_the_grid_skips_imagenet_offline_reuses_and_reports(tmp_path, cli, caplog):
    root = fx.make_covid19(tmp_path, per_class=8, real_copies=True)  # 5 test images copied into train
    out = tmp_path / "grid"
    args = ["compare", "--dataset", "covid19", "--data-root", root, "--epochs", "1",
            "--ssl-epochs", "1", "--seeds", "0", "1", "--out", out,
            "--images-dir", tmp_path / "Images", *FAST]
    code, stdout, err = cli(*args)
    assert code == 0, err
    for name in ("results.csv", "results.md", "curves.png"):
        assert (out / name).is_file()
    assert (tmp_path / "Images" / "covid19_curves.png").is_file()
    assert "M3 and M4 skipped" in stdout and "resnet18-f37072fd.pth" in stdout
    # What the duplicate policy did is in every run's metadata and under the table.
    assert "Duplicates (--duplicates drop): 5 group(s) of copies of one picture found; 5 image(s) " \
           "left out of train, val and SSL (5 copies of test images)." in stdout
    metrics = json.loads((out / "M1" / "seed0" / "metrics.json").read_text())
    assert metrics["data"]["duplicates"]["policy"] == "drop"
    assert metrics["data"]["duplicates"]["excluded_images"] == 5
    assert metrics["config"]["duplicates"] == "drop"
    results = pd.read_csv(out / "results.csv")
    assert sorted(results["model"]) == ["M1", "M2"] and set(results["seeds"]) == {2}
    assert not np.isnan(results.set_index("model").loc["M2", "test_acc_vs_M1_diff"])
    # Every metric paired with M1 and M3; the primary one (balanced accuracy: three classes)
    # Holm-adjusted with the interval that agrees with it, the others unadjusted.
    for metric in ("acc", "balanced_acc", "macro_f1", "auroc", "ece"):
        for key in ("diff", "low", "high", "p", "se", "df"):
            assert f"test_{metric}_vs_M1_{key}" in results and f"test_{metric}_vs_M3_{key}" in results
    for key in ("p_holm", "low_holm", "high_holm", "mde"):
        assert f"test_balanced_acc_vs_M1_{key}" in results
    assert "test_acc_vs_M1_p_holm" not in results
    assert (results["primary_metric"] == "balanced_acc").all()
    md = (out / "results.md").read_text()
    assert md.startswith("## Answer") and "Primary endpoint: **balanced accuracy** (declared " \
        "before the runs, the task's default)" in md
    assert json.loads((out / "analysis.json").read_text())["primary_metric"] is None
    # By default: each prior's lr chosen from the preset's grid on the mean val value of its
    # seeds, and each seed of M2 finetuned from its own pretraining.
    m = json.loads((out / "M2" / "seed1" / "metrics.json").read_text())
    assert m["lr_grid"] == [1e-5, 1e-4, 1e-3] and m["lr_search"]["seeds"] == [0, 1]
    assert m["prior"]["ssl_checkpoint"].endswith("ssl-random/seed1/backbone.pt")
    assert results.set_index("model").at["M2", "sd_includes"] == "finetuning + pretraining"
    assert "Learning rates chosen per model on the mean val selection value over all its " \
        "seeds, from 1e-05 0.0001 0.001" in md
    # The second call trains nothing: every run is reused, unchanged.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    assert len(stamps) == 4 + 12  # 2 models x 2 seeds, and their lr-search runs (3 rates)
    caplog.clear()
    code, _, err = cli(*args)
    # The 4 finetunings reused; the 2 pretrainings checked (their identity: another --ssl-*
    # flag must not pass for these results) and reused, never trained again.
    assert code == 0 and caplog.text.count("reusing finished") == 4 + 2
    assert caplog.text.count("reusing finished pretraining") == 2
    assert "pretraining from" not in caplog.text
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    # `report` rebuilds the same table from the finished runs alone.
    before = (out / "results.md").read_text()
    for name in ("results.csv", "results.md", "curves.png"):
        (out / name).unlink()
    code, stdout, _ = cli("report", out)
    assert code == 0 and (out / "results.md").read_text() == before and (out / "curves.png").is_file()
    # A run without its completion marker (cut off, or copied half-way) is left out, by name.
    (out / "M2" / "seed1" / "finished.json").unlink()
    caplog.clear()
    code, stdout, _ = cli("report", out)
    assert code == 0 and "not reported, unfinished (interrupted" in caplog.text and "M2/seed1" in caplog.text
    assert "Not included, unfinished (`medssl report` says why): M2/seed1" in stdout
    m2 = pd.read_csv(out / "results.csv").set_index("model").loc["M2"]
    assert m2["seeds"] == 1
    # Runs split under another policy cannot share the table: said, never averaged.
    path = out / "M1" / "seed1" / "metrics.json"
    path.write_text(path.read_text().replace('"policy": "drop"', '"policy": "keep"'))
    code, _, err = cli("report", out)
    assert code == 2 and "split differently" in err


def test_finetuning_script_names_its_preset_and_passes_flags(tmp_path):
    import subprocess
    import sys

    root = fx.make_covid19(tmp_path, per_class=6)
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, str(repo / "Finetuning" / "Finetune_covid19.py"), "--data-root", str(root),
         "--model", "M1", "--epochs", "1", "--out", str(tmp_path / "run"), *FAST],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["dataset"] == "covid19" and m["config"]["arch"] == "resnet18"


def test_two_seeded_cpu_runs_write_identical_metrics(tmp_path, cli):
    root = fx.make_covid19(tmp_path, per_class=6)
    runs = []
    for name in ("a", "b"):
        code, _, err = cli("finetune", "--dataset", "covid19", "--data-root", root, "--model", "M1",
                           "--epochs", "2", "--seed", "3", "--deterministic", "--out",
                           tmp_path / name, *FAST)
        assert code == 0, err
        m = json.loads((tmp_path / name / "metrics.json").read_text())
        # Times are the machine's, not the run's result: the pace (images/s) is one too.
        del m["wall_time_s"], m["config"]["out"], m["compute"]["images_per_s"]
        runs.append(m)
    assert runs[0] == runs[1]


def test_doubtful_flags_are_warned_at_the_start(tmp_path, caplog):
    """--freeze-epochs that leave the backbone untrained, and ImageNet weights given to a model
    that starts from random ones: allowed, said before any work."""
    from medssl.training.finetune import resolve
    from medssl.training.pretrain import PretrainConfig
    from medssl.training.pretrain import resolve as resolve_pretrain

    cfg = resolve(FinetuneConfig(dataset="covid19", model="M1", epochs=3, freeze_epochs=5,
                                 imagenet_weights="IMAGENET1K_V2", out=str(tmp_path / "r")))
    assert "--freeze-epochs 5 is not below --epochs 3" in caplog.text
    assert "--imagenet-weights IMAGENET1K_V2 is ignored: M1" in caplog.text
    assert cfg.imagenet_weights is None  # recorded as not used
    caplog.clear()
    resolve_pretrain(PretrainConfig(dataset="covid19", imagenet_weights="w.pth",
                                    out=str(tmp_path / "p")))
    assert "--imagenet-weights w.pth is ignored: pretraining from --init random" in caplog.text
    caplog.clear()
    assert resolve(FinetuneConfig(dataset="covid19", model="M3", out=str(tmp_path / "m3"))
                   ).imagenet_weights == "IMAGENET1K_V1"
    assert "ignored" not in caplog.text


def test_data_warnings_are_said_when_training_starts(tmp_path, caplog):
    from medssl.data import DataConfig, prepare

    labels = ["a", "b", "A"] * 4 + ["c", "c"]
    splits = ["train"] * 12 + ["test", "test"]
    for i in range(len(labels)):
        fx.write(tmp_path / f"{i}.png", fx.picture(f"warned/{i}", "PNG"))
    (tmp_path / "labels.csv").write_text("path,label,split\n" + "".join(
        f"{i}.png,{label},{split}\n" for i, (label, split) in enumerate(zip(labels, splits))))
    prepare(DataConfig("csv", str(tmp_path)), progress=False)
    assert "'A' and 'a' differ only by case" in caplog.text
    assert "class 'c' has no train images (2 in test)" in caplog.text


def test_allow_other_dataset_finetunes_on_the_target_datasets_own_split(tmp_path, cli):
    root = fx.make_covid19(tmp_path, per_class=6)
    ssl = ssl_file(tmp_path / "ssl", dataset="isic")
    # The SSL run's split names ISIC images: it must not be imposed on covid19.
    (ssl.parent / "split.csv").write_text("path,label,group,split,reason,duplicate_policy\n"
                                          "ISIC_0000000.jpg,MEL,ISIC_0000000,train,,drop\n")
    code, _, err = cli("finetune", "--dataset", "covid19", "--data-root", root, "--model", "M2",
                       "--ssl-checkpoint", ssl, "--allow-other-dataset", "--epochs", "1",
                       "--out", tmp_path / "run", *FAST)
    assert code == 0, err
    split = pd.read_csv(tmp_path / "run" / "split.csv")
    assert not split["path"].str.startswith("ISIC").any() and len(split) == 36
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["prior"]["ssl_dataset"] == "isic"


def test_a_last_training_batch_of_one_image_is_left_out(tmp_path, caplog):
    """At 32 px ResNet's last feature map is 1x1, where BatchNorm refuses a batch of one image:
    a train split of k * batch + 1 images ran into an internal error before its last batch was
    left out."""
    root = csv_dataset(tmp_path / "data", False)
    first = run_finetune(replace(finetune_cfg(root, tmp_path / "a"), epochs=1))
    n = json.loads((first / "metrics.json").read_text())["labelled_train_images"]
    assert n > 3  # so that batches of n - 1 leave one image over
    caplog.clear()
    caplog.set_level(logging.INFO, logger="medssl")
    run = run_finetune(replace(finetune_cfg(root, tmp_path / "b"), epochs=1, batch_size=n - 1))
    assert (run / "finished.json").exists()
    assert f"{n} training images in batches of {n - 1}: the last batch, of one image" in caplog.text
