"""Foundation priors as rows of the comparison (issue 35, part 3): `compare --priors` adds
F-<prior>, `--continue-ssl METHOD` adds F-<prior>+<method> (SSL on the target data from the
prior, then finetuning); a prior whose weights are not here is skipped with where to get them,
and the rest of the grid runs."""

import json

import pandas as pd
import pytest
import safetensors.torch as st
import timm
import torch

from medssl.data import fixtures as fx
from medssl.errors import MedsslError
from medssl.experiments.grid import Cell
from medssl.names import parse_distill, prior_of, split_models

TINY = "vit_tiny_patch16_224"
PRIOR = f"F-timm:{TINY}"
FAST = ["--image-size", "32", "--num-workers", "0", "--batch-size", "8", "--epochs", "1",
        "--lr", "1e-3"]


@pytest.fixture(scope="module")
def covid(tmp_path_factory):
    return fx.make_covid19(tmp_path_factory.mktemp("data"), per_class=6)


@pytest.fixture
def prior_file(tmp_path, monkeypatch):
    """A ViT-tiny made by timm without pretrained weights, saved as safetensors; and an empty
    Hugging Face cache, so that no weights cached on this machine play a part."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    torch.manual_seed(0)
    model = timm.create_model(TINY, pretrained=False)
    path = tmp_path / "vit_tiny.safetensors"
    st.save_file(model.state_dict(), str(path))
    return path


def test_row_names_mean_their_prior_and_survive_cells_and_cohorts():
    assert prior_of(PRIOR).init == f"timm:{TINY}" and not prior_of(PRIOR).ssl
    assert prior_of(PRIOR + "+byol").method == "byol" and prior_of(PRIOR + "+byol").foundation
    with pytest.raises(MedsslError, match="Unknown method 'nope'"):
        prior_of("F-dinov2-vitb14+nope")
    # A cell's name splits at ':' and a timm prior's name holds one.
    for name in (f"finetune:{PRIOR}:0.1", f"pretrain:{PRIOR}+simclr:1:2"):
        assert Cell.parse(name).name == name
    assert split_models(f"{PRIOR}+simclr+M1") == [f"{PRIOR}+simclr", "M1"]
    # A distillation may name them on either side of its colon.
    assert parse_distill(f"{PRIOR}:M1") == ([PRIOR], "M1")
    assert parse_distill(f"M3+{PRIOR}+simclr:{PRIOR}") == (["M3", f"{PRIOR}+simclr"], PRIOR)


def test_compare_adds_a_timm_prior_from_a_file_and_skips_an_absent_one(covid, prior_file,
                                                                       tmp_path, cli):
    code, out, err = cli("compare", "--dataset", "covid19", "--data-root", covid, "--models",
                         "M1", "F-dinov3-vitb16", "--priors", f"timm:{TINY}={prior_file}",
                         "dinov2-vitb14",
                         "--seeds", "0", "1", *FAST, "--out", tmp_path / "grid")
    assert code == 0, err
    table = pd.read_csv(tmp_path / "grid" / "results.csv")
    assert set(table["model"]) == {"M1", PRIOR}
    row = table[table["model"] == PRIOR].iloc[0]
    # Paired against M1 over both seeds, like any row.
    assert row["vs_M1_seeds"] == 2 and not pd.isna(row["test_balanced_acc_vs_M1_diff"])
    record = json.loads((tmp_path / "grid" / "F-timm-vit_tiny_patch16_224" / "seed0" /
                         "metrics.json").read_text())
    assert record["prior"]["arch"] == f"timm:{TINY}"
    assert record["prior"]["foundation"]["weights"] == str(prior_file)
    # The prior's own normalisation (timm's for this model), recorded with its input size.
    assert record["prior"]["foundation"]["normalize"]["mean"] == [0.5, 0.5, 0.5]
    assert record["prior"]["foundation"]["prior_input_size"] == 224
    # DINOv2's weights are not in the (empty) cache: skipped, naming where to get them.
    said = (tmp_path / "grid" / "results.md").read_text()
    assert "F-dinov2-vitb14 skipped" in said and "timm/vit_base_patch14_dinov2.lvd142m" in said
    assert "Apache-2.0" in said and not (tmp_path / "grid" / "F-dinov2-vitb14").exists()
    assert "F-dinov3-vitb16 skipped" in said  # named in --models, its weights not here either
    # compare's Grad-CAM draws the ViT row too, at its last block through the library's reshape
    # transform, beside M1's ResNet map, on the same test images.
    cams = pd.read_csv(tmp_path / "grid" / "gradcam.csv")
    vit, m1 = cams[cams["model"] == PRIOR], cams[cams["model"] == "M1"]
    assert set(vit["layer"]) == {"blocks.11.norm1"}
    assert set(m1["layer"]) == {"layer2.3"}  # ResNet-50 at 32 px: its deepest 4x4 stage
    assert list(vit["path"].unique()) == list(m1["path"].unique())
    assert vit["value"].between(0, 1).all()


def test_continue_ssl_pretrains_from_the_priors_weights(covid, prior_file, tmp_path, cli,
                                                        monkeypatch):
    from medssl.training import pretrain

    started = []
    original = pretrain.start_backbone

    def recorded(*args, **kwargs):  # the weights the pretraining's first step starts from
        backbone, found = original(*args, **kwargs)
        started.append({k: v.clone() for k, v in backbone.state_dict().items()})
        return backbone, found

    monkeypatch.setattr(pretrain, "start_backbone", recorded)
    code, _, err = cli("compare", "--dataset", "covid19", "--data-root", covid, "--models",
                       "M1", "--priors", f"timm:{TINY}={prior_file}", "--continue-ssl",
                       "simclr", "--seeds", "0", "--ssl-epochs", "1", *FAST,
                       "--out", tmp_path / "grid")
    assert code == 0, err
    assert len(started) == 1
    saved = {k: v for k, v in st.load_file(str(prior_file)).items() if not k.startswith("head.")}
    # timm's filter resized the position embeddings to 32 px: those differ by design.
    same = [k for k in saved if k != "pos_embed" and torch.equal(saved[k], started[0][k])]
    assert len(same) == len(saved) - 1
    backbone = json.loads((tmp_path / "grid" / "ssl-timm-vit_tiny_patch16_224" / "seed0" /
                           "backbone.json").read_text())
    assert backbone["init"] == f"timm:{TINY}" and backbone["arch"] == f"timm:{TINY}"
    assert backbone["foundation"]["weights"] == str(prior_file)
    table = pd.read_csv(tmp_path / "grid" / "results.csv")
    row = table[table["model"] == PRIOR + "+simclr"].iloc[0]
    assert row["base"] == PRIOR  # compared with the prior finetuned alone, too


def test_foundation_flags_that_do_not_apply_are_refused(covid, prior_file, tmp_path, cli,
                                                        capsys):
    base = ["finetune", "--dataset", "covid19", "--data-root", covid, *FAST]
    code, _, err = cli(*base, "--model", "M1", "--prior-weights", prior_file)
    assert code == 2 and "--prior-weights" in err and "no foundation prior" in err
    code, _, err = cli(*base, "--model", PRIOR, "--prior-weights", prior_file,
                       "--arch", "resnet18")
    assert code == 2 and "on its own network" in err
    code, _, err = cli("compare", "--dataset", "covid19", "--data-root", covid, "--models", "M1",
                       "--continue-ssl", "simclr", *FAST, "--out", tmp_path / "g")
    assert code == 2 and "--continue-ssl" in err and "--priors" in err
    code, _, err = cli(*base, "--model", PRIOR + "+simclr", "--prior-weights", prior_file)
    assert code == 2 and "starts from its simclr backbone" in err
    with pytest.raises(SystemExit):  # a misspelt timm name, refused by the flag itself
        cli("compare", "--dataset", "covid19", "--data-root", covid, "--priors",
            "timm:vit_tiny_patch16_22")
    assert "Did you mean timm:vit_tiny_patch16_224" in capsys.readouterr().err


def test_a_prior_from_the_cache_is_part_of_the_runs_identity_by_content(tmp_path, monkeypatch):
    from medssl.training.finetune import FinetuneConfig, identity_of, resolve

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    repo = timm.models.get_pretrained_cfg(TINY).hf_hub_id
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc")
    (folder / "snapshots" / "abc").mkdir(parents=True)
    weights = folder / "snapshots" / "abc" / "model.safetensors"
    st.save_file(timm.create_model(TINY, pretrained=False).state_dict(), str(weights))

    def identity():
        cfg = resolve(FinetuneConfig(dataset="covid19", model=PRIOR, image_size=32,
                                     out=str(tmp_path / "run")))
        return identity_of(cfg)["files"]["prior_weights"]

    before = identity()
    assert before is not None  # the cached file, by its digest
    st.save_file({k: v + 1 for k, v in st.load_file(str(weights)).items()}, str(weights))
    assert identity() != before  # other weights in the cache: another run
