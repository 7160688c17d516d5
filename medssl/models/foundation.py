"""The registry of foundation priors: pretrained backbones beyond ImageNet's ResNets that a user
may start a classifier from (`medssl priors` lists them).

Each entry says where its weights come from (the library and the repository or model name), its
license, the input size, normalisation and channels it was trained with, the optional extra it
needs (`pip install medssl[foundation]`) and whether its weights are gated (a login and a
license to accept before they can be fetched). Weights load the normal way: from timm's or
Hugging Face's offline cache, or from a file given as `timm:MODEL_NAME=PATH`. A prior whose
weights or library are absent is skipped with one message naming what is missing, where to put
it, and its license (`unavailable`).

Adding a prior: one `FoundationPrior(...)` in PRIORS, and its line in docs/priors.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from medssl.errors import MedsslError
from medssl.models.timm_backbones import PREFIX

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


@dataclass(frozen=True)
class FoundationPrior:
    name: str  # the registry's name: `--priors NAME`
    title: str
    library: str  # timm, transformers, open_clip or torchxrayvision
    source: str  # the model or repository the weights come from, in that library's terms
    license: str
    input_size: int  # the side it was pretrained at
    mean: tuple
    std: tuple
    channels: int = 3
    extra: str | None = None  # the pip package it needs beyond medssl's own dependencies
    module: str | None = None  # that package's import name
    gated: bool = False  # a login and an accepted license before its weights can be fetched
    weights_repo: str | None = None  # the Hugging Face repository of its weights, where not timm's
    note: str = ""

    @property
    def timm_model(self) -> str | None:
        """The timm model name, for priors timm builds (`source` is `name.tag`)."""
        return self.source.split(".")[0] if self.library == "timm" else None


PRIORS: dict[str, FoundationPrior] = {p.name: p for p in (
    FoundationPrior("dinov2-vitb14", "DINOv2 ViT-B/14 (LVD-142M)", "timm",
                    "vit_base_patch14_dinov2.lvd142m", "Apache-2.0", 518, *IMAGENET),
    FoundationPrior("dinov3-vitb16", "DINOv3 ViT-B/16 (LVD-1689M)", "timm",
                    "vit_base_patch16_dinov3.lvd1689m", "DINOv3 License (Meta)", 224, *IMAGENET,
                    gated=True),
    FoundationPrior("rad-dino", "RAD-DINO (chest X-rays)", "transformers", "microsoft/rad-dino",
                    "MSRLA (Microsoft Research License)", 518,
                    (0.5307, 0.5307, 0.5307), (0.2583, 0.2583, 0.2583), extra="transformers", module="transformers"),
    FoundationPrior("biomedclip", "BiomedCLIP image tower (ViT-B/16)", "open_clip",
                    "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "MIT",
                    224, *CLIP, extra="open_clip_torch", module="open_clip"),
    FoundationPrior("xrv-resnet50", "TorchXRayVision ResNet-50 (chest X-rays, 512 px)",
                    "torchxrayvision", "resnet50-res512-all", "Apache-2.0", 512, (0.5,), (0.5,),
                    channels=1, extra="torchxrayvision", module="torchxrayvision",
                    note="its own scaling: pixels to [-1024, 1024]"),
    FoundationPrior("retfound", "RETFound (colour fundus, MAE ViT-L/16)", "timm",
                    "vit_large_patch16_224", "CC BY-NC 4.0 (non-commercial use only)", 224,
                    *IMAGENET, gated=True, weights_repo="YukunZhou/RETFound_mae_natureCFP",
                    note="its weights are not timm's: request access on Hugging Face, download "
                         "the checkpoint, and pass it as retfound=PATH"),
)}


def prior_names() -> tuple[str, ...]:
    return tuple(PRIORS)


@dataclass(frozen=True)
class PriorSpec:
    """A `--priors` value resolved: a registry entry, `timm:NAME`, or `timm:NAME=PATH`."""

    text: str
    entry: FoundationPrior | None  # the registry's, or None for a bare timm name
    timm_model: str | None
    file: Path | None

    @property
    def label(self) -> str:
        """Its name in tables and folders: the registry name, or `timm:NAME` (a file's path is
        recorded, not part of the name)."""
        return self.entry.name if self.entry else PREFIX + self.timm_model


def parse_prior(text: str) -> PriorSpec:
    """`--priors` values: NAME from the registry (NAME=PATH with its weights file, for the ones
    timm builds), timm:MODEL_NAME, or timm:MODEL_NAME=PATH.
    MedsslError naming the choices otherwise (names only: weights are looked for later)."""
    if text in PRIORS:
        return PriorSpec(text, PRIORS[text], PRIORS[text].timm_model, None)
    name, eq, path = text.partition("=")
    if name in PRIORS and PRIORS[name].library == "timm":  # a registry prior's own file
        if not path:
            raise MedsslError(f"--priors {text}: no file after '='. Fix: {name}=PATH to its "
                              "weights (safetensors or a state_dict).")
        return PriorSpec(text, PRIORS[name], PRIORS[name].timm_model, Path(path).expanduser())
    if text.startswith(PREFIX) and len(text) > len(PREFIX):
        name, eq, path = text[len(PREFIX):].partition("=")
        if eq and not path:
            raise MedsslError(f"--priors {text}: no file after '='. Fix: timm:{name}=PATH to a "
                              "safetensors or state_dict file, or timm:{name} for timm's cache.")
        return PriorSpec(text, None, name, Path(path).expanduser() if eq else None)
    raise MedsslError(f"Unknown prior {text!r}. Choose one of: {', '.join(PRIORS)}, "
                      "timm:MODEL_NAME, or timm:MODEL_NAME=PATH (`medssl priors` lists them).")


def prior_spec(label: str, weights: str | os.PathLike | None = None) -> PriorSpec:
    """The spec of a row's prior: its label (F-<label>) and the weights file a run was given."""
    spec = parse_prior(label)
    if weights is None:
        return spec
    if spec.timm_model is None or (spec.entry and spec.entry.library != "timm"):
        raise MedsslError(f"--prior-weights {weights}: {label} is not built by timm, so a weights "
                          "file cannot stand for it. Fix: drop --prior-weights.")
    return PriorSpec(f"{PREFIX}{spec.timm_model}={weights}", spec.entry, spec.timm_model,
                     Path(weights).expanduser())


