"""A failed pretraining is named (issue 33): one that diverges or collapses stops at once with the
method and the setting to change; one that ends at or below a random init says so, results.md
marks its rows, and --min-gain refuses it."""

import json

import pytest
import torch

from medssl.data import fixtures as fx
from medssl.runs import BACKBONE, MARKER
from medssl.training import pretrain
from medssl.training.knn import readout_gain
from medssl.training.pretrain import PretrainConfig, random_init

FAST = ["--arch", "resnet18", "--image-size", "32", "--num-workers", "0", "--batch-size", "8"]


def pretrain_args(root, out, *extra):
    return ["pretrain", "--dataset", "covid19", "--data-root", root, "--out", out, "--epochs",
            "2", *FAST, *extra]


def test_a_diverging_pretraining_stops_naming_the_method_and_the_lr(tmp_path, cli):
    # Adam moves every weight by about the lr in its first steps: at 1e30 the activations
    # overflow and the loss is NaN within a few steps.
    root = fx.make_covid19(tmp_path, per_class=8)
    code, _, err = cli(*pretrain_args(root, tmp_path / "ssl", "--lr", "1e30", "--warmup-epochs",
                                      "0"))
    assert code == 2, err
    assert "SimCLR: the loss became nan" in err and "the training diverged" in err
    assert "--lr 1e+29" in err and "temperature" in err  # the lr, and SimCLR's own setting
    assert not (tmp_path / "ssl" / BACKBONE).exists() and not (tmp_path / "ssl" / MARKER).exists()


def test_a_collapsed_pretraining_stops_naming_the_method(tmp_path, cli):
    """A representation that collapsed: every image gets the same features. Starting weights
    whose convolutions and BatchNorm scales are zero give all-zero features, and zero gradients
    keep them there, so the collapse is certain at the first look. (VICReg without its variance
    and covariance terms, and SimSiam without its stop-gradient, drifted towards it on this
    fixture but stayed above the bar in 180 steps: docs/methods.md.)"""
    from medssl.models import build_backbone

    state = build_backbone("resnet18").state_dict()
    zeroed = {k: v if "running_var" in k or not v.is_floating_point() else torch.zeros_like(v)
              for k, v in state.items()}
    torch.save(zeroed, tmp_path / "zeroed.pt")
    root = fx.make_covid19(tmp_path, per_class=8)
    code, _, err = cli(*pretrain_args(root, tmp_path / "ssl", "--init", "imagenet",
                                      "--imagenet-weights", tmp_path / "zeroed.pt"))
    assert code == 2, err
    assert "SimCLR collapsed by step" in err and "every image gets nearly the same backbone " \
           "features (their spread across the batch is 0.0e+00" in err and "--lr" in err
    assert not (tmp_path / "ssl" / MARKER).exists()


def test_the_readout_gain_is_in_points_over_a_random_init():
    random = {"knn_balanced_acc": 0.50, "fewshot_balanced_acc": 0.40}
    after = {"knn_balanced_acc": 0.56, "fewshot_balanced_acc": 0.38}
    assert readout_gain(after, random) == pytest.approx(2.0)  # (+6 - 2) / 2 points
    assert readout_gain(None, random) is None and readout_gain(after, None) is None


def test_the_random_init_bar_is_seeded_and_leaves_the_runs_random_stream_alone():
    cfg = PretrainConfig(dataset="covid19", arch="resnet18", seed=5)
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    a, b = random_init(cfg)(), random_init(cfg)()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                  b.state_dict().values()))


def test_a_pretraining_that_did_not_learn_is_said_recorded_marked_and_refused(tmp_path, cli,
                                                                               monkeypatch,
                                                                               caplog):
    """Whether a short pretraining on a fixture beats its random init is chance: the gain is
    set here (the read-outs themselves are tested above and in test_pretrain), and what
    follows from it is checked: the warning, backbone.json, the ‡ row and --ssl-min-gain."""
    monkeypatch.setattr(pretrain, "readout_gain", lambda last, random: -3.25)
    root = fx.make_covid19(tmp_path, per_class=8)
    grid = ["compare", "--dataset", "covid19", "--data-root", root, "--models", "M1", "M2",
            "--seeds", "0", "--epochs", "1", "--ssl-epochs", "1", "--lr", "1e-3",
            "--out", tmp_path / "grid", *FAST]
    code, stdout, err = cli(*grid)
    assert code == 0, err
    record = json.loads((tmp_path / "grid" / "ssl-random" / "seed0" / "backbone.json")
                        .read_text())
    assert record["readout_gain"] == -3.25 and record["learned"] is False
    assert record["random_knn_balanced_acc"] == record["initial_knn_balanced_acc"]
    assert "SimCLR ended at or below a random init: -3.2 points" in caplog.text
    md = (tmp_path / "grid" / "results.md").read_text()
    assert "| M2 ‡ |" in md and "| M1 |" in md
    assert "M2: the pretraining ended at or below a random init" in md.split("## Results")[0]
    assert "M2 ‡: its pretraining ended at or below a random init of the network on the val " \
           "read-outs (points over it, seed 0: -3.2)" in md
    # The same grid, now refusing a pretraining below +1 point: judged again, nothing trained.
    code, _, err = cli(*grid, "--ssl-min-gain", "1")
    assert code == 2 and "-3.2 points over a random init" in err and "below --ssl-min-gain 1" in err


@pytest.mark.parametrize("name", ["simclr", "dino"])
def test_a_training_step_keeps_the_spread_of_features_and_of_the_embedding(name):
    """The guard reads both spreads: the backbone's (encode) and the embedding head's (a forward
    hook on `embedding_head`, DINO's student head); a module in eval mode keeps none."""
    from medssl.models import build_backbone
    from medssl.training.methods import get_method

    method = get_method(name)
    torch.manual_seed(0)
    module = method(build_backbone("resnet18"), 512, **method.fit_to_data(
        dict(method.defaults), 64, 8, 32))
    views = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    module.eval()
    module.loss(views, torch.zeros(8, dtype=torch.long))
    assert module.feature_spread is None and module.embedding_spread is None
    module.train()
    module.loss(views, torch.zeros(8, dtype=torch.long))
    assert float(module.feature_spread) > 1e-3 and float(module.embedding_spread) > 1e-4
