"""The registry of foundation priors: pretrained backbones beyond ImageNet's ResNets that a user
may start a classifier from (`medssl priors` lists them).

Each entry says where its weights come from (the library whose format they are in, and the
repository or model name), its license, the input size, normalisation and channels it was
trained with, the network medssl builds for it (`arch`: every entry today is built by timm or
torchvision, so no prior needs a library beyond medssl's own; an entry without one names the
package it would need, `extra`) and whether its weights are gated (a login and a license to
accept before they can be fetched). Weights load the normal way: from the Hugging Face offline
cache (timm's repositories, or a file of the prior's own), the folder its library downloads to,
or a file given as `NAME=PATH` / `timm:MODEL_NAME=PATH`. A prior whose weights are absent is
skipped with one message naming what is missing, where to put it, and its license
(models.foundation_load.PriorUnavailable).

Adding a prior: one `FoundationPrior(...)` in PRIORS, and its line in docs/priors.md."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from medssl.errors import MedsslError
from medssl.models.timm_backbones import PREFIX, check_timm_arch

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


XRV_URL = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"


@dataclass(frozen=True)
class FoundationPrior:
    name: str  # the registry's name: `--priors NAME`
    title: str
    library: str  # whose format the weights are in: timm, dinov2, open_clip, torchxrayvision
    source: str  # the model or repository the weights come from, in that library's terms
    license: str
    input_size: int  # the side it was pretrained at
    mean: tuple
    std: tuple
    # The network medssl builds and loads the weights into, strictly (models.backbones: a
    # torchvision arch or timm:NAME); None where only its own library can build it.
    arch: str | None = None
    channels: int = 3
    extra: str | None = None  # the pip package it needs beyond medssl's own dependencies
    module: str | None = None  # that package's import name
    gated: bool = False  # a login and an accepted license before its weights can be fetched
    # Where its weights are, when not in timm's Hugging Face repository for `source`: a file of
    # a Hugging Face repository (weights_repo, weights_name), or a file its library downloads
    # into weights_dir from weights_url; a repository without a file name is fetched by hand.
    weights_repo: str | None = None
    weights_name: str | None = None
    weights_dir: str | None = None
    weights_url: str | None = None
    key_prefix: str = ""  # the weights' keys of this network start with it (a tower of a CLIP)
    # keys of its checkpoint that are not the network's (an MAE's decoder), left out
    drop_keys: tuple[str, ...] = ()
    note: str = ""

    @property
    def timm_model(self) -> str | None:
        """The timm model name, for priors timm builds."""
        return self.arch[len(PREFIX):] if self.arch and self.arch.startswith(PREFIX) else None

    @property
    def timm_tag(self) -> str | None:
        """timm's name of its pretrained weights (`source`), where they are timm's own."""
        return self.source if self.library == "timm" and not self.weights_repo else None


PRIORS: dict[str, FoundationPrior] = {p.name: p for p in (
    FoundationPrior("dinov2-vitb14", "DINOv2 ViT-B/14 (LVD-142M)", "timm",
                    "vit_base_patch14_dinov2.lvd142m", "Apache-2.0", 518, *IMAGENET,
                    arch=PREFIX + "vit_base_patch14_dinov2"),
    FoundationPrior("dinov3-vitb16", "DINOv3 ViT-B/16 (LVD-1689M)", "timm",
                    "vit_base_patch16_dinov3.lvd1689m", "DINOv3 License (Meta)", 256, *IMAGENET,
                    arch=PREFIX + "vit_base_patch16_dinov3", gated=True),
    # RAD-DINO's checkpoint in the original DINOv2 layout (beside its transformers one): timm's
    # filter converts that layout, so timm's DINOv2 ViT-B/14 takes it strictly.
    FoundationPrior("rad-dino", "RAD-DINO (chest X-rays, DINOv2 ViT-B/14)", "dinov2",
                    "microsoft/rad-dino: backbone_compatible.safetensors",
                    "MIT (model card; earlier revisions: MSRLA)", 518,
                    (0.5307, 0.5307, 0.5307), (0.2583, 0.2583, 0.2583),
                    arch=PREFIX + "vit_base_patch14_dinov2", weights_repo="microsoft/rad-dino",
                    weights_name="backbone_compatible.safetensors"),
    # open_clip builds this tower with timm (its TimmModel): the same network, loaded strictly
    # from the image tower's keys of open_clip's checkpoint, without open_clip.
    FoundationPrior("biomedclip", "BiomedCLIP image tower (ViT-B/16)", "open_clip",
                    "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "MIT",
                    224, *CLIP, arch=PREFIX + "vit_base_patch16_224",
                    weights_repo="microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
                    weights_name="open_clip_pytorch_model.bin", key_prefix="visual.trunk."),
    # torchxrayvision's ResNet is torchvision's ResNet-50 with a one-channel stem, its state_dict
    # torchvision's: loaded without torchxrayvision. Its scaling of pixels to [-1024, 1024] is
    # this normalisation: (x / 255 - 0.5) * 2048.
    FoundationPrior("xrv-resnet50", "TorchXRayVision ResNet-50 (chest X-rays, 512 px)",
                    "torchxrayvision", "resnet50-res512-all", "Apache-2.0", 512, (0.5,),
                    (1 / 2048,), arch="resnet50", channels=1,
                    weights_dir="~/.torchxrayvision/models_data",
                    weights_url=XRV_URL + "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt",
                    note="its own scaling: pixels to [-1024, 1024]"),
    FoundationPrior("retfound", "RETFound (colour fundus, MAE ViT-L/16)", "timm",
                    "vit_large_patch16_224", "CC BY-NC 4.0 (non-commercial use only)", 224,
                    *IMAGENET, arch=PREFIX + "vit_large_patch16_224", gated=True,
                    weights_repo="YukunZhou/RETFound_mae_natureCFP",
                    drop_keys=("decoder", "mask_token"),
                    note="its weights are not timm's: request access on Hugging Face, download "
                         "the checkpoint, and pass it as retfound=PATH"),
)}


def prior_names() -> tuple[str, ...]:
    return tuple(PRIORS)


@dataclass(frozen=True)
class PriorSpec:
    """A `--priors` value resolved: a registry entry (with its file: NAME=PATH), `timm:NAME`,
    or `timm:NAME=PATH`."""

    text: str
    entry: FoundationPrior | None  # the registry's, or None for a bare timm name
    timm_model: str | None
    file: Path | None

    @property
    def label(self) -> str:
        """Its name in tables and folders: the registry name, or `timm:NAME` (a file's path is
        recorded, not part of the name)."""
        return self.entry.name if self.entry else PREFIX + self.timm_model

    @property
    def arch(self) -> str | None:
        """The network its rows run on, or None where medssl cannot build it."""
        return self.entry.arch if self.entry else PREFIX + self.timm_model


def parse_prior(text: str) -> PriorSpec:
    """`--priors` values: NAME from the registry (NAME=PATH with its weights file, for the ones
    medssl builds), timm:MODEL_NAME, or timm:MODEL_NAME=PATH.
    MedsslError naming the choices otherwise (names only: weights are looked for later)."""
    if text in PRIORS:
        return PriorSpec(text, PRIORS[text], PRIORS[text].timm_model, None)
    name, eq, path = text.partition("=")
    if name in PRIORS and PRIORS[name].arch:  # a registry prior's own file
        if not path:
            raise MedsslError(f"--priors {text}: no file after '='. Fix: {name}=PATH to its "
                              "weights (safetensors or a state_dict).")
        return PriorSpec(text, PRIORS[name], PRIORS[name].timm_model, Path(path).expanduser())
    if text.startswith(PREFIX) and len(text) > len(PREFIX):
        name, eq, path = text[len(PREFIX):].partition("=")
        if eq and not path:
            raise MedsslError(f"--priors {text}: no file after '='. Fix: timm:{name}=PATH to a "
                              "safetensors or state_dict file, or timm:{name} for timm's cache.")
        check_timm_arch(PREFIX + name, "--priors")  # a misspelt name, with timm's closest
        return PriorSpec(text, None, name, Path(path).expanduser() if eq else None)
    raise MedsslError(f"Unknown prior {text!r}. Choose one of: {', '.join(PRIORS)}, "
                      "timm:MODEL_NAME, or timm:MODEL_NAME=PATH (`medssl priors` lists them).")


def prior_spec(label: str, weights: str | os.PathLike | None = None) -> PriorSpec:
    """The spec of a row's prior: its label (F-<label>) and the weights file a run was given."""
    spec = parse_prior(label)
    if weights is None:
        return spec
    if spec.arch is None:
        raise MedsslError(f"--prior-weights {weights}: medssl does not build {label}'s network, "
                          "so a weights file cannot stand for it. Fix: drop --prior-weights.")
    return PriorSpec(f"{label}={weights}", spec.entry, spec.timm_model, Path(weights).expanduser())


def prior_arch(spec: PriorSpec) -> str | None:
    """The `--arch` a prior's rows run on, or None where medssl cannot build it."""
    return spec.arch


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
