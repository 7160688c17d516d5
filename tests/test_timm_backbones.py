"""Backbones beyond torchvision's ResNets, through timm (issue 35, part 2): `--arch timm:NAME`.
Every SSL method pretrains a ViT and exports timm's own state_dict, which timm loads strictly;
finetuning takes the feature size from the backbone."""

import json

import pytest
import timm
import torch

from medssl.data import fixtures as fx
from medssl.names import method_names

VIT = "timm:vit_tiny_patch16_224"
FAST = ["--image-size", "32", "--num-workers", "0", "--batch-size", "8"]


@pytest.fixture(scope="module")
def covid(tmp_path_factory):
    return fx.make_covid19(tmp_path_factory.mktemp("data"), per_class=6)


@pytest.mark.parametrize("name", method_names())
def test_every_method_pretrains_a_vit_and_exports_it_strictly(name, covid, tmp_path, cli):
    code, _, err = cli("pretrain", "--dataset", "covid19", "--data-root", covid, "--arch", VIT,
                       "--method", name, "--epochs", "1", *FAST, "--out", tmp_path / "run")
    assert code == 0, err
    meta = json.loads((tmp_path / "run" / "backbone.json").read_text())
    assert meta["arch"] == VIT and meta["image_size"] == 32
    # timm's own model, made as medssl makes it, takes the weights with every key exact.
    model = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32)
    state = torch.load(tmp_path / "run" / "backbone.pt", weights_only=True)
    model.load_state_dict(state, strict=True)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, model.num_features)


def test_finetuning_takes_the_feature_size_from_a_timm_backbone(covid, tmp_path, cli):
    code, _, err = cli("pretrain", "--dataset", "covid19", "--data-root", covid, "--arch", VIT,
                       "--epochs", "1", *FAST, "--out", tmp_path / "ssl")
    assert code == 0, err
    for model, extra in (("M1", []), ("M2", ["--ssl-checkpoint", tmp_path / "ssl" /
                                             "backbone.pt"])):
        code, _, err = cli("finetune", "--dataset", "covid19", "--data-root", covid, "--arch",
                           VIT, "--model", model, "--epochs", "1", "--lr", "1e-3", *FAST,
                           *extra, "--out", tmp_path / model)
        assert code == 0, err
        metrics = json.loads((tmp_path / model / "metrics.json").read_text())
        assert metrics["prior"]["arch"] == VIT
    # A timm CNN (no image size of its own) works the same way.
    code, _, err = cli("finetune", "--dataset", "covid19", "--data-root", covid, "--arch",
                       "timm:resnet10t", "--model", "M1", "--epochs", "1", "--lr", "1e-3", *FAST,
                       "--out", tmp_path / "cnn")
    assert code == 0, err


def test_an_unknown_timm_model_is_named_with_the_closest_names(covid, tmp_path, cli):
    code, _, err = cli("pretrain", "--dataset", "covid19", "--data-root", covid, "--arch",
                       "timm:vit_tiny_patch16_22", "--epochs", "1", *FAST, "--out", tmp_path / "r")
    assert code == 2 and "timm has no model 'vit_tiny_patch16_22'" in err
    assert "Did you mean timm:vit_tiny_patch16_224" in err and not (tmp_path / "r").exists()
    with pytest.raises(SystemExit):
        cli("pretrain", "--dataset", "covid19", "--arch", "vgg16")


def test_imagenet_models_with_a_timm_arch_are_refused_with_the_fix(covid, tmp_path, cli):
    code, _, err = cli("finetune", "--dataset", "covid19", "--data-root", covid, "--arch", VIT,
                       "--model", "M3", "--epochs", "1", "--lr", "1e-3", *FAST,
                       "--out", tmp_path / "m3")
    assert code == 2 and "with --arch timm:vit_tiny_patch16_224" in err and "Fix" in err
