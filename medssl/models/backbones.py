"""torchvision ResNet backbones (`fc` replaced by Identity) with random or ImageNet initial weights.

ImageNet weights come through torchvision's weights API and cache ($TORCH_HOME/hub/checkpoints).
Offline with nothing cached, the error names the file torchvision wants, where it looked, and the
`--imagenet-weights PATH` alternative. Set MEDSSL_OFFLINE=1 to never try a download.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from medssl.errors import MedsslError
from medssl.models.checkpoints import read_meta, read_state_dict
from medssl.models.timm_backbones import check_timm_arch, create_timm, is_timm
from medssl.names import INITS

log = logging.getLogger("medssl")

ARCHS = {
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights, 512),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights, 512),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights, 2048),
}
DEFAULT_IMAGENET = "IMAGENET1K_V1"  # what --imagenet-weights means when it is not given


def feature_dim(arch: str) -> int:
    """A torchvision ResNet's feature size (a timm backbone's: `out_features` of the model)."""
    return ARCHS[check_arch(arch)][2]


def check_arch(arch: str) -> str:
    if is_timm(arch):
        check_timm_arch(arch)
        return arch
    if arch not in ARCHS:
        raise MedsslError(f"Unknown --arch '{arch}'. Choose one of: {', '.join(ARCHS)}, or "
                          "timm:MODEL_NAME (any timm model).")
    return arch


IN_CHANNELS = (1, 3)


def empty_backbone(arch: str, in_channels: int = 3, image_size: int | None = None) -> nn.Module:
    """The torchvision model of `arch`, randomly initialised, with `fc = nn.Identity()`; with
    one input channel its first convolution takes one (a grey stem: the rest is unchanged, so
    its state_dict loads strictly into a torchvision model given the same `conv1`). A timm
    `arch` (`timm:NAME`) is timm's model without its classifier, at `image_size` (ViTs)."""
    if in_channels not in IN_CHANNELS:
        raise MedsslError(f"--in-channels {in_channels}: expected 1 (grey) or 3 (RGB).")
    if is_timm(arch):
        return create_timm(arch, in_channels, image_size)
    model = ARCHS[check_arch(arch)][0](weights=None)
    model.fc = nn.Identity()
    if in_channels != 3:
        old = model.conv1
        model.conv1 = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride,
                                old.padding, bias=False)
    return model


def adapt_stem(state: dict, in_channels: int) -> tuple[dict, str | None]:
    """ImageNet's RGB weights for a stem of `in_channels`: the first convolution's weights summed
    over their three input channels for one, as timm's `adapt_input_conv` does (a grey picture
    fed to all three RGB inputs gives the same response). Written here because timm is not a
    dependency. Returns the state and what was done (None: nothing)."""
    weight = state.get("conv1.weight")
    if weight is None or weight.shape[1] == in_channels:
        return state, None
    if in_channels != 1 or weight.shape[1] != 3:
        raise MedsslError(f"Weights with a {weight.shape[1]}-channel stem cannot be adapted to "
                          f"--in-channels {in_channels}. Fix: --in-channels {weight.shape[1]}.")
    return {**state, "conv1.weight": weight.sum(dim=1, keepdim=True)}, ADAPTED


ADAPTED = "conv1 summed over its 3 RGB input channels (timm's adapt_input_conv)"


def stem_note(init: str, in_channels: int) -> str | None:
    """What was done to ImageNet's stem for a run of this init and input channels (recorded)."""
    return ADAPTED if init == "imagenet" and in_channels == 1 else None


def imagenet_weights_file(arch: str, weights: str = "IMAGENET1K_V1") -> tuple[str, Path]:
    """The file name torchvision downloads for these weights and the cache folder it uses."""
    enum = ARCHS[check_arch(arch)][1]
    if weights not in enum.__members__:
        raise MedsslError(f"Unknown ImageNet weights '{weights}' for {arch}; choose one of: "
                          f"{', '.join(k for k in enum.__members__ if k != 'DEFAULT')}, or a file path.")
    url = enum[weights].url
    return url.rsplit("/", 1)[-1], Path(torch.hub.get_dir()) / "checkpoints"


def is_weights_file(weights: str | os.PathLike) -> bool:
    """Whether --imagenet-weights names a file (a path) rather than torchvision weights by name."""
    text = str(weights)
    return bool(Path(text).suffix) or "/" in text or os.sep in text or Path(text).exists()


