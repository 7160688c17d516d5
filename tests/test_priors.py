"""The registry of foundation priors (issue 35, part 1): names, where each prior's weights come
from, strict loading of timm priors from a file or the Hugging Face cache, and one message for a
prior that cannot load here."""

import pytest
import safetensors.torch as st
import timm
import torch

from medssl.errors import MedsslError
from medssl.models.foundation import PRIORS, parse_prior
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
    assert f"Fix: a weights file of timm's {TINY}" in str(err.value)


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
    import builtins

    real = builtins.__import__

    def without_transformers(name, *args, **kwargs):  # as on a machine without the extra
        if name == "transformers":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_transformers)
    with pytest.raises(PriorUnavailable, match="pip install transformers"):
        load_foundation(parse_prior("rad-dino"), 3, 224)


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
