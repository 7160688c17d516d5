"""Backbone files: a plain torchvision state_dict plus a JSON of how it was made.

`backbone.pt` loads with `torch.load(path, weights_only=True)` and then `load_state_dict(strict=True)`
into the torchvision model of its arch whose `fc` is `nn.Identity()`. Loading is always strict: a
file that does not fit is an error naming it, never a silently random model.
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import torch
from torch import nn

from medssl.atomic import atomic_write
from medssl.errors import MedsslError

log = logging.getLogger("medssl")


def save_backbone(model: nn.Module, path: Path, meta: dict) -> None:
    """`path` (.pt) holds the weights; `path` with `.json` the facts about them."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_write(Path(path).with_suffix(".json"),
                 lambda p: p.write_text(json.dumps(meta, indent=2, default=str)))
    atomic_write(Path(path), lambda p: torch.save(state, p))


def read_state_dict(path: Path, what: str = "checkpoint") -> dict:
    """A state_dict from a weights file, never running pickled code: `.safetensors` files hold
    tensors only; anything else goes through `torch.load(weights_only=True)`, which refuses
    pickled code. The one loader for every weight file a user names (`--imagenet-weights`,
    `--ssl-checkpoint`): each kind of wrong file gets its own message, naming the file."""
    path = Path(path)
    fix = ("Fix: export the weights with torch.save(model.state_dict(), path), or use a "
           "backbone.pt written by `medssl pretrain`.")
    if path.is_dir():
        raise MedsslError(f"The {what} {path} is a folder, not a weights file. Fix: name the "
                          "file inside it (a .pt, .pth or .safetensors file).")
    if not path.is_file():
        raise MedsslError(f"The {what} {path} does not exist. Fix: check the path (it is read "
                          "relative to the folder you run medssl in).")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise MedsslError(f"The {what} {path} cannot be read ({exc.strerror or exc}).") from None
    if not head:
        raise MedsslError(f"The {what} {path} is an empty file (0 bytes): a download or copy "
                          f"that was cut short. {fix}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise MedsslError(f"{path} is not a readable safetensors file ({exc}).") from None
    if not head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        kind = "a text file" if _is_text(head) else "not a file torch.save wrote"
        raise MedsslError(f"The {what} {path} is {kind} (it starts with {head[:24]!r}), not "
                          f"saved weights. {fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # the pickle holds objects, not only tensors: never run it
        raise MedsslError(f"{path} is not a plain state_dict that loads with weights_only=True: "
                          "it holds pickled Python objects (a whole model saved with "
                          "torch.save(model), perhaps), and loading those would run their code. "
                          f"{fix}") from None
    except Exception as exc:  # torch raises many kinds for a damaged file
        detail = str(exc).splitlines()[0][:200] if str(exc) else "no detail"
        raise MedsslError(f"{path} is not a plain state_dict that loads with weights_only=True "
                          f"({type(exc).__name__}: {detail}); the file may be damaged. {fix}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise MedsslError(f"The {what} {path} holds a {type(state).__name__}, not a state_dict "
                          f"(a dict of parameter names to tensors). {fix}")
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        other = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
        detail = f"'{other}' is not a tensor" if other is not None else "it is empty"
        raise MedsslError(f"The {what} {path} does not hold a state_dict of tensors ({detail}). "
                          f"{fix}")
    return state


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
PICKLE_MAGIC = b"\x80"  # the legacy format: a pickle of protocol 2 or higher


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def load_strict(model: nn.Module, state: dict, source: str) -> list[str]:
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
                          f"{_arch_fix(state)}")
    model.load_state_dict(state, strict=True)
    if head:
        log.info("%s: left out its classifier head (%s); the backbone loaded strictly",
                 source, ", ".join(head))
    return head


def _arch_fix(state: dict) -> str:
    """Which torchvision arch the weights are, when one fits, for the fix."""
    from medssl.models.backbones import ARCHS, empty_backbone

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


def read_meta(path: Path) -> dict:
    """The JSON of how a backbone was made; a file that is not one is an error naming it."""
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MedsslError(f"{path} is not a readable JSON file ({exc}). Fix: use the backbone.json "
                          "that `medssl pretrain` wrote beside the backbone, or pretrain again.") from None
    if not isinstance(meta, dict):
        raise MedsslError(f"{path} holds a JSON {type(meta).__name__}, not the object `medssl "
                          "pretrain` writes. Fix: use the backbone.json written beside the backbone.")
    return meta
