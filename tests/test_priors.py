"""The registry of foundation priors (issue 35, part 1): names, where each prior's weights come
from, strict loading of timm priors from a file or the Hugging Face cache, and one message for a
prior that cannot load here."""

from dataclasses import replace

import pytest
import safetensors.torch as st
import timm
import torch

from medssl.errors import MedsslError
from medssl.models.foundation import PRIORS, FoundationPrior, parse_prior
from medssl.models.foundation_load import PriorUnavailable, load_foundation

TINY = "vit_tiny_patch16_224"


@pytest.fixture
def no_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache: whatever this machine has cached plays no part."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def tiny_file(path, fmt="safetensors"):
    torch.manual_seed(0)
    model = timm.create_model(TINY, pretrained=False)  # with its classifier, as timm saves it
    if fmt == "safetensors":
        st.save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)
    return model.state_dict()


def test_prior_names_parse_and_bad_ones_are_refused():
    assert parse_prior("dinov2-vitb14").entry.source == "vit_base_patch14_dinov2.lvd142m"
    spec = parse_prior(f"timm:{TINY}=/w/x.safetensors")
    assert (spec.timm_model, str(spec.file), spec.label) == (TINY, "/w/x.safetensors", f"timm:{TINY}")
    for bad, said in (("dinov9", "Unknown prior 'dinov9'"), (f"timm:{TINY}=", "no file after")):
        with pytest.raises(MedsslError, match=said):
            parse_prior(bad)


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_a_timm_file_loads_strictly_at_the_runs_size_and_channels(tmp_path, fmt):
    state = tiny_file(tmp_path / f"w.{fmt}", fmt)
    model, record = load_foundation(parse_prior(f"timm:{TINY}={tmp_path}/w.{fmt}"), 1, 32)
    loaded = model.state_dict()
    # Every weight is the file's, but the position embeddings (resized from 14x14 to 2x2
    # patches) and the stem (summed over RGB for one channel); the classifier is left out.
    assert torch.equal(loaded["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])
    assert loaded["pos_embed"].shape == (1, 1 + 4, 192)
    assert torch.allclose(loaded["patch_embed.proj.weight"],
                          state["patch_embed.proj.weight"].sum(1, keepdim=True))
    assert "head.weight" not in loaded and record["weights"].endswith(f"w.{fmt}")


def test_a_weights_file_of_another_architecture_is_refused(tmp_path):
    torch.save(timm.create_model("resnet10t").state_dict(), tmp_path / "cnn.pt")
    with pytest.raises(MedsslError) as err:
        load_foundation(parse_prior(f"timm:{TINY}={tmp_path}/cnn.pt"), 3, 32)
    assert "does not fit this backbone" in str(err.value) and "missing key" in str(err.value)
    assert f"Fix: a weights file of timm:{TINY}" in str(err.value)


def test_a_prior_without_its_weights_is_unavailable_naming_where_and_its_license(no_hf_cache):
    with pytest.raises(PriorUnavailable) as err:
        load_foundation(parse_prior("dinov2-vitb14"), 3, 224)
    said = str(err.value)
    assert "timm/vit_base_patch14_dinov2.lvd142m are not in the Hugging Face cache" in said
    assert str(no_hf_cache) in said and "Apache-2.0" in said and "=PATH" in said


def test_a_gated_prior_without_its_file_says_where_to_get_it(no_hf_cache):
    with pytest.raises(PriorUnavailable) as err:
        load_foundation(parse_prior("retfound"), 3, 224)
    said = str(err.value)
    assert "huggingface.co/YukunZhou/RETFound_mae_natureCFP (gated" in said
    assert "CC BY-NC 4.0" in said and "retfound=PATH" in said


def test_a_prior_whose_library_is_not_installed_names_the_extra(monkeypatch):
    # No prior of today's registry needs a library beyond medssl's own; one that did (built
    # only by its library) names the package to install, and is skipped.
    entry = FoundationPrior("needs-lib", "A prior built by its own library", "somelib",
                            "org/model", "MIT", 224, (0.5,) * 3, (0.5,) * 3,
                            extra="somelib-pkg", module="medssl_no_such_module")
    monkeypatch.setitem(PRIORS, "needs-lib", entry)
    with pytest.raises(PriorUnavailable, match="pip install somelib-pkg"):
        load_foundation(parse_prior("needs-lib"), 3, 224)


def test_rad_dino_loads_from_its_dinov2_layout_checkpoint(no_hf_cache, monkeypatch):
    # Its network, smaller (a ViT-tiny for the ViT-B/14): the layout is what is tested.
    entry = replace(PRIORS["rad-dino"], arch=f"timm:{TINY}")
    monkeypatch.setitem(PRIORS, "rad-dino", entry)
    with pytest.raises(PriorUnavailable, match="hf download microsoft/rad-dino "
                                               "backbone_compatible.safetensors"):
        load_foundation(parse_prior("rad-dino"), 3, 32)
    torch.manual_seed(0)
    net = timm.create_model(TINY, num_classes=0, img_size=32).state_dict()
    # The original DINOv2 layout: timm's keys and the mask token DINOv2 trains with.
    st.save_file({**net, "mask_token": torch.zeros(1, net["cls_token"].shape[-1])},
                 str(fake_hf_file(no_hf_cache, entry.weights_repo, entry.weights_name)))
    model, record = load_foundation(parse_prior("rad-dino"), 3, 32)
    assert all(torch.equal(v, net[k]) for k, v in model.state_dict().items())
    assert record["normalize"]["mean"] == [0.5307] * 3


def test_timm_weights_in_the_hugging_face_cache_are_found_offline(no_hf_cache):
    # The cache's layout (huggingface_hub): refs/main names a snapshot holding the file.
    repo = timm.models.get_pretrained_cfg(TINY).hf_hub_id
    folder = no_hf_cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")
    (folder / "snapshots" / "abc123").mkdir(parents=True)
    tiny_file(folder / "snapshots" / "abc123" / "model.safetensors")
    model, record = load_foundation(parse_prior(f"timm:{TINY}"), 3, 32)
    assert record["weights"].endswith("abc123/model.safetensors")


def test_medssl_priors_lists_every_prior_with_its_license(cli):
    code, out, _ = cli("priors")
    assert code == 0
    for entry in PRIORS.values():
        assert entry.name in out and entry.license in out
    assert "timm:NAME=PATH" in out


def fake_hf_file(cache, repo: str, name: str):
    """A file in the Hugging Face cache's layout (huggingface_hub): refs/main names a snapshot."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")
    (folder / "snapshots" / "abc123").mkdir(parents=True)
    return folder / "snapshots" / "abc123" / name


def test_biomedclips_image_tower_loads_from_its_open_clip_checkpoint(no_hf_cache, monkeypatch):
    # Its network, smaller: the test's checkpoint is a ViT-tiny's, not a 350 MB ViT-B's.
    entry = replace(PRIORS["biomedclip"], arch=f"timm:{TINY}")
    monkeypatch.setitem(PRIORS, "biomedclip", entry)
    with pytest.raises(PriorUnavailable, match="hf download microsoft/BiomedCLIP"):
        load_foundation(parse_prior("biomedclip"), 3, 32)
    torch.manual_seed(0)
    tower = timm.create_model(TINY, num_classes=0, img_size=32).state_dict()
    # open_clip's checkpoint: the image tower under visual.trunk., the text tower beside it.
    checkpoint = {**{f"visual.trunk.{k}": v for k, v in tower.items()},
                  "text.transformer.weight": torch.zeros(4, 4), "logit_scale": torch.ones(())}
    torch.save(checkpoint, fake_hf_file(no_hf_cache, entry.weights_repo, entry.weights_name))
    model, record = load_foundation(parse_prior("biomedclip"), 3, 32)
    assert all(torch.equal(v, tower[k]) for k, v in model.state_dict().items())
    assert record["normalize"]["mean"][0] == pytest.approx(0.4815, abs=1e-4)  # CLIP's


def test_torchxrayvisions_resnet_loads_from_its_folder_grey_or_rgb(tmp_path, monkeypatch):
    import torchvision

    entry = replace(PRIORS["xrv-resnet50"], arch="resnet18", weights_dir=str(tmp_path / "xrv"))
    monkeypatch.setitem(PRIORS, "xrv-resnet50", entry)
    with pytest.raises(PriorUnavailable, match="wget https://github.com/mlmed/torchxrayvision"):
        load_foundation(parse_prior("xrv-resnet50"), 1, 64)
    # Its state_dict: torchvision's ResNet with a one-channel stem and 18 pathologies.
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=18)
    net.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    (tmp_path / "xrv").mkdir()
    torch.save(net.state_dict(), tmp_path / "xrv" / entry.weights_url.rsplit("/", 1)[-1])
    grey, _ = load_foundation(parse_prior("xrv-resnet50"), 1, 64)
    assert torch.equal(grey.conv1.weight, net.conv1.weight)
    rgb, record = load_foundation(parse_prior("xrv-resnet50"), 3, 64)
    assert torch.allclose(rgb.conv1.weight.sum(1, keepdim=True), net.conv1.weight)
    # A grey picture gives the same features through either stem.
    x = torch.rand(2, 1, 64, 64)
    assert torch.allclose(grey.eval()(x), rgb.eval()(x.repeat(1, 3, 1, 1)), atol=1e-5)
    assert record["normalize"]["std"] == [1 / 2048]  # its pixels to [-1024, 1024]


def test_retfounds_mae_checkpoint_loads_without_its_decoder(tmp_path, monkeypatch):
    # RETFound's weights are an MAE's: the encoder's keys under "model", with the decoder's and
    # the mask token beside them (a ViT-tiny stands in for the ViT-L).
    entry = replace(PRIORS["retfound"], arch=f"timm:{TINY}")
    monkeypatch.setitem(PRIORS, "retfound", entry)
    torch.manual_seed(0)
    net = timm.create_model(TINY, num_classes=0, img_size=32).state_dict()
    mae = {"model": {**net, "mask_token": torch.zeros(1, 1, 192),
                     "decoder_embed.weight": torch.zeros(4, 192),
                     "decoder_blocks.0.norm1.weight": torch.ones(4)}}
    torch.save(mae, tmp_path / "RETFound_cfp_weights.pth")
    model, record = load_foundation(parse_prior(f"retfound={tmp_path / 'RETFound_cfp_weights.pth'}"),
                                    3, 32)
    assert all(torch.equal(v, net[k]) for k, v in model.state_dict().items())
    assert record["license"].startswith("CC BY-NC")
