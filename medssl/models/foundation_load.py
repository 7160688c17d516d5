"""A foundation prior's backbone with its weights, loaded strictly, or PriorUnavailable saying
what is missing, where to put it and the prior's license.

Every prior medssl builds (timm's, `timm:NAME`, `timm:NAME=PATH`, BiomedCLIP's image tower,
TorchXRayVision's ResNet-50): its network is built without weights (models.backbones), and the
weights are read here from the file given or where the prior's library keeps them (the Hugging
Face cache, torchxrayvision's folder; never the network), cut to the network's keys of a larger
checkpoint, put through the model's own timm checkpoint filter (which resizes a ViT's position
embeddings to the run's image size and converts other layouts), the stem adapted to the run's
channels (timm's `adapt_input_conv`), the classifier dropped, and loaded with every key exact.
(timm's own `pretrained=True` path only warns about keys that do not fit, and may go to the
network: it is not used.)
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from torch import nn

from medssl.errors import MedsslError
from medssl.models.backbones import empty_backbone, load_strict
from medssl.models.checkpoints import read_state_dict
from medssl.models.foundation import (PriorSpec, hf_cache, parse_prior, prior_input_size,
                                     prior_stats)

log = logging.getLogger("medssl")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class PriorUnavailable(MedsslError):
    """A prior whose weights or library are not on this machine: `compare` skips its rows."""


def _license(spec: PriorSpec) -> str:
    return f" Its license: {spec.entry.license}." if spec.entry else ""


def _hf_file(spec: PriorSpec, repo: str, names: tuple[str, ...], how: str) -> Path:
    """A file of a Hugging Face repository from the offline cache; PriorUnavailable saying how to
    fetch it (`how`: the command) and carry it here otherwise."""
    from huggingface_hub import try_to_load_from_cache  # lazy: only where a prior is asked for

    for name in names:
        found = try_to_load_from_cache(repo, name, cache_dir=hf_cache())  # read at call time
        if isinstance(found, str):
            return Path(found)
    gated = spec.entry is not None and spec.entry.gated
    raise PriorUnavailable(
        f"Prior {spec.label}: the weights of the Hugging Face repository {repo} are not in the "
        f"Hugging Face cache ({hf_cache()}) and this machine does not download them. Fix: on a "
        f"machine with internet run {how}"
        f"{' (gated: log in with `hf auth login` and accept the license first)' if gated else ''}, "
        f"then copy its cache folder models--{repo.replace('/', '--')} into {hf_cache()} here "
        f"(or set HF_HOME), or pass --priors {spec.label}=PATH.{_license(spec)}")


def weights_file(spec: PriorSpec) -> Path:
    """The file to load: the one given, else where the prior's library keeps it (the Hugging
    Face cache; torchxrayvision's folder); PriorUnavailable otherwise."""
    entry = spec.entry
    if spec.file is not None:
        if not spec.file.is_file():
            raise PriorUnavailable(f"Prior {spec.text}: {spec.file} does not exist. Fix: the path "
                                   f"of a safetensors or state_dict file of {spec.arch}."
                                   f"{_license(spec)}")
        return spec.file
    if entry and entry.weights_dir:  # a file its library downloads into a folder of its own
        path = Path(entry.weights_dir).expanduser() / entry.weights_url.rsplit("/", 1)[-1]
        if path.is_file():
            return path
        raise PriorUnavailable(
            f"Prior {entry.name} ({entry.title}): {path} does not exist and this machine does "
            f"not download it. Fix: on a machine with internet run `wget {entry.weights_url}` "
            f"(or let {entry.library} fetch it), then copy the file to {path} here, or pass "
            f"--priors {entry.name}=PATH.{_license(spec)}")
    if entry and entry.weights_repo and entry.weights_name:  # a file of a repository
        return _hf_file(spec, entry.weights_repo, (entry.weights_name,),
                        f"`hf download {entry.weights_repo} {entry.weights_name}`")
    if entry and entry.weights_repo:  # weights that are not timm's: a file is the only way
        raise PriorUnavailable(
            f"Prior {entry.name} ({entry.title}) needs its weights as a file: they are at "
            f"huggingface.co/{entry.weights_repo}{' (gated: log in and accept its license)' if entry.gated else ''}. "
            f"Fix: download them on a machine with internet and pass --priors "
            f"{entry.name}=PATH.{_license(spec)}")
    tag = entry.timm_tag if entry else spec.timm_model
    repo = timm_repo(tag)
    if not repo:
        raise PriorUnavailable(f"Prior {spec.label}: timm names no pretrained weights for {tag}. "
                               f"Fix: pass --priors {spec.label}=PATH with a weights file."
                               f"{_license(spec)}")
    return _hf_file(spec, repo, WEIGHT_FILES, f"`python -c \"import timm; timm.create_model("
                                               f"'{tag}', pretrained=True)\"`")


