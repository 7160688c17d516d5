"""Backbone files: a plain torchvision state_dict plus a JSON of how it was made; reading any
weights file a user names without running pickled code. (Loading weights into a backbone,
strictly, is models.backbones.load_strict.)

`backbone.pt` loads with `torch.load(path, weights_only=True)` and then `load_state_dict(strict=True)`
into the torchvision model of its arch whose `fc` is `nn.Identity()`. Loading is always strict: a
file that does not fit is an error naming it, never a silently random model.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from medssl.atomic import atomic_write
from medssl.errors import MedsslError
from medssl.records import (BackboneRecord, backbone_record_path, read_backbone_dict,
                            write_backbone_record)


def save_backbone(model: nn.Module, path: Path, meta: BackboneRecord | dict) -> None:
    """`path` (.pt) holds the weights; `path` with `.json` the facts about them (records:
    BackboneRecord). A dict is read as a BackboneRecord (an unknown key is refused) and written
    with its own keys only, and `schema`."""
    if isinstance(meta, BackboneRecord):
        record, keys = meta, None
    else:
        record = BackboneRecord.from_dict(meta, f"the record for {backbone_record_path(path)}")
        keys = tuple(meta)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    write_backbone_record(path, record, keys)
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
    # A training checkpoint holds its weights under one key: Lightning's "state_dict", or
    # "model" (MAE's, DeiT's, RETFound's), beside an optimizer's state that is not read.
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
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


def read_meta(path: Path) -> dict:
    """The JSON of how a backbone was made, with the keys it holds (records.read_backbone_dict);
    a file that is not one is an error naming it."""
    return read_backbone_dict(path)
