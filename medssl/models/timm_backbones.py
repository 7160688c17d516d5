"""Backbones beyond torchvision's ResNets, through timm: `--arch timm:MODEL_NAME`.

A timm backbone is `timm.create_model(name, num_classes=0)`: it maps images to `num_features`
features (its pooled output, the classifier left out), so every method, read-out and head takes
its feature size from the model. A ViT is made at the run's image size (its position embeddings
sized to it) and accepts other sizes too (`dynamic_img_size`: the multi-crop methods' small
views). Its state_dict is timm's own: it loads strictly into `timm.create_model(name,
num_classes=0, img_size=..., in_chans=...)`, and backbone.json names the model.
"""

from __future__ import annotations

import difflib

from torch import nn

from medssl.errors import MedsslError

PREFIX = "timm:"


def is_timm(arch: str | None) -> bool:
    return bool(arch) and str(arch).startswith(PREFIX)


def timm_name(arch: str) -> str:
    return arch[len(PREFIX):]


def check_timm_arch(arch: str, flag: str = "--arch") -> str:
    """The timm model name of `timm:NAME`, or MedsslError naming the closest names timm has
    (`flag`: the flag that gave it)."""
    try:
        import timm
    except ImportError:
        raise MedsslError(f"{flag} {arch} needs timm, which is not installed. Fix: pip install "
                          "timm") from None
    name = timm_name(arch)
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(PREFIX + c for c in close)}?" if close else ""
        raise MedsslError(f"{flag} {arch}: timm has no model {name!r}.{hint} Fix: a name from "
                          "`python -c \"import timm; print(timm.list_models('vit*'))\"`.")
    return name


def create_timm(arch: str, in_channels: int = 3, image_size: int | None = None,
                pretrained: bool = False, **kwargs) -> nn.Module:
    """A timm backbone without its classifier, at `image_size` where the model has one (ViTs),
    and accepting other sizes where it can."""
    import timm

    name = check_timm_arch(arch)
    options = {"num_classes": 0, "in_chans": in_channels, "pretrained": pretrained, **kwargs}
    sized = {"img_size": image_size, "dynamic_img_size": True} if image_size else {}
    try:
        return timm.create_model(name, **options, **sized)
    except TypeError:  # a model without an image size (a CNN): it takes any size
        return timm.create_model(name, **options)


def out_features(backbone: nn.Module) -> int:
    """The size of a backbone's features: timm's `num_features`, or a torchvision ResNet's
    channels out of its last stage (`inplanes` once it is built)."""
    if hasattr(backbone, "num_features"):
        return int(backbone.num_features)
    return int(backbone.inplanes)
