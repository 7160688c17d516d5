"""Grad-CAM maps (`medssl explain`, compare's gradcam.png): a network trained to find a bright
square in the top-left corner looks there and an untrained one does not; the sheet's CSV holds
exactly the grids drawn; a ViT's patch tokens are laid out on its patch grid; compare's figure
shows the same test images for every model and leaves out what has no network; bad inputs end
in a MedsslError with its fix."""

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medssl.errors import MedsslError

SIZE = 128  # ResNet-18's layer4 is then 4 x 4 cells: a map with a place (64 px: 2 x 2, and
# every cell's receptive field covers the whole picture, so the trained maps were flat)
SQUARE = (8, 40)  # the bright square's rows and columns: the top-left corner
PER_CLASS = 20  # 12 left 3 val images: selection on them kept an epoch that was right by chance


def corner_dataset(root: Path) -> Path:
    """A folder dataset of noise pictures: class `patch` has a bright square in the top-left
    corner, class `plain` none. (A `plain` made of the same pixels shuffled, to take away the
    square's brightness, was tried first: the scattered white pixels became the cue, and most
    seeds' maps were flat.)"""
    rng = np.random.default_rng(0)
    for cls in ("patch", "plain"):
        (root / cls).mkdir(parents=True)
        for i in range(PER_CLASS):
            pixels = rng.integers(0, 160, (SIZE, SIZE, 3), dtype=np.uint8)
            if cls == "patch":
                pixels[SQUARE[0]:SQUARE[1], SQUARE[0]:SQUARE[1]] = 255
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def corner_run(tmp_path_factory):
    """The corner dataset and an M1 (random init) ResNet-18 finetuned on it: 6 epochs, seed 0
    (about 10 s on 2 CPU cores; test accuracy 1)."""
    from medssl.cli import main

    tmp = tmp_path_factory.mktemp("explain")
    root = corner_dataset(tmp / "data")
    assert main(["finetune", "--dataset", "folder", "--data-root", str(root), "--model", "M1",
                 "--arch", "resnet18", "--image-size", str(SIZE), "--num-workers", "0",
                 "--batch-size", "8", "--epochs", "6", "--lr", "1e-3", "--seed", "0",
                 "--out", str(tmp / "run")]) == 0
    return root, tmp / "run"


def options(run, **kw):
    from medssl.training.predict import PredictOptions

    return PredictOptions(run=str(run), progress=False, accelerator="cpu", **kw)


def mean_map(source, root: Path) -> np.ndarray:
    """The mean of the maps of every `patch` picture, for the predicted class."""
    from medssl.training.explain import explain_pictures

    rel = [f"patch/{i}.png" for i in range(PER_CLASS)]
    return np.mean([e.grid for e in explain_pictures(source, options("x"), root, rel)], axis=0)


def top_left(grid: np.ndarray) -> tuple[bool, float]:
    """(whether the peak lies in the top-left quadrant, that quadrant's share of the map)."""
    half = grid.shape[0] // 2, grid.shape[1] // 2
    row, col = np.unravel_index(grid.argmax(), grid.shape)
    return bool(row < half[0] and col < half[1]), float(grid[:half[0], :half[1]].sum() / grid.sum())


def test_a_trained_network_looks_at_the_square_and_an_untrained_one_does_not(corner_run):
    # Maps averaged over the 20 square pictures: one picture's map is noisy (the noise
    # background differs), their mean is where the network looks for the class. The square
    # fills a sixteenth of the picture, inside the top-left quadrant: a map that ignores it puts
    # about a quarter of its mass there. The trained run's mean map peaks in that quadrant with
    # a share above a quarter (0.28 to 0.51 over finetuning seeds 0-6 tried; 0.51 for seed 0).
    # The untrained networks (three seeds, averaged) have the run's arch, head and
    # preprocessing: their maps show the architecture's own bias (the centre and the bottom
    # right, share about 0.1), not the square.
    from medssl.models.backbones import empty_backbone
    from medssl.training.classifier import make_head
    from medssl.training.predict import open_source

    root, run = corner_run
    trained = open_source(run)
    assert trained.classes == ["patch", "plain"]
    peak, share = top_left(mean_map(trained, root))
    assert peak and share > 0.25, share
    untrained = []
    for seed in range(3):
        torch.manual_seed(seed)
        untrained.append(mean_map(replace(trained, backbone=empty_backbone("resnet18").eval(),
                                          head=make_head("linear", 512, 2).eval()), root))
    peak_random, share_random = top_left(np.mean(untrained, axis=0))
    assert not peak_random and share_random < 0.25, share_random