def timm_repo(tag: str) -> str | None:
    """The Hugging Face repository timm fetches this model's weights from."""
    import timm

    cfg = timm.models.get_pretrained_cfg(tag)
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def availability(entry) -> str:
    """Whether a registry prior can load here, in words (`medssl priors`)."""
    try:
        return f"weights found: {check_loadable(parse_prior(entry.name))}"
    except PriorUnavailable as exc:
        if entry.arch is None:
            return (f"not loadable: pip install {entry.extra}" if "not installed" in str(exc)
                    else f"{entry.library} installed; loading through it is not built yet")
        return ("weights not here (gated: a file from " + entry.weights_repo + ")"
                if entry.weights_repo and not entry.weights_name else
                f"weights not here ({entry.weights_dir})" if entry.weights_dir else
                f"weights not in the Hugging Face cache ({hf_cache()})")


def _filtered(model: nn.Module, state: dict, in_channels: int, prefix: str = "",
              drop: tuple[str, ...] = ()) -> dict:
    """The checkpoint in the model's own layout: the network's keys of a larger checkpoint
    (`prefix`), its timm filter (position embeddings resized, other layouts converted), the stem
    adapted to `in_channels` (timm's adapt_input_conv), the classifier dropped."""
    from timm.models import adapt_input_conv

    state = state.get("model", state) if isinstance(state.get("model"), dict) else state
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    state = {k: v for k, v in state.items() if not k.startswith(drop)} if drop else state
    module = sys.modules.get(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is not None and hasattr(model, "pretrained_cfg"):  # a timm model
        state = filter_fn(state, model)
    cfg = getattr(model, "pretrained_cfg", None) or {"first_conv": "conv1", "classifier": "fc"}
    first = cfg.get("first_conv")
    for conv in ([first] if isinstance(first, str) else first or []):
        key = f"{conv}.weight"
        if key in state and state[key].shape[1] == 1 and in_channels == 3:
            # A grey stem on RGB inputs: timm's adapt_input_conv converts from RGB only. Each
            # colour gets a third of the grey weights, so a grey picture gives what it gave.
            state[key] = state[key].repeat(1, 3, 1, 1) / 3
        elif key in state and state[key].shape[1] != in_channels:
            state[key] = adapt_input_conv(in_channels, state[key])
    classifier = cfg.get("classifier")
    for head in ([classifier] if isinstance(classifier, str) else classifier or []):
        state = {k: v for k, v in state.items()
                 if not (k.startswith(head + ".") and k not in model.state_dict())}
    return state


def check_loadable(spec: PriorSpec) -> Path:
    """The weights file of a prior medssl builds; PriorUnavailable where they, or the library a
    prior needs, are not on this machine (nothing is built: `compare` asks this of every prior
    first)."""
    entry = spec.entry
    if spec.arch is not None:
        return weights_file(spec)
    try:
        __import__(entry.module)
    except ImportError:
        raise PriorUnavailable(f"Prior {entry.name} ({entry.title}) is loaded through "
                               f"{entry.library}, which is not installed. Fix: pip install "
                               f"{entry.extra}.{_license(spec)}") from None
    raise PriorUnavailable(f"Prior {entry.name}: loading through {entry.library} is not built "
                           "yet. Fix: a prior medssl builds (`medssl priors`), or timm:NAME=PATH "
                           f"with weights converted to timm's layout.{_license(spec)}")


def load_foundation(spec: PriorSpec, in_channels: int, image_size: int) -> tuple[nn.Module, dict]:
    """A prior's network at the run's size and channels with its weights, strictly; and what to
    record of it (the file, the network, the license, its input size and normalisation)."""
    path = check_loadable(spec)
    model = empty_backbone(spec.arch, in_channels, image_size)
    prefix, drop = (spec.entry.key_prefix, spec.entry.drop_keys) if spec.entry else ("", ())
    state = _filtered(model, read_state_dict(path, f"--priors {spec.text}"), in_channels, prefix,
                      drop)
    load_strict(model, state, f"Prior {spec.text} ({path})",
                fix=f"Fix: a weights file of {spec.arch} (its state_dict or safetensors), or "
                "the prior it was saved from.")
    if spec.entry is not None and spec.entry.gated:  # said each time it is used
        log.warning("Prior %s: license %s", spec.label, spec.entry.license)
    mean, std = prior_stats(spec)
    return model, {"prior": spec.label, "arch": spec.arch, "weights": str(path),
                   "license": spec.entry.license if spec.entry else None,
                   "prior_input_size": prior_input_size(spec),
                   "normalize": {"mean": list(mean), "std": list(std)}}
