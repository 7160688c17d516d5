"""`medssl predict` (issue 36, part 1): a finished run applied to pictures with its own
preprocessing reproduces its own test predictions; bad pictures are listed, and skipped only
when asked; a folder that is no finished run, or one without a checkpoint, is refused."""

import pandas as pd
import pytest

from medssl.data import fixtures as fx

FAST = ["--arch", "resnet18", "--image-size", "32", "--num-workers", "0", "--batch-size", "8",
        "--epochs", "1", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A covid19 fixture and one finished M1 run on it."""
    from medssl.cli import main

    tmp = tmp_path_factory.mktemp("predict")
    root = fx.make_covid19(tmp, per_class=6)
    assert main(["finetune", "--dataset", "covid19", "--data-root", str(root), "--model", "M1",
                 *FAST, "--out", str(tmp / "run")]) == 0
    return root, tmp / "run"


def test_predict_reproduces_the_runs_own_test_predictions(trained, tmp_path, cli):
    root, run = trained
    code, out, err = cli("predict", run, "--data-root", root, "--out", tmp_path / "p.csv")
    assert code == 0, err
    ours = pd.read_csv(tmp_path / "p.csv").set_index("path")
    theirs = pd.read_csv(run / "test_predictions.csv").set_index("path")
    probs = [c for c in theirs if c.startswith("prob_")]
    assert len(ours) > len(theirs)  # every picture of the folder, the test ones among them
    diff = (ours.loc[theirs.index, probs] - theirs[probs]).abs().to_numpy().max()
    assert diff < 1e-4, diff
    assert (ours["predicted"] == ours[probs].idxmax(axis=1).str[len("prob_"):]).all()
    # The same pictures named one by one give the same rows.
    files = [root / p for p in theirs.index[:3]]
    code, _, err = cli("predict", run, *files, "--out", tmp_path / "three.csv")
    assert code == 0, err
    three = pd.read_csv(tmp_path / "three.csv")
    assert len(three) == 3
    assert (three[probs].to_numpy() - theirs[probs].to_numpy()[:3]).max() < 1e-4


def test_bad_pictures_are_listed_and_skipped_only_when_asked(trained, tmp_path, cli):
    _, run = trained
    folder = tmp_path / "new"
    folder.mkdir()
    (folder / "a.png").write_bytes(fx.picture("a"))
    (folder / "broken.png").write_bytes(b"not a picture")
    code, _, err = cli("predict", run, "--data-root", folder, "--out", tmp_path / "p.csv")
    assert code == 2 and "broken.png" in err and "--skip-bad-images" in err
    assert not (tmp_path / "p.csv").exists()
    code, _, err = cli("predict", run, "--data-root", folder, "--out", tmp_path / "p.csv",
                       "--skip-bad-images")
    assert code == 0, err
    assert list(pd.read_csv(tmp_path / "p.csv")["path"]) == ["a.png"]


def test_a_folder_that_is_no_finished_run_is_refused(trained, tmp_path, cli):
    root, run = trained
    code, _, err = cli("predict", tmp_path / "nothing", "--data-root", root)
    assert code == 2 and "does not exist" in err and "Fix" in err
    (run / "checkpoints" / "best.ckpt").rename(tmp_path / "best.ckpt")  # as a frozen run's
    try:
        code, _, err = cli("predict", run, "--data-root", root, "--out", tmp_path / "p.csv")
        assert code == 2 and "has no selected checkpoint" in err
    finally:
        (tmp_path / "best.ckpt").rename(run / "checkpoints" / "best.ckpt")
    code, _, err = cli("predict", run, "--data-root", root, "--tta")
    assert code == 2 and "--tta" in err and "uses none" in err  # covid19: no flips


def test_embed_writes_the_backbones_features_one_row_per_picture(trained, tmp_path, cli):
    import numpy as np
    import torch

    from medssl.training.predict import open_source

    root, run = trained
    code, _, err = cli("embed", run, "--data-root", root, "--out", tmp_path / "f.npz")
    assert code == 0, err
    saved = np.load(tmp_path / "f.npz")
    code, _, err = cli("predict", run, "--data-root", root, "--out", tmp_path / "p.csv")
    assert code == 0, err
    probs = pd.read_csv(tmp_path / "p.csv")
    assert list(saved["paths"]) == list(probs["path"])
    assert saved["features"].shape == (len(probs), 512)  # ResNet-18's
    # The run's own head on these features gives its predictions: they are its backbone's output.
    head = open_source(run).head
    again = head(torch.from_numpy(saved["features"])).softmax(1).detach().numpy()
    assert np.abs(again - probs.filter(like="prob_").to_numpy()).max() < 1e-5
    code, _, err = cli("embed", run, "--data-root", root, "--out", tmp_path / "f.csv")
    assert code == 0 and pd.read_csv(tmp_path / "f.csv").shape == (len(probs), 513)
    code, _, err = cli("embed", run, "--data-root", root, "--out", tmp_path / "f.txt")
    assert code == 2 and ".npz, .csv or .parquet" in err


def test_embed_takes_a_pretrained_backbone_file(trained, tmp_path, cli):
    import numpy as np

    root, _ = trained
    code, _, err = cli("pretrain", "--dataset", "covid19", "--data-root", root, *FAST[:-2],
                       "--out", tmp_path / "ssl")
    assert code == 0, err
    code, _, err = cli("embed", tmp_path / "ssl", "--data-root", root, "--out", tmp_path / "f.npz")
    assert code == 0, err
    assert np.load(tmp_path / "f.npz")["features"].shape[1] == 512
    code, _, err = cli("predict", tmp_path / "ssl" / "backbone.pt", "--data-root", root)
    assert code == 2 and "no classifier head" in err


def test_pictures_of_other_channels_are_read_as_the_run_reads_its_own(trained, tmp_path, cli):
    # A grey, a grey+alpha and an RGBA picture to an RGB run: the reader converts each as it
    # converts training pictures (data.images.to_rgb); nothing is refused or guessed.
    import io

    import numpy as np
    from PIL import Image

    _, run = trained
    folder = tmp_path / "odd"
    folder.mkdir()
    rgb = Image.open(io.BytesIO(fx.picture("odd"))).convert("RGB")
    for mode in ("L", "LA", "RGBA"):
        rgb.convert(mode).save(folder / f"{mode}.png")
    code, _, err = cli("predict", run, "--data-root", folder, "--out", tmp_path / "p.csv")
    assert code == 0, err
    probs = pd.read_csv(tmp_path / "p.csv").set_index("path").filter(like="prob_")
    assert len(probs) == 3 and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    # Grey with or without alpha is the same picture to the run.
    assert np.abs(probs.loc["L.png"] - probs.loc["LA.png"]).max() < 1e-5


def test_tta_averages_the_flips_the_run_trained_with(tmp_path, cli):
    # IDRiD's finetuning mirrors left and right (a fundus may be either eye): with --tta a
    # picture and its mirror image get the same probabilities; without, they do not. 28 px: the
    # centre crop of the 32 px picture leaves 2 px on each side, so mirroring commutes with it.
    import io

    import numpy as np
    from PIL import Image

    root = fx.make_idrid(tmp_path, per_class=4)
    code, _, err = cli("finetune", "--dataset", "idrid", "--data-root", root, "--model", "M1",
                       *FAST, "--image-size", "28", "--out", tmp_path / "run")
    assert code == 0, err
    folder = tmp_path / "pair"
    folder.mkdir()
    picture = Image.open(io.BytesIO(fx.picture("pair", fmt="PNG"))).convert("RGB")
    picture.save(folder / "a.png")
    picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "b.png")
    gaps = {}
    for tta in (False, True):
        out = tmp_path / f"tta{tta}.csv"
        code, _, err = cli("predict", tmp_path / "run", "--data-root", folder, "--out", out,
                           *(["--tta"] if tta else []))
        assert code == 0, err
        probs = pd.read_csv(out).set_index("path").filter(like="prob_")
        gaps[tta] = float(np.abs(probs.loc["a.png"] - probs.loc["b.png"]).max())
    assert gaps[True] < 1e-5 < gaps[False], gaps