def test_maps_hold_the_picture_as_seen_probabilities_and_the_class_asked_for(corner_run):
    from medssl.training.explain import MAX_CELLS, explain_pictures
    from medssl.training.predict import open_source, predict

    root, run = corner_run
    source = open_source(run)
    rel = ["patch/0.png", "plain/0.png"]
    maps = explain_pictures(source, options(run), root, rel)
    assert [e.path for e in maps] == rel
    e = maps[0]
    assert e.picture.shape == (SIZE, SIZE, 3) and 0 <= e.picture.min() and e.picture.max() <= 1
    # The picture as the network saw it: the square white (after the run's resize and crop).
    assert e.picture[:20, :20].mean() > 0.95
    assert e.grid.shape == (MAX_CELLS, MAX_CELLS) and 0 <= e.grid.min() and e.grid.max() <= 1
    # The probabilities are the run's own: what `medssl predict` writes for the same picture.
    predict(options(run, files=[str(root / p) for p in rel], out=str(root.parent / "p.csv")))
    theirs = pd.read_csv(root.parent / "p.csv").filter(like="prob_").to_numpy()
    assert np.abs(np.stack([m.probs for m in maps]) - theirs).max() < 1e-4
    assert [m.predicted for m in maps] == [m.target for m in maps]
    # Another class asked for: that class's map (by name or index), the prediction unchanged.
    other = explain_pictures(source, options(run), root, rel[:1], target="plain")[0]
    assert other.target == 1 and other.predicted == e.predicted
    assert not np.allclose(other.grid, e.grid)
    with pytest.raises(MedsslError, match="Fix"):
        explain_pictures(source, options(run), root, rel[:1], target="cat")


def test_explain_writes_the_sheet_and_a_csv_of_exactly_the_grids_drawn(corner_run, tmp_path,
                                                                        cli, monkeypatch):
    # The figure is caught as it is saved, so the test reads the arrays matplotlib draws, not
    # what the code meant to draw.
    import medssl.report.gradcam as gradcam

    root, run = corner_run
    drawn = {}
    save = gradcam.save_figure

    def catch(fig, path, data):
        drawn["grids"] = [ax.get_images()[1].get_array() for ax in fig.axes if ax.get_images()]
        drawn["titles"] = [ax.get_title() for ax in fig.axes if ax.get_images()]
        return save(fig, path, data)

    monkeypatch.setattr(gradcam, "save_figure", catch)
    files = [root / "patch" / "0.png", root / "plain" / "1.png", root / "patch" / "2.png"]
    code, out, err = cli("explain", run, *files, "--out", tmp_path / "x.png")
    assert code == 0, err
    assert (tmp_path / "x.png").stat().st_size > 0 and str(tmp_path / "x.png") in out
    table = pd.read_csv(tmp_path / "x.csv")
    assert list(table.columns) == ["path", "predicted", "probability", "target", "layer", "row",
                                   "col", "value"]
    # 128 px: the last stage has 4x4 cells, enough for a map with a place.
    assert set(table["layer"]) == {"layer4.1"}
    assert list(table["path"].unique()) == ["patch/0.png", "plain/1.png", "patch/2.png"]
    for (path, rows), grid, title in zip(table.groupby("path", sort=False), drawn["grids"],
                                         drawn["titles"]):
        cells = rows.pivot(index="row", columns="col", values="value").to_numpy()
        assert np.allclose(cells, np.asarray(grid), atol=1e-6), path
        assert title.startswith(path) and f"predicted {rows['predicted'].iloc[0]} (p=" in title


def test_a_vits_patch_tokens_are_laid_out_on_its_patch_grid(tmp_path):
    # A tiny timm ViT at 64 px (a 4 x 4 grid of 16-px patches) with a class token and 4
    # register tokens: dropping only the class token would leave 21 tokens, which no 4 x 4
    # grid holds.
    import timm

    from medssl.training.explain import explain_pictures, target_layer
    from medssl.training.finetune import FinetuneConfig
    from medssl.training.predict import Source

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=0,
                            reg_tokens=4).eval()
    assert vit.num_prefix_tokens == 5
    layer, reshape = target_layer(vit)
    assert layer is vit.blocks[-1].norm1
    seen = []
    hook = layer.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        vit(torch.randn(2, 3, 64, 64))
    hook.remove()
    tokens = seen[0]  # (2, 5 + 16, 192)
    grid = reshape(tokens)
    assert grid.shape == (2, 192, 4, 4)
    # Patch token k is cell (k // 4, k % 4), its channels first: the library's layout.
    assert torch.equal(grid[:, :, 1, 2], tokens[:, 5 + 1 * 4 + 2, :])
    # And the whole map through the library: one per picture, on the 0-1 scale, not flat.
    folder = tmp_path / "pics"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    source = Source("vit", "M1", vit, torch.nn.Linear(192, 2).eval(), ["a", "b"],
                    FinetuneConfig(dataset="folder", image_size=64), "random")
    maps = explain_pictures(source, options("vit"), folder, ["0.png", "1.png"])
    assert len(maps) == 2
    for e in maps:
        assert e.grid.shape == (32, 32) and e.grid.min() >= 0 and e.grid.max() <= 1
        assert e.grid.max() - e.grid.min() > 0.1


