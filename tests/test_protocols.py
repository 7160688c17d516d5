"""The protocols that compare priors (issue 35, part 4): full finetuning, a linear probe and kNN
on frozen features. Each protocol is a column of the run's identity and of results.csv; the
table compares priors within a protocol; the frozen features are computed once per prior and
seed for both frozen protocols; the backbone is never changed by them; choices are made on val."""

import json

import pandas as pd
import pytest
import safetensors.torch as st
import timm
import torch

from medssl.data import fixtures as fx
from medssl.training import frozen
from medssl.training.frozen import Features, knn_protocol, linear_probe

TINY = "vit_tiny_patch16_224"
PRIOR = f"F-timm:{TINY}"
FAST = ["--image-size", "32", "--num-workers", "0", "--batch-size", "8", "--epochs", "1",
        "--lr", "1e-3"]


@pytest.fixture(scope="module")
def covid(tmp_path_factory):
    return fx.make_covid19(tmp_path_factory.mktemp("data"), per_class=6)


def test_compare_judges_priors_within_each_protocol_on_unchanged_backbones(covid, tmp_path, cli,
                                                                           monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached plays a part
    torch.manual_seed(0)
    path = tmp_path / "vit.safetensors"
    st.save_file(timm.create_model(TINY, pretrained=False).state_dict(), str(path))
    embedded = []
    original = frozen.frozen_features

    def watched(cfg, backbone, loaders):  # the weights before and after the features
        before = {k: v.clone() for k, v in backbone.state_dict().items()}
        out = original(cfg, backbone, loaders)
        embedded.append((cfg.model, before, backbone.state_dict(), backbone.training))
        return out

    monkeypatch.setattr(frozen, "frozen_features", watched)
    code, _, err = cli("compare", "--dataset", "covid19", "--data-root", covid, "--models",
                       "M1", "--priors", f"timm:{TINY}={path}", "--protocols", "finetune",
                       "linear", "knn", "--seeds", "0", "1", *FAST, "--out", tmp_path / "grid")
    assert code == 0, err
    # Once per prior and seed, for both frozen protocols.
    assert sorted(m for m, *_ in embedded) == sorted(["M1", "M1", PRIOR, PRIOR])
    for model, before, after, training in embedded:
        assert not training  # eval mode: BatchNorm's statistics are not updated
        assert all(torch.equal(before[k], after[k]) for k in before), model
    saved = st.load_file(str(path))
    prior_state = next(b for m, b, *_ in embedded if m == PRIOR)
    assert all(torch.equal(saved[k], prior_state[k]) for k in prior_state if k != "pos_embed")
    table = pd.read_csv(tmp_path / "grid" / "results.csv")
    assert set(zip(table["protocol"], table["model"])) == {
        (p, m) for p in ("finetune", "linear", "knn") for m in ("M1", PRIOR)}
    for protocol in ("finetune", "linear", "knn"):
        row = table[(table["protocol"] == protocol) & (table["model"] == PRIOR)].iloc[0]
        assert row["vs_M1_seeds"] == 2 and not pd.isna(row["test_balanced_acc_vs_M1_low"])
        assert row["parameters_mean"] > 0 and row["images_per_s_mean"] > 0  # cost beside gain
    record = json.loads((tmp_path / "grid" / "F-timm-vit_tiny_patch16_224" / "linear" / "seed0"
                         / "metrics.json").read_text())
    assert record["protocol"] == "linear" and record["selection"]["lr"] in frozen.LINEAR_LRS
    identity = json.loads((tmp_path / "grid" / "M1" / "knn" / "seed1" / "identity.json")
                          .read_text())
    assert identity["settings"]["protocol"] == "knn"
    said = (tmp_path / "grid" / "results.md").read_text()
    assert "## Results: linear probe on frozen features" in said and "k chosen" in said
    assert "This answer is about the finetuned priors" in said
    # A frozen run lost (an interruption) runs again under --resume, alone; the rest is reused.
    import shutil

    shutil.rmtree(tmp_path / "grid" / "M1" / "knn" / "seed1")
    embedded.clear()
    code, _, err = cli("compare", "--dataset", "covid19", "--data-root", covid, "--models",
                       "M1", "--priors", f"timm:{TINY}={path}", "--protocols", "finetune",
                       "linear", "knn", "--seeds", "0", "1", *FAST, "--out", tmp_path / "grid",
                       "--resume")
    assert code == 0, err
    assert [m for m, *_ in embedded] == ["M1"]
    assert (tmp_path / "grid" / "M1" / "knn" / "seed1" / "metrics.json").is_file()


def features(seed: int, n: int = 30, classes: int = 3) -> dict:
    """Three splits of separable features with some noise."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for split in ("train", "val", "test"):
        y = torch.arange(n) % classes
        x = torch.nn.functional.one_hot(y, classes).float() * 2 + torch.randn(n, classes,
                                                                              generator=g)
        out[split] = Features(torch.cat([x, torch.randn(n, 5, generator=g)], 1), y, None)
    return out


def test_knn_leaves_a_train_image_out_of_its_own_neighbours():
    # Two train images of different classes, each the other's nearest: with itself left out,
    # each is predicted as the other's class (with itself in, both would be right).
    train = Features(torch.tensor([[1.0, 0.0], [0.9, 0.1]]), torch.tensor([0, 1]), None)
    probs = frozen.knn_probs(train, train.x, 1, 2, itself=True)
    assert probs.argmax(1).tolist() == [1, 0]
    assert frozen.knn_probs(train, train.x, 1, 2).argmax(1).tolist() == [0, 1]


@pytest.mark.parametrize("protocol", [linear_probe, knn_protocol])
def test_a_frozen_protocol_chooses_on_val_never_on_test(protocol):
    class Cfg:
        seed, weight_decay, select = 0, 0.0, "balanced_acc"

    classes = ["a", "b", "c"]
    feats = features(0)
    probs, choice = protocol(Cfg, feats, classes)
    # Test labels turned around: the choice (and what is predicted) stays the same.
    shuffled = {**feats, "test": Features(feats["test"].x, feats["test"].y.flip(0), None)}
    probs_again, choice_again = protocol(Cfg, shuffled, classes)
    assert choice == choice_again and torch.equal(probs["test"], probs_again["test"])
    # Val labels turned around: the val values change, and so does what was chosen on them.
    flipped = {**feats, "val": Features(feats["val"].x, feats["val"].y.flip(0), None)}
    assert protocol(Cfg, flipped, classes)[1]["value"] != choice["value"]
    assert probs["val"].shape == (30, 3) and torch.allclose(probs["val"].sum(1),
                                                           torch.ones(30))


def test_protocol_flags_that_cannot_run_are_refused(covid, tmp_path, cli):
    base = ["compare", "--dataset", "covid19", "--data-root", covid, "--models", "M1", *FAST,
            "--out", tmp_path / "g"]
    code, _, err = cli(*base, "--protocols", "linear", "linear")
    assert code == 2 and "at most once" in err
    code, _, err = cli(*base, "--protocols", "linear", "--distill", "M1:M1")
    assert code == 2 and "add finetune to --protocols" in err
    with pytest.raises(SystemExit):  # argparse's own refusal of an unknown choice
        cli(*base, "--protocols", "probe")
    assert not (tmp_path / "g").exists()
