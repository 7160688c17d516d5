"""Where a finished run's network looks: Grad-CAM maps (pytorch-grad-cam's `GradCAM`) of
pictures put through the run's own preprocessing (training.predict), each map reduced by block
averages to a grid of at most MAX_CELLS x MAX_CELLS cells, beside the picture as the network saw
it, its class probabilities and its predicted class. Drawing them: report.gradcam.

The layer a map is taken at (`target_layer`): a ResNet's last block (torchvision's or timm's)
of the deepest stage whose map has at least MIN_CELLS cells a side at the run's image size (the
last stage at 128 px and more; at the demo's 32 px the last stage is 1x1, a map without a
place); a timm ViT's last block's first norm, its patch tokens laid out on the patch grid (the
library's documented ViT recipe); otherwise the network's last convolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medssl.errors import MedsslError
from medssl.training.frozen import device_of
from medssl.training.predict import PredictOptions, Source, normalizer, raw_batches

MAX_CELLS = 32  # cells per side of a map as drawn and written: finer is not legible in a panel
MIN_CELLS = 4  # cells per side a ResNet stage needs for its map to say where: 2x2 says little
RESNET_STAGES = {"layer4": 32, "layer3": 16, "layer2": 8, "layer1": 4}  # each stage's stride


@dataclass
class Explanation:
    """One picture's map, and what the network made of the picture."""
    path: str  # relative to the pictures' root
    picture: np.ndarray  # (H, W, 3) float in [0, 1]: as the network saw it (grey repeated)
    grid: np.ndarray  # (rows, cols) float in [0, 1], at most MAX_CELLS a side: the map drawn
    probs: np.ndarray  # one per class
    predicted: int  # the most probable class
    target: int  # the class the map is for (the predicted one unless another was asked for)
    layer: str = ""  # the backbone's layer the map was taken at (layer4.1, blocks.11.norm1)


def vit_reshape(backbone: nn.Module):
    """pytorch-grad-cam's ViT reshape transform for this ViT: its prefix tokens (class and
    register tokens) dropped, the patch tokens laid out as (B, C, H, W) on its patch grid."""
    prefix = int(getattr(backbone, "num_prefix_tokens", 1))
    rows, cols = (int(n) for n in backbone.patch_embed.grid_size)

    def reshape(tensor: torch.Tensor) -> torch.Tensor:
        result = tensor[:, prefix:, :].reshape(tensor.size(0), rows, cols, tensor.size(2))
        # Bring the channels to the first dimension, like in CNNs (the library's docs).
        return result.transpose(2, 3).transpose(1, 2)

    return reshape


def target_layer(backbone: nn.Module, image_size: int | None = None):
    """(the layer whose activations and gradients make the map, its reshape transform or None);
    `image_size`: the pictures' side, which picks a ResNet's stage (None: the last)."""
    if hasattr(backbone, "layer4"):  # torchvision's and timm's ResNets: a stage's last block
        stage = next((name for name, stride in RESNET_STAGES.items()
                      if image_size is None or image_size // stride >= MIN_CELLS), "layer1")
        return getattr(backbone, stage)[-1], None
    if hasattr(backbone, "blocks") and hasattr(backbone, "patch_embed") \
            and hasattr(backbone.blocks[-1], "norm1"):
        # The class token's output depends on the patches only through the last block's
        # attention: its input norm is the last place the patch tokens carry the gradient.
        return backbone.blocks[-1].norm1, vit_reshape(backbone)
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    if convs:
        return convs[-1], None
    raise MedsslError(f"A {type(backbone).__name__} backbone has no layer a class-activation map "
                      "can be taken at (no ResNet stage, no ViT block, no convolution). Fix: "
                      "explain a run on a ResNet (--arch resnet18/34/50 or timm:resnet*), a "
                      "timm ViT (timm:vit_*), or another convolutional network.")


def block_average(full: np.ndarray, cells: int = MAX_CELLS) -> np.ndarray:
    """`full` (H, W) as the means of at most `cells` x `cells` blocks of (nearly) equal size."""
    edges = [np.linspace(0, n, min(cells, n) + 1).round().astype(int) for n in full.shape]
    sums = np.add.reduceat(np.add.reduceat(full, edges[0][:-1], axis=0), edges[1][:-1], axis=1)
    return sums / np.outer(np.diff(edges[0]), np.diff(edges[1]))


def class_index(source: Source, target: int | str | None) -> int | None:
    """The class a map is asked for, by index or name (None: each picture's predicted one)."""
    if target is None:
        return None
    classes = list(source.classes)
    if str(target) in classes:
        return classes.index(str(target))
    if isinstance(target, int) and 0 <= target < len(classes):
        return target
    raise MedsslError(f"Target class {target!r} is not one of {source.name}'s classes "
                      f"({', '.join(classes)}). Fix: one of those names, or its index.")


def as_seen(raw: torch.Tensor) -> np.ndarray:
    """A uint8 (C, H, W) picture as (H, W, 3) floats in [0, 1] for display (grey repeated)."""
    picture = raw.permute(1, 2, 0).float().div(255).numpy()
    return np.repeat(picture, 3, axis=2) if picture.shape[2] == 1 else picture


def explain_pictures(source: Source, opts: PredictOptions, root: Path, rel: list[str],
                     target: int | str | None = None) -> list[Explanation]:
    """The Grad-CAM map of each picture `root/rel` (already known to be readable) through the
    network of `source` (a run's: backbone and head), in eval mode, for its predicted class or
    for `target`."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if source.head is None:
        raise MedsslError(f"{source.name} is a backbone: it has no classifier head, so no class "
                          "to map. Fix: a finished finetuning run's folder.")
    wanted = class_index(source, target)
    layer, reshape = target_layer(source.backbone, source.cfg.image_size)
    layer_name = next(n for n, m in source.backbone.named_modules() if m is layer)
    device = device_of(opts)
    model = nn.Sequential(source.backbone, source.head).to(device).eval()
    normalize = normalizer(source, opts)
    cam = GradCAM(model=model, target_layers=[layer], reshape_transform=reshape)
    out = []
    try:  # not `with cam`: its __exit__ swallows an IndexError
        for raw in raw_batches(source, opts, rel, root):
            # A run's network is frozen (requires_grad off): the gradient reaches the layer
            # through the input instead.
            x = normalize(raw.to(device)).requires_grad_(True)
            targets = None if wanted is None else [ClassifierOutputTarget(wanted)] * len(x)
            full = cam(input_tensor=x, targets=targets)  # (B, H, W) in [0, 1], input size
            probs = cam.outputs.detach().float().softmax(1).cpu().numpy()
            for i in range(len(x)):
                predicted = int(probs[i].argmax())
                out.append(Explanation(rel[len(out)], as_seen(raw[i]), block_average(full[i]),
                                       probs[i], predicted,
                                       predicted if wanted is None else wanted, layer_name))
    finally:
        cam.activations_and_grads.release()
    return out