def prior_arch(spec: PriorSpec) -> str | None:
    """The `--arch` a prior's rows run on (timm:NAME), or None for one timm does not build."""
    if spec.entry is not None and spec.entry.library != "timm":
        return None
    return PREFIX + spec.timm_model


def prior_stats(spec: PriorSpec) -> tuple[tuple, tuple]:
    """The normalisation a prior was trained with: the registry's, or, for a bare timm name,
    timm's for that model's default weights (ImageNet's where timm names none)."""
    if spec.entry is not None:
        return tuple(spec.entry.mean), tuple(spec.entry.std)
    import timm  # lazy: this module stays light for `medssl priors`

    cfg = timm.models.get_pretrained_cfg(spec.timm_model)
    mean, std = (getattr(cfg, "mean", None), getattr(cfg, "std", None)) if cfg else (None, None)
    return (tuple(mean), tuple(std)) if mean and std else IMAGENET


def prior_input_size(spec: PriorSpec) -> int | None:
    """The side a prior was pretrained at (recorded beside the run's own size)."""
    if spec.entry is not None:
        return spec.entry.input_size
    import timm

    cfg = timm.models.get_pretrained_cfg(spec.timm_model)
    size = getattr(cfg, "input_size", None) if cfg else None
    return int(size[-1]) if size else None


def hf_cache() -> Path:
    """Where Hugging Face (and timm through it) keeps downloaded weights."""
    home = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if home:
        return Path(home)
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def describe(entry: FoundationPrior) -> str:
    """One paragraph for `medssl priors`."""
    extra = f"; needs pip install {entry.extra}" if entry.extra else ""
    gated = "; gated" if entry.gated else ""
    lines = [f"{entry.name:<15} {entry.title}",
             f"{'':<15} {entry.library}: {entry.source}",
             f"{'':<15} license: {entry.license}; {entry.input_size} px, {entry.channels} "
             f"channel(s){extra}{gated}"]
    if entry.note:
        lines.append(f"{'':<15} {entry.note}")
    return "\n".join(lines)
