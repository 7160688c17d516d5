"""Every self-supervised method: a few steps on one tiny batch lower its loss, the loss stays
finite, and its backbone exports as a plain torchvision state_dict; through `medssl pretrain`,
backbone.json says which method made it. SimCLR under the registry is the SimCLR it was."""

import json
from dataclasses import replace

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.models import resnet18

from medssl.data import fixtures as fx
from medssl.data.transforms import method_views, simclr_settings
from medssl.models import build_backbone, feature_dim, save_backbone
from medssl.presets import IMAGENET_MEAN, IMAGENET_STD
from medssl.names import method_names
from medssl.training.methods import get_method
from medssl.training.methods.base import STUDY_RECIPE

SIZE = 32


class FixedViews(Dataset):
    """The same eight images, the same crops every step: a loss that can only fall by learning."""

    def __init__(self, method, n=8):
        settings = simclr_settings(SIZE, "study")
        views = method.views(SIZE, settings, **method.defaults)
        self.crops, self.colour = method_views(views, SIZE, settings, IMAGENET_MEAN, IMAGENET_STD)
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 3, 40, 40), dtype=torch.uint8, generator=g)
        torch.manual_seed(0)
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        # Float views, normalised once: the per-batch colour draw (a new one every step) is
        # left out, so that the loss can only change by learning.
        self.items = [([(v.float() / 255 - mean) / std for v in self.crops(img)], i % 2)
                      for i, img in enumerate(images)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class Losses(pl.Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.values.append(float(outputs["loss"]))


# Settings scaled down for a 2-core CPU test; every other value is the method's default.
SMALL = {"moco": {"queue_size": 16}, "swav": {"prototypes": 16, "local_views": 2},
         "dino": {"output_dim": 64, "local_views": 2}, "byol": {"hidden_dim": 256},
         "simsiam": {"projection_dim": 256, "prediction_dim": 64},
         "barlowtwins": {"projection_dim": 256}, "vicreg": {"projection_dim": 256}}


@pytest.mark.parametrize("name", method_names())
def test_a_few_steps_lower_the_loss_and_the_backbone_exports(name, tmp_path):
    method = get_method(name)
    options = {**method.defaults, **SMALL.get(name, {})}
    data = FixedViews(type("M", (), {"views": staticmethod(
        lambda size, colour, **kw: method.views(size, colour, **options)), "defaults": options}))
    pl.seed_everything(0, verbose=False)
    recipe = replace(STUDY_RECIPE, warmup_epochs=0)  # the study's Adam at lr 1e-3, no warm-up
    module = method(build_backbone("resnet18"), feature_dim("resnet18"), recipe,
                    batch_transform=data.colour, **options)  # skipped: the views are floats
    losses = Losses()
    trainer = pl.Trainer(max_steps=10, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[losses])
    trainer.fit(module, DataLoader(data, batch_size=8))
    assert len(losses.values) == 10 and all(torch.isfinite(torch.tensor(losses.values)))
    # Falling from the third step on: by then MoCo's queue (two batches here) is full, and its
    # loss no longer rises with the number of negatives.
    assert sum(losses.values[-2:]) / 2 < losses.values[2], losses.values
    save_backbone(module.backbone, tmp_path / "backbone.pt", {"method": name})
    plain = resnet18()
    plain.fc = nn.Identity()
    plain.load_state_dict(torch.load(tmp_path / "backbone.pt", weights_only=True), strict=True)


@pytest.mark.parametrize("name", ["byol", "simsiam", "swav", "supcon"])
def test_pretrain_records_the_method_and_its_views(name, tmp_path, cli, caplog):
    root = fx.make_covid19(tmp_path, per_class=6)
    code, _, err = cli("pretrain", "--dataset", "covid19", "--data-root", root, "--method", name,
                       "--arch", "resnet18", "--image-size", "32", "--batch-size", "8", "--epochs",
                       "1", "--num-workers", "0", "--out", tmp_path / "run")
    assert code == 0, err
    meta = json.loads((tmp_path / "run" / "backbone.json").read_text())
    assert meta["method"] == name and meta["supervised"] == (name == "supcon")
    assert meta["method_source"] == get_method(name).source  # where its recipe comes from
    # SimSiam trains with its authors' SGD (SimSiam.recipe); the others with the study's Adam.
    assert (meta["optimizer"], meta["optimizer_from"]) == \
        (("sgd", "method") if name == "simsiam" else ("adam", "study"))
    assert meta["weight_decay"] == (1e-4 if name == "simsiam" else 1e-6)
    # The optimiser the run trained with (LearningRateMonitor names its column after it).
    header = (tmp_path / "run" / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert ("lr-SGD/" if name == "simsiam" else "lr-Adam/") in header
    assert f"before {meta['method_title']}: val kNN" in caplog.text  # the method, not "SimCLR"
    # SwAV at 32 px: its 14-px local crops dropped (fit_local_views), and the run says so.
    assert len(meta["views"]) == 2
    if name == "swav":
        assert meta["method_settings"]["local_views"] == 0
        assert meta["method_settings_asked"]["local_views"] == 6
    if name == "byol":  # asymmetric, as published
        assert meta["views"][0]["colour"]["gaussian_blur"] == 1.0
        assert meta["views"][1]["colour"]["solarize"] == 0.2
    plain = resnet18()
    plain.fc = nn.Identity()
    plain.load_state_dict(torch.load(tmp_path / "run" / "backbone.pt", weights_only=True))


def test_the_default_folder_carries_the_method(tmp_path):
    from medssl.runs import ssl_dir

    assert ssl_dir(tmp_path, "random").name == "ssl-random"  # the study's SimCLR keeps its name
    assert ssl_dir(tmp_path, "imagenet", "byol").name == "ssl-byol-imagenet"


def test_bad_method_settings_are_refused(tmp_path, cli):
    code, _, err = cli("pretrain", "--dataset", "demo", "--method", "moco", "--method-opt",
                       "temprature=0.2", "--out", tmp_path / "run")
    assert code == 2 and "moco has no setting temprature" in err and "temperature" in err
    code, _, err = cli("pretrain", "--dataset", "demo", "--method", "byol", "--label-fraction",
                       "0.5", "--out", tmp_path / "run")
    assert code == 2 and "byol uses no labels" in err
    assert not (tmp_path / "run").exists()


def test_supcon_loss_matches_a_hand_computed_case():
    """Khosla et al.'s L_out on four unit vectors, two classes, temperature 1."""
    import math

    from medssl.training.methods.supcon import supcon_loss

    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 0, 1])
    # Anchor 0: its one positive (row 2) has similarity 1; the others 0 and 0.
    expected = -math.log(math.e / (math.e + 2))
    assert supcon_loss(z, labels, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_warm_up_never_takes_more_than_a_tenth_of_the_run(tmp_path):
    from medssl.training.pretrain import PretrainConfig, resolve

    short = resolve(PretrainConfig(dataset="covid19", epochs=12, out=str(tmp_path / "a")))
    assert short.warmup_epochs == pytest.approx(1.2)  # the preset's 10 would be most of the run
    long = resolve(PretrainConfig(dataset="covid19", epochs=500, out=str(tmp_path / "b")))
    assert long.warmup_epochs == 10


def test_a_small_dataset_gets_enough_steps_unless_epochs_are_set(tmp_path):
    """A pretraining without --epochs makes at least the preset's ssl_min_steps optimiser steps:
    300 images in batches of 128 make 2 steps an epoch, so the generic preset's 200 epochs
    become 500. --epochs is kept as set, the demo's budget is its own, and a dataset with
    enough steps an epoch keeps the preset's epochs."""
    from medssl.presets import preset_for
    from medssl.training.pretrain import PretrainConfig, epochs_for, resolve

    def planned(dataset, share, batch, **kw):
        cfg = resolve(PretrainConfig(dataset=dataset, out=str(tmp_path / str(len(list(
            tmp_path.iterdir())))), **kw))
        before = replace(cfg)
        try:
            return epochs_for(cfg, share, batch)
        finally:
            assert cfg == before  # the resolved configuration is never changed

    minimum = preset_for("folder").ssl_min_steps
    assert minimum >= 900  # the digits set needed 900 steps (docs/methods.md)
    assert planned("folder", 300, 128) == (minimum // 2, "min_steps")
    assert planned("folder", 300, 128, epochs=30) == (30, "flag")
    assert planned("folder", 1_000_000, 128) == (preset_for("folder").ssl_epochs, "preset")
    assert planned("demo", 300, 32) == (preset_for("demo").ssl_epochs, "preset")


def test_the_raised_epochs_are_run_and_recorded(tmp_path, cli):
    # 12 train images in batches of 8: one step an epoch, so the covid19 preset's 500 epochs
    # become ssl_min_steps; --max-steps 2 ends the run early (the lr schedule is the planned one).
    from medssl.presets import preset_for

    root = fx.make_covid19(tmp_path, per_class=6)
    code, _, err = cli("pretrain", "--dataset", "covid19", "--data-root", root, "--arch",
                       "resnet18", "--image-size", "32", "--batch-size", "8", "--max-steps", "2",
                       "--num-workers", "0", "--out", tmp_path / "run")
    assert code == 0, err
    meta = json.loads((tmp_path / "run" / "backbone.json").read_text())
    assert (meta["epochs_planned"], meta["epochs_from"]) == (preset_for("covid19").ssl_min_steps,
                                                             "min_steps")
    assert meta["config"]["epochs"] == preset_for("covid19").ssl_epochs  # as resolved


def test_small_pictures_get_larger_smallest_crops_unless_one_is_set(tmp_path, caplog):
    """At 32 px the preset's 8% crop keeps 9 pixels per side: the smallest crop is raised to keep
    24 (transforms.smallest_crop), never above half the picture, never over a value set."""
    from medssl.data.transforms import smallest_crop
    from medssl.training.pretrain import PretrainConfig, resolve

    def fitted(size, **aug):
        cfg = PretrainConfig(dataset="covid19", epochs=2, image_size=size, augment_overrides=aug,
                             out=str(tmp_path / f"r{size}{len(aug)}"))
        return resolve(cfg).augment_overrides.get("min_scale")

    caplog.set_level("INFO", logger="medssl")
    assert fitted(32) == 0.5 and "crops of at least 0.5 of the picture at 32 px" in caplog.text
    assert fitted(64) == pytest.approx(smallest_crop(64), abs=1e-3) and 0.08 < fitted(64) < 0.5
    assert fitted(224) is None  # the preset's 0.08 keeps 63 px per side: unchanged
    assert fitted(32, min_scale=0.2) == 0.2  # the user's value is kept
    # The fitted crop is part of the settings, so a run's identity (compared on resume and
    # reuse) holds it; a fresh resolve of the same flags gives it again.
    cfg = PretrainConfig(dataset="covid19", epochs=2, image_size=32, out=str(tmp_path / "again"))
    assert resolve(replace(cfg)).augment_overrides == resolve(replace(cfg)).augment_overrides \
        == {"min_scale": 0.5}


def test_a_method_brings_its_published_optimiser_unless_one_is_set(tmp_path):
    from medssl.presets import preset_for
    from medssl.training.pretrain import PretrainConfig, resolve

    def run(**kw):
        return resolve(PretrainConfig(dataset="covid19", batch_size=128, epochs=30,
                                      out=str(tmp_path / str(len(list(tmp_path.iterdir())))), **kw))

    study_lr = preset_for("covid19").ssl_lr
    own = run(method="simsiam")  # SGD at 0.05 per 256 images, weight decay 1e-4, as published
    assert (own.optimizer, own.lr, own.weight_decay, own.optimizer_from) == \
        ("sgd", pytest.approx(0.025), 1e-4, "method")
    plain = run(method="simclr")  # the study's Adam
    assert (plain.optimizer, plain.lr, plain.weight_decay, plain.optimizer_from) == \
        ("adam", study_lr, 1e-6, "study")
    asked = run(method="simsiam", optimizer="adam")  # a set optimiser brings the study's lr
    assert (asked.optimizer, asked.lr, asked.weight_decay, asked.optimizer_from) == \
        ("adam", study_lr, 1e-6, "flag")
    lr_set = run(method="simsiam", lr=0.1)  # a set lr is kept
    assert (lr_set.optimizer, lr_set.lr, lr_set.weight_decay) == ("sgd", 0.1, 1e-4)


def test_compare_runs_every_method_into_one_table(tmp_path, cli):
    import pandas as pd

    root = fx.make_covid19(tmp_path, per_class=6)
    out = tmp_path / "grid"
    code, stdout, err = cli("compare", "--dataset", "covid19", "--data-root", root, "--ssl-methods",
                            "simclr", "byol", "swav", "--seeds", "0", "--epochs", "1",
                            "--ssl-epochs", "1", "--out", out, "--arch", "resnet18",
                            "--image-size", "32", "--batch-size", "8", "--num-workers", "0",
                            "--ssl-batch-size", "6", "--ssl-lr", "0.002", "--freeze-epochs", "1",
                            "--shared-ssl", "--lr", "1e-3")
    assert code == 0, err
    # Pretraining flags reach every pretraining; finetuning flags every finetuning.
    for ssl in ("ssl-random", "ssl-byol-random", "ssl-swav-random"):
        meta = json.loads((out / ssl / "backbone.json").read_text())
        assert meta["batch_size"] == 6 and meta["lr"] == 0.002, ssl
    m1 = json.loads((out / "M1" / "seed0" / "metrics.json").read_text())["config"]
    assert m1["freeze_epochs"] == 1 and m1["batch_size"] == 8
    results = pd.read_csv(out / "results.csv").set_index("model")
    # M3 and M4 (and M4-byol, M4-swav) are skipped offline, and said to be.
    assert sorted(results.index) == ["M1", "M2", "M2-byol", "M2-swav"]
    assert "M3 and M4 and M4-byol and M4-swav skipped" in stdout
    for model in ("M2", "M2-byol", "M2-swav"):
        assert not pd.isna(results.at[model, "test_acc_vs_M1_diff"])  # paired with its interval
    assert {p.name for p in out.iterdir() if p.name.startswith("ssl-")} == \
        {"ssl-random", "ssl-byol-random", "ssl-swav-random"}
    meta = json.loads((out / "M2-byol" / "seed0" / "metrics.json").read_text())
    assert meta["prior"]["method"] == "byol" and meta["model"] == "M2-byol"


def test_compare_pretrains_supcon_on_each_runs_own_labels(tmp_path, cli):
    """At a label fraction, supcon is pretrained per (fraction, seed) on exactly the labelled train
    images that finetuning run uses, and the table says the prior is supervised."""
    import pandas as pd

    from medssl.data.splits import label_subset

    root = fx.make_covid19(tmp_path, per_class=8)
    out = tmp_path / "grid"
    code, stdout, err = cli("compare", "--dataset", "covid19", "--data-root", root, "--models",
                            "M1", "M2-supcon", "--label-fractions", "1.0", "0.5", "--seeds", "0",
                            "1", "--epochs", "1", "--ssl-epochs", "1", "--out", out, "--arch",
                            "resnet18", "--image-size", "32", "--batch-size", "4",
                            "--ssl-batch-size", "4", "--num-workers", "0", "--shared-ssl",
                            "--lr", "1e-3")
    assert code == 0, err
    full = out / "ssl-supcon-random"
    assert json.loads((full / "backbone.json").read_text())["label_fraction"] == 1.0
    for seed in (0, 1):
        pre = full / "frac0.5" / f"seed{seed}"
        meta = json.loads((pre / "backbone.json").read_text())
        assert meta["supervised"] and meta["label_fraction"] == 0.5 and meta["seed"] == seed
        run = out / "M2-supcon" / "frac0.5" / f"seed{seed}"
        split = pd.read_csv(run / "split.csv")
        labelled = label_subset(split, 0.5, seed)
        seen = pd.read_csv(pre / "labelled_train.csv")
        assert sorted(seen["path"]) == sorted(labelled["path"])
        assert meta["labelled_train_images"] == len(labelled) < (split["split"] == "train").sum()
        prior = json.loads((run / "metrics.json").read_text())["prior"]
        assert prior["ssl_checkpoint"].startswith(str(pre))
    results = pd.read_csv(out / "results.csv")
    assert set(zip(results["model"], results["label_fraction"])) == \
        {("M1", 1.0), ("M1", 0.5), ("M2-supcon", 1.0), ("M2-supcon", 0.5)}
    assert "M2-supcon: a supervised prior" in (out / "results.md").read_text()


def test_moco_queue_fits_a_small_dataset_unless_the_user_set_it():
    from medssl.training.pretrain import fitted_options

    moco = get_method("moco")
    # 1221 train images (the digits set) in batches of 128: at most half of them, in whole batches.
    assert fitted_options(moco, dict(moco.defaults), {}, 1221, 128, 32)["queue_size"] == 512
    # ImageNet-sized data keeps the published queue.
    assert fitted_options(moco, dict(moco.defaults), {}, 1_281_167, 256, 224)["queue_size"] == 4096
    asked = {"queue_size": 4096}
    assert fitted_options(moco, {**moco.defaults, **asked}, asked, 1221, 128, 32)["queue_size"] == 4096
    # Methods without data-dependent defaults are unchanged.
    simclr = get_method("simclr")
    assert fitted_options(simclr, dict(simclr.defaults), {}, 100, 32, 32) == simclr.defaults


@pytest.mark.parametrize("name", ["swav", "dino"])
def test_multi_crop_has_no_local_crops_smaller_than_the_backbones_stride(name):
    from medssl.training.methods.base import local_crop_size
    from medssl.training.pretrain import fitted_options

    method = get_method(name)
    fitted = {size: fitted_options(method, dict(method.defaults), {}, 1221, 128, size)
              for size in (32, 64, 73, 74, 224)}
    # 14, 27 and 31 px crops: two global views only. 32 px and up: the published six.
    assert [fitted[size]["local_views"] for size in fitted] == [0, 0, 0, 6, 6]
    assert local_crop_size(73) == 31 and local_crop_size(224) == 96
    asked = {"local_views": 2}  # a value the user set is kept
    assert fitted_options(method, {**method.defaults, **asked}, asked, 1221, 128,
                          32)["local_views"] == 2


@pytest.mark.parametrize("name", ["swav", "dino"])
@pytest.mark.parametrize("min_scale", [0.08, 0.25, 0.5])
def test_multi_crop_keeps_global_crops_above_the_presets_floor_and_local_ones_below(name,
                                                                                     min_scale):
    method = get_method(name)
    settings = {**simclr_settings(SIZE, "study"), "min_scale": min_scale}
    views = method.views(SIZE, settings, **method.defaults)
    glob, local = views[:2], views[2:]
    border = glob[0].scale[0]
    assert border >= min_scale and all(v.scale == (border, 1.0) for v in glob)
    assert all(0 < v.scale[0] <= v.scale[1] == border for v in local)
    # The crops build and draw: a range the sampler accepts, whatever the floor.
    crops, _ = method_views(views, SIZE, settings, IMAGENET_MEAN, IMAGENET_STD)
    drawn = crops(torch.randint(0, 256, (3, SIZE * 8 // 7, SIZE * 8 // 7), dtype=torch.uint8))
    assert [tuple(v.shape[-2:]) for v in drawn] == [(v.size, v.size) for v in views]


@pytest.mark.parametrize("name", method_names())
def test_every_method_says_where_its_recipe_comes_from(name):
    """Each method's file names its source (the paper or benchmark) and what medssl changed:
    backbone.json records it, docs/methods.md explains it."""
    source = get_method(name).source
    assert len(source) > 40 and any(str(year) in source for year in range(2018, 2024))