def test_the_grid_is_the_block_average_of_the_full_map_and_grey_pictures_are_shown_grey():
    from medssl.training.explain import as_seen, block_average

    full = np.random.default_rng(0).random((128, 96))
    grid = block_average(full)
    # 128 x 96 px into 32 x 32 cells: blocks of 4 x 3 px, each cell their mean.
    assert grid.shape == (32, 32)
    assert np.allclose(grid, full.reshape(32, 4, 32, 3).mean(axis=(1, 3)))
    assert block_average(full[:20, :20]).shape == (20, 20)  # smaller than 32: every pixel
    # 70 px: blocks of 2 or 3 px, none empty, the mean kept.
    uneven = block_average(full[:70, :70])
    assert uneven.shape == (32, 32) and abs(uneven.mean() - full[:70, :70].mean()) < 0.01
    grey = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)  # (1, 2, 2)
    shown = as_seen(grey)
    assert shown.shape == (2, 2, 3) and np.allclose(shown[..., 0], shown[..., 2])
    assert np.allclose(shown[..., 1], [[0, 1], [0.2, 0.4]])


def test_a_network_without_a_layer_to_map_is_refused():
    from medssl.training.explain import target_layer

    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    with pytest.raises(MedsslError, match="Sequential.*Fix"):
        target_layer(mlp)
    # A CNN that is neither a ResNet nor a ViT: its last convolution.
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 8, 3))
    assert target_layer(cnn) == (cnn[2], None)


def test_bad_inputs_end_in_an_error_with_its_fix(corner_run, tmp_path, cli):
    from medssl.models.backbones import empty_backbone

    root, run = corner_run
    picture = root / "patch" / "0.png"
    # A backbone file (no head, so no class to map).
    torch.save(empty_backbone("resnet18").state_dict(), tmp_path / "backbone.pt")
    (tmp_path / "backbone.json").write_text(json.dumps({"arch": "resnet18", "image_size": 32}))
    code, _, err = cli("explain", tmp_path / "backbone.pt", picture, "--out", tmp_path / "a.png")
    assert code == 2 and "no classifier head" in err and "Fix" in err
    # No pictures: none named, or a folder holding none.
    code, _, err = cli("explain", run, "--out", tmp_path / "a.png")
    assert code == 2 and "Which pictures?" in err and "Fix" in err
    (tmp_path / "empty").mkdir()
    code, _, err = cli("explain", run, "--data-root", tmp_path / "empty", "--out",
                       tmp_path / "a.png")
    assert code == 2 and "No pictures found" in err and "Fix" in err
    # More than a sheet shows (the whole dataset: 40 pictures, over a limit of 4).
    from medssl.report.gradcam import explain

    with pytest.raises(MedsslError, match="pass fewer"):
        explain(options(run, data_root=str(root), out=str(tmp_path / "a.png")), limit=4)
    # An --out that is no picture (the CSV would overwrite it).
    code, _, err = cli("explain", run, picture, "--out", tmp_path / "a.csv")
    assert code == 2 and ".png" in err and "Fix" in err
    assert not list(tmp_path.glob("a.*"))


def test_chosen_images_are_the_same_for_every_model_right_then_wrong_classes_in_turn():
    from medssl.report.comparisons import Predictions
    from medssl.report.gradcam import chosen_images

    paths = np.array(["a", "b", "c", "d", "e"])
    labels = np.array([0, 0, 1, 1, 0])

    def preds(predicted, keep=slice(None)):
        probs = np.eye(2)[predicted]
        return Predictions(paths[keep], labels[keep], probs[keep], paths[keep], None)

    # right by: a 2, b 2, c 1, d 0, e 1 (two models); e is only in the first model's test set.
    one = preds(np.array([0, 0, 1, 0, 0]))
    two = preds(np.array([0, 0, 0, 0, 0]), slice(0, 4))
    # The classes take turns: c (class 1, one of two right: a tie counts as right) comes
    # before b, which both got right but is of class 0 as a is.
    assert chosen_images([one, two], per_kind=2) == [("a", 0), ("c", 1), ("d", 1)]
    assert chosen_images([one, two], per_kind=3) == [("a", 0), ("c", 1), ("b", 0), ("d", 1)]
    assert chosen_images([two, one], per_kind=3) == chosen_images([one, two], per_kind=3)