def imagenet_state_dict(arch: str, weights: str | os.PathLike | None = None) -> dict:
    """ImageNet weights for `arch` as a state_dict without `fc`: from a file path, or by name
    through torchvision (its cache first, a download only when online)."""
    if is_timm(arch):
        raise MedsslError(f"ImageNet weights (M3, M4, --init imagenet) with --arch {arch}: a "
                          "timm model's pretrained weights are a prior of their own, not yet "
                          "offered as ImageNet's here. Fix: models from random init (M1, M2) "
                          "with a timm --arch, or a torchvision --arch.")
    weights = weights or DEFAULT_IMAGENET
    if is_weights_file(weights):
        state = read_state_dict(Path(weights), "--imagenet-weights file")
    else:
        name, cache = imagenet_weights_file(arch, str(weights))
        enum = ARCHS[arch][1][str(weights)]
        if not (cache / name).is_file() and os.environ.get("MEDSSL_OFFLINE"):
            raise MedsslError(_missing(arch, str(weights), name, cache, "MEDSSL_OFFLINE is set"))
        try:
            state = enum.get_state_dict(progress=True, check_hash=False)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError
            raise MedsslError(_missing(arch, str(weights), name, cache, str(exc))) from None
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _missing(arch: str, weights: str, name: str, cache: Path, why: str) -> str:
    return (f"ImageNet weights {weights} for {arch} are not available offline ({why}).\n"
            f"torchvision looked for {cache / name}\n"
            f"Fix: copy {name} (from torchvision's download URL for {arch} {weights}) into {cache}"
            f" (set $TORCH_HOME to use another cache), or pass --imagenet-weights PATH to a "
            f"state_dict file of a torchvision {arch}.")


def build_backbone(arch: str = "resnet50", init: str = "random",
                   imagenet_weights: str | os.PathLike | None = None,
                   in_channels: int = 3, image_size: int | None = None) -> nn.Module:
    """A backbone that maps images of `in_channels` to `out_features(model)` features, with the
    asked-for prior (ImageNet's stem adapted to one channel: adapt_stem, logged)."""
    model = empty_backbone(arch, in_channels, image_size)
    if init == "imagenet":
        source = f"ImageNet weights {imagenet_weights or DEFAULT_IMAGENET}"
        state, adapted = adapt_stem(imagenet_state_dict(arch, imagenet_weights), in_channels)
        load_strict(model, state, source)
        if adapted:
            log.info("%s for %d input channel(s): %s", source, in_channels, adapted)
    elif init != "random":
        raise MedsslError(f"Unknown --init '{init}'. Choose one of: {', '.join(INITS)}.")
    return model


def load_strict(model: nn.Module, state: dict, source: str, fix: str | None = None) -> list[str]:
    """Load every key exactly; name what is missing, extra or misshapen. A classifier head
    (`fc.*`, as a torchvision model saved whole has) is not part of the backbone: it is dropped,
    and its keys returned so the caller can say so. Anything else that does not fit is an error."""
    own = model.state_dict()
    head = sorted(k for k in state if k.startswith("fc.") and k not in own)
    state = {k: v for k, v in state.items() if k not in head}
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (first: {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} unexpected key(s) (first: {extra[0]})")
        if shapes:
            k = sorted(shapes)[0]
            parts.append(f"{len(shapes)} shape mismatch(es) (first: {k} {tuple(state[k].shape)} "
                         f"vs {tuple(own[k].shape)})")
        raise MedsslError(f"{source} does not fit this backbone: {'; '.join(parts)}. "
                          f"{fix or _arch_fix(state)}")
    model.load_state_dict(state, strict=True)
    if head:
        log.info("%s: left out its classifier head (%s); the backbone loaded strictly",
                 source, ", ".join(head))
    return head


def _arch_fix(state: dict) -> str:
    """Which torchvision arch the weights are, when one fits, for the fix."""
    stem = state.get("conv1.weight")
    if stem is not None and stem.dim() == 4 and stem.shape[1] in IN_CHANNELS:
        for arch in ARCHS:
            own = empty_backbone(arch, stem.shape[1]).state_dict()
            if set(own) == set(state) and all(own[k].shape == state[k].shape for k in own):
                if stem.shape[1] != 3:
                    return (f"They are {arch} weights for {stem.shape[1]} input channel(s). "
                            f"Fix: pass --arch {arch} --in-channels {stem.shape[1]}.")
                break
    for arch in ARCHS:
        own = empty_backbone(arch).state_dict()
        if set(own) == set(state) and all(own[k].shape == state[k].shape for k in own):
            return (f"They are {arch} weights. Fix: pass --arch {arch}, or use weights of this "
                    "run's --arch.")
    keys = list(state)[:3]
    return (f"They are not the weights of a torchvision ResNet (first keys: {', '.join(keys)}). "
            "Fix: use a checkpoint of the same --arch, saved from a torchvision ResNet's "
            "state_dict (keys such as conv1.weight, layer1.0.bn1.weight).")


def load_backbone_file(model: nn.Module, path: Path) -> dict:
    """Load `path` into `model` strictly; return the JSON beside it ({} if there is none)."""
    load_strict(model, read_state_dict(path), str(path))
    meta_path = Path(path).with_suffix(".json")
    return read_meta(meta_path) if meta_path.is_file() else {}
