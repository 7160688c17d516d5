"""The four priors of the study, as backbones: M1 random, M2 SSL from random, M3 ImageNet,
M4 SSL from ImageNet; and a foundation prior's rows, F-<prior> and F-<prior>+<method> (SSL
from it).

An SSL prior is a `backbone.pt` written by `medssl pretrain`; its JSON must say it was made for
the same arch, from the right init and on the same dataset. Anything else is an error naming the
file and the mismatch (`allow_other_dataset` permits a backbone from another dataset on purpose).
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from medssl.errors import MedsslError
from medssl.names import INITS, prior_of
from medssl.options import ModelOptions
from medssl.models.backbones import (DEFAULT_IMAGENET, build_backbone, empty_backbone, load_strict,
                                     stem_note)
from medssl.models.checkpoints import read_meta, read_state_dict
from medssl.models.foundation import prior_spec
from medssl.models.foundation_load import load_foundation
from medssl.runs import BACKBONE, SPLIT, dataset_dir, ssl_dir


def ssl_backbone_path(model: str, dataset: str, ssl_checkpoint: str | os.PathLike | None,
                      base: Path | None = None) -> Path:
    """`--ssl-checkpoint` (a file, or a pretraining folder), else the dataset's default folder."""
    if ssl_checkpoint:
        path = Path(ssl_checkpoint)
        return path / BACKBONE if path.is_dir() else path
    prior = prior_of(model)
    return ssl_dir(base or dataset_dir(dataset), prior.init, prior.method) / BACKBONE


def start_backbone(arch: str, init: str, imagenet_weights, in_channels: int, image_size: int,
                   prior_weights=None) -> tuple[nn.Module, dict | None]:
    """The backbone a run starts from before any SSL: random, ImageNet, or a foundation prior
    (`init` its label; `prior_weights` its file), and what to record of a foundation prior."""
    if init in INITS:
        return build_backbone(arch, init, imagenet_weights, in_channels, image_size), None
    return load_foundation(prior_spec(init, prior_weights), in_channels, image_size)


def load_prior(model: str, options: ModelOptions, dataset: str, ssl_checkpoint=None, *,
               allow_other_dataset: bool = False, base: Path | None = None,
               prior_weights=None) -> tuple[nn.Module, dict]:
    """The backbone of `model` with its prior loaded, and a record of where the prior came from.
    `options` (the arch, its ImageNet weights) is the run's model part, resolved;
    `prior_weights` a foundation prior's file (F-<prior> rows)."""
    prior = prior_of(model)
    arch, imagenet_weights = options.arch, options.imagenet_weights
    channels = options.in_channels
    if prior.foundation and not prior.ssl:
        backbone, found = start_backbone(arch, prior.init, None, channels, options.image_size,
                                         prior_weights)
        return backbone, {"model": model, "init": prior.init, "arch": arch,
                          "in_channels": channels, "foundation": found}
    if not prior.ssl:
        source = {"model": model, "init": prior.init, "arch": arch, "in_channels": channels,
                  "stem_adapted": stem_note(prior.init, channels)}
        if prior.init == "imagenet":
            source["imagenet_weights"] = str(imagenet_weights or DEFAULT_IMAGENET)
        return build_backbone(arch, prior.init, imagenet_weights, channels,
                              options.image_size), source

    path = ssl_backbone_path(model, dataset, ssl_checkpoint, base)
    if not path.is_file():
        raise MedsslError(
            f"{model} ({prior.title}) needs a {prior.method} backbone pretrained on {dataset} from "
            f"{prior.init} init, and there is none at {path}.\nFix: run `medssl pretrain --dataset "
            f"{dataset} --method {prior.method} --init {prior.init} --arch {arch}` first, or pass "
            "--ssl-checkpoint PATH.")
    # The weights first: a text file or an empty one is that, whatever JSON lies beside it.
    state = read_state_dict(path, "--ssl-checkpoint")
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        raise MedsslError(f"{meta_path} is missing: without it nobody can tell how {path} was made. "
                          "Fix: use a backbone.pt written by `medssl pretrain`, with its JSON.")
    meta = read_meta(meta_path)
    mismatches = []
    if meta.get("arch") != arch:
        mismatches.append(f"it is a {meta.get('arch')}, this run uses --arch {arch}")
    made_by = meta.get("method", "simclr")  # backbones from before the methods were SimCLR's
    if made_by != prior.method:
        mismatches.append(f"it was pretrained with {made_by}, {model} needs {prior.method}")
    if meta.get("in_channels", 3) != channels:
        mismatches.append(f"it takes {meta.get('in_channels', 3)} input channel(s), this run "
                          f"--in-channels {channels}")
    if meta.get("init") != prior.init:
        mismatches.append(f"it was pretrained from {meta.get('init')} init, {model} needs {prior.init}")
    if meta.get("dataset") != dataset and not allow_other_dataset:
        mismatches.append(f"it was pretrained on {meta.get('dataset')}, this run finetunes on "
                          f"{dataset} (pass --allow-other-dataset if that is intended)")
    if mismatches:
        raise MedsslError(f"{path} does not fit {model}: " + "; ".join(mismatches) + ".")
    backbone = empty_backbone(arch, channels, options.image_size)
    load_strict(backbone, state, str(path))
    return backbone, {"model": model, "init": prior.init, "arch": arch, "method": prior.method,
                      "in_channels": channels, "stem_adapted": meta.get("stem_adapted"),
                      "method_settings": meta.get("method_settings"),
                      "supervised_prior": bool(meta.get("supervised", False)),
                      "ssl_label_fraction": meta.get("label_fraction", 1.0),
                      "ssl_seed": meta.get("seed"),
                      "ssl_checkpoint": str(path), "foundation": meta.get("foundation"),
                      "ssl_dataset": meta.get("dataset"), "ssl_epochs": meta.get("epochs"),
                      "ssl_images_seen": meta.get("images_seen"),
                      "ssl_gpu_hours": meta.get("gpu_hours"),
                      # whether its val read-outs rose above a random init's (report marks it)
                      "ssl_readout_gain": meta.get("readout_gain"),
                      "ssl_learned": meta.get("learned"),
                      "ssl_split_file": str(path.parent / meta.get("split_file", SPLIT)),
                      "ssl_duplicate_policy": meta.get("data", {}).get("duplicates", {}).get("policy")}