def cohort_copy(run: Path, folder: Path) -> Path:
    """The run copied as a mutual-learning cohort's folder would be recorded (its model an
    ensemble, its config naming the members): it has no single network."""
    shutil.copytree(run, folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["model"] = "DML(M1+M3)"
    metrics["config"]["mutual"] = ["M1", "M3"]
    (folder / "metrics.json").write_text(json.dumps(metrics))
    marker = json.loads((folder / "finished.json").read_text())  # still finished: its sizes
    marker["files"]["metrics.json"] = (folder / "metrics.json").stat().st_size
    (folder / "finished.json").write_text(json.dumps(marker))
    return folder


def test_compares_figure_draws_each_model_on_the_same_test_images(corner_run, tmp_path, caplog):
    from medssl.report.gradcam import gradcam_figure

    root, run = corner_run
    cohort = cohort_copy(run, tmp_path / "dml")
    rows = [("M1", 0, 1.0, run), ("M1", 1, 1.0, tmp_path / "no-such-seed"),
            ("M1", 0, 0.5, tmp_path / "no-such-fraction"), ("M1-again", 0, 1.0, run),
            ("DML(M1+M3)", 0, 1.0, cohort)]
    runs = pd.DataFrame(rows, columns=["model", "seed", "label_fraction", "run"])
    runs["run"] = runs["run"].astype(str)
    runs["protocol"] = "finetune"
    caplog.set_level(logging.INFO, logger="medssl")
    out = gradcam_figure(runs, tmp_path / "fig" / "gradcam.png", per_kind=2)
    assert out == tmp_path / "fig" / "gradcam.png" and out.stat().st_size > 0
    table = pd.read_csv(out.with_suffix(".csv"))
    assert list(table.columns) == ["model", "path", "label", "predicted", "right", "layer",
                                   "row", "col", "value"]
    # The lowest seed at the largest fraction (the others do not exist: opening them would
    # have left M1 out); the cohort left out, and said so.
    assert list(table["model"].unique()) == ["M1", "M1-again"]
    assert "DML(M1+M3) left out" in caplog.text and "mutual-learning cohort" in caplog.text
    images = table.groupby("model", sort=False)["path"].unique()
    assert list(images["M1"]) == list(images["M1-again"])  # the same images for every model
    test = pd.read_csv(run / "test_predictions.csv")
    assert set(images["M1"]) <= set(test["path"]) and 1 <= len(images["M1"]) <= 4
    assert table["right"].all()  # the run got its test images right: right ones only, first
    assert list(images["M1"]) == sorted(images["M1"])  # all equally right: ties by path
    # Nothing to draw: no figure, nothing written.
    alone = runs[runs["model"] == "DML(M1+M3)"]
    assert gradcam_figure(alone, tmp_path / "none" / "gradcam.png") is None
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("size, stage", [(224, "layer4"), (128, "layer4"), (64, "layer3"),
                                         (32, "layer2")])
def test_a_resnets_map_is_taken_at_the_deepest_stage_with_four_cells_a_side(size, stage):
    # At the demo's 32 px the last stage is 1x1: its map has no place to show.
    import torchvision

    from medssl.training.explain import target_layer

    net = torchvision.models.resnet18()
    layer, reshape = target_layer(net, size)
    assert layer is getattr(net, stage)[-1] and reshape is None


def test_the_python_api_explains_as_the_command_does(corner_run, tmp_path):
    import medssl

    root, run = corner_run
    maps = medssl.explain(run, files=[str(root / "patch" / "0.png")], out=tmp_path / "s.png")
    assert (tmp_path / "s.png").is_file()
    assert maps.equals(pd.read_csv(tmp_path / "s.csv")) and set(maps["path"]) == {"0.png"}
    with pytest.raises(MedsslError, match="the sheet is a picture"):  # the command's check
        medssl.explain(run, files=[str(root / "patch" / "0.png")], out=tmp_path / "s.txt")
