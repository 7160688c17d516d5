"""Backbone files: a plain torchvision state_dict plus a JSON of how it was made.

`backbone.pt` loads with `torch.load(path, weights_only=True)` and then `load_state_dict(strict=True)`
into the torchvision model of its arch whose `fc` is `nn.Identity()`. Loading is always strict: a
file that does not fit is an error naming it, never a silently random model.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from torch import nn

from medssl.atomic import atomic_write
from medssl.errors import MedsslError


def save_backbone(model: nn.Module, path: Path, meta: dict) -> None:
    """`path` (.pt) holds the weights; `path` with `.json` the facts about them."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_write(Path(path).with_suffix(".json"),
                 lambda p: p.write_text(json.dumps(meta, indent=2, default=str)))
    atomic_write(Path(path), lambda p: torch.save(state, p))


def read_state_dict(path: Path) -> dict:
    """A state_dict from a file, never running pickled code: `.safetensors` files hold tensors
    only; anything else goes through `torch.load(weights_only=True)`, which refuses pickled code."""
    path = Path(path)
    if not path.is_file():
        raise MedsslError(f"Checkpoint {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise MedsslError(f"{path} is not a readable safetensors file ({exc}).") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise MedsslError(f"{path} is not a plain state_dict that loads with weights_only=True "
                          f"({str(exc).splitlines()[0]}). Fix: export the weights with "
                          "torch.save(model.state_dict(), path).") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MedsslError(f"{path} does not hold a state_dict of tensors.")
    return state


def load_strict(model: nn.Module, state: dict, source: str) -> None:
    """Load every key exactly; name what is missing, extra or misshapen."""
    own = model.state_dict()
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
                          "Fix: use a checkpoint of the same --arch.")
    model.load_state_dict(state, strict=True)


def load_backbone_file(model: nn.Module, path: Path) -> dict:
    """Load `path` into `model` strictly; return the JSON beside it ({} if there is none)."""
    load_strict(model, read_state_dict(path), str(path))
    meta_path = Path(path).with_suffix(".json")
    return json.loads(meta_path.read_text()) if meta_path.is_file() else {}
