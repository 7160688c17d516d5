"""A foundation prior's backbone with its weights, loaded strictly, or PriorUnavailable saying
what is missing, where to put it and the prior's license.

timm priors (registry entries built by timm, `timm:NAME`, `timm:NAME=PATH`): the model is built
by timm without weights, and the weights are read here from the file given or from the Hugging
Face cache (never the network), put through the model's own timm checkpoint filter (which
resizes a ViT's position embeddings to the run's image size and converts other layouts), the
stem adapted to the run's channels (timm's `adapt_input_conv`), the classifier dropped, and
loaded with every key exact. (timm's own `pretrained=True` path only warns about keys that do not
fit, and may go to the network: it is not used.)
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from torch import nn

from medssl.errors import MedsslError
from medssl.models.backbones import load_strict
from medssl.models.checkpoints import read_state_dict
from medssl.models.foundation import (PriorSpec, hf_cache, parse_prior, prior_input_size,
                                     prior_stats)
from medssl.models.timm_backbones import PREFIX, create_timm

log = logging.getLogger("medssl")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class PriorUnavailable(MedsslError):
    """A prior whose weights or library are not on this machine: `compare` skips its rows."""


def _license(spec: PriorSpec) -> str:
    return f" Its license: {spec.entry.license}." if spec.entry else ""


def cached_weights(timm_model_tag: str) -> tuple[str, Path | None]:
    """(the Hugging Face repository timm fetches this model's weights from, the cached file or
    None)."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(timm_model_tag)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return "", None
    for name in WEIGHT_FILES:
        found = try_to_load_from_cache(repo, name, cache_dir=hf_cache())  # read at call time
        if isinstance(found, str):
            return repo, Path(found)
    return repo, None


def weights_file(spec: PriorSpec) -> Path:
    """The file to load: the one given, else the cached one; PriorUnavailable otherwise."""
    if spec.file is not None:
        if not spec.file.is_file():
            raise PriorUnavailable(f"Prior {spec.text}: {spec.file} does not exist. Fix: the path "
                                   "of a safetensors or state_dict file of timm's "
                                   f"{spec.timm_model}.{_license(spec)}")
        return spec.file
    entry = spec.entry
    if entry and entry.weights_repo:  # weights that are not timm's: a file is the only way
        raise PriorUnavailable(
            f"Prior {entry.name} ({entry.title}) needs its weights as a file: they are at "
            f"huggingface.co/{entry.weights_repo}{' (gated: log in and accept its license)' if entry.gated else ''}. "
            f"Fix: download them on a machine with internet and pass --priors "
            f"{entry.name}=PATH.{_license(spec)}")
    tag = entry.source if entry else spec.timm_model
    repo, found = cached_weights(tag)
    if found is None:
        where = f"the Hugging Face repository {repo}" if repo else f"timm's {tag}"
        raise PriorUnavailable(
            f"Prior {spec.label}: the weights of {where} are not in the Hugging Face cache "
            f"({hf_cache()}) and this machine does not download them. Fix: on a machine with "
            f"internet run `python -c \"import timm; timm.create_model('{tag}', "
            f"pretrained=True)\"`{' (gated: log in with `hf auth login` and accept the license first)' if entry and entry.gated else ''}, "
            f"then copy its cache folder models--{repo.replace('/', '--')} into {hf_cache()} "
            f"here (or set HF_HOME), or pass --priors {PREFIX}{spec.timm_model}=PATH."
            f"{_license(spec)}")
    return found


def availability(entry) -> str:
    """Whether a registry prior can load here, in words (`medssl priors`)."""
    if entry.library != "timm":
        try:
            __import__(entry.module)
        except ImportError:
            return f"not loadable: pip install {entry.extra} (loading through {entry.library} " \
                   "comes with the foundation-priors rows)"
        return f"{entry.library} installed; loading through it comes with the rows"
    try:
        return f"weights found: {weights_file(parse_prior(entry.name))}"
    except PriorUnavailable:
        return ("weights not here (gated: a file from " + entry.weights_repo + ")"
                if entry.weights_repo else f"weights not in the Hugging Face cache ({hf_cache()})")


def _filtered(model: nn.Module, state: dict, in_channels: int) -> dict:
    """The checkpoint in the model's own layout: its timm filter (position embeddings resized,
    other layouts converted), the stem adapted to `in_channels`, the classifier dropped."""
    from timm.models import adapt_input_conv

    state = state.get("model", state) if isinstance(state.get("model"), dict) else state
    module = sys.modules.get(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    first = cfg.get("first_conv")
    for conv in ([first] if isinstance(first, str) else first or []):
        key = f"{conv}.weight"
        if key in state and state[key].shape[1] != in_channels:
            state[key] = adapt_input_conv(in_channels, state[key])
    classifier = cfg.get("classifier")
    for head in ([classifier] if isinstance(classifier, str) else classifier or []):
        state = {k: v for k, v in state.items()
                 if not (k.startswith(head + ".") and k not in model.state_dict())}
    return state


def check_loadable(spec: PriorSpec) -> Path | None:
    """The weights file of a timm prior; PriorUnavailable where they, or the library a prior
    needs, are not on this machine (nothing is built: `compare` asks this of every prior first)."""
    entry = spec.entry
    if entry is None or entry.library == "timm":
        return weights_file(spec)
    try:
        __import__(entry.module)
    except ImportError:
        raise PriorUnavailable(f"Prior {entry.name} ({entry.title}) is loaded through "
                               f"{entry.library}, which is not installed. Fix: pip install "
                               f"{entry.extra} (or medssl[foundation]).{_license(spec)}") from None
    raise PriorUnavailable(f"Prior {entry.name}: loading through {entry.library} is not built "
                           "yet (timm priors are). Fix: a timm prior, or timm:NAME=PATH with "
                           f"weights converted to timm's layout.{_license(spec)}")


def load_foundation(spec: PriorSpec, in_channels: int, image_size: int) -> tuple[nn.Module, dict]:
    """Any `--priors` value's backbone with its weights (PriorUnavailable where they, or the
    library they need, are not on this machine)."""
    check_loadable(spec)
    return load_timm_prior(spec, in_channels, image_size)


def load_timm_prior(spec: PriorSpec, in_channels: int, image_size: int) -> tuple[nn.Module, dict]:
    """The prior's backbone at the run's size and channels with its weights, strictly; and what
    to record of it (the file, the timm model, the license)."""
    path = weights_file(spec)
    model = create_timm(PREFIX + spec.timm_model, in_channels, image_size)
    state = _filtered(model, read_state_dict(path, f"--priors {spec.text}"), in_channels)
    load_strict(model, state, f"Prior {spec.text} ({path})",
                fix=f"Fix: a weights file of timm's {spec.timm_model} (its state_dict or "
                "safetensors), or the timm:MODEL_NAME it was saved from.")
    if spec.entry is not None and spec.entry.gated:  # said each time it is used
        log.warning("Prior %s: license %s", spec.label, spec.entry.license)
    mean, std = prior_stats(spec)
    return model, {"prior": spec.label, "timm_model": spec.timm_model, "weights": str(path),
                   "license": spec.entry.license if spec.entry else None,
                   "prior_input_size": prior_input_size(spec),
                   "normalize": {"mean": list(mean), "std": list(std)}}
