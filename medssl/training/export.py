"""`medssl export RUN --format onnx|torchscript|safetensors --out DIR`: a finished run's classifier
(backbone and head) as one self-contained file, with `classifier.json` beside it saying what
goes in and what comes out.

- onnx and torchscript: a normalised N x C x S x S float input (any batch size), class
  probabilities out (softmax included). The ONNX file is run once by onnxruntime where it is
  installed (`pip install medssl[export]`) and must give PyTorch's probabilities to within 1e-4.
- safetensors: the state_dict of the network's own library with the run's classes as its
  classifier (torchvision: `resnet50(num_classes=n)`, timm: `create_model(name,
  num_classes=n)`), loaded strictly by it; a linear head only (an MLP head has no place there).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import torch
from torch import nn

from medssl.atomic import atomic_write
from medssl.errors import MedsslError
from medssl.models.timm_backbones import is_timm
from medssl.presets import preset_for
from medssl.training.loaders import run_stats
from medssl.training.predict import Source, open_source

log = logging.getLogger("medssl")

FORMATS = {"onnx": "classifier.onnx", "torchscript": "classifier.pt",
           "safetensors": "classifier.safetensors"}


class Probabilities(nn.Module):
    """Backbone, head, softmax: what an exported classifier computes from a normalised input."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x):
        return self.head(self.backbone(x)).softmax(dim=1)


def library_state(source: Source) -> dict:
    """The run's network as its library's classifier state_dict: the backbone's keys as they
    are, the linear head's under the library's classifier name."""
    if not isinstance(source.head, nn.Linear):
        raise MedsslError(f"{source.name} has an MLP head, which no torchvision or timm "
                          "classifier holds. Fix: --format onnx or torchscript.")
    arch = source.cfg.arch
    if is_timm(arch):
        name = source.backbone.pretrained_cfg.get("classifier", "head")
    else:
        name = "fc"
    state = {k: v for k, v in source.backbone.state_dict().items()}
    state.update({f"{name}.weight": source.head.weight.detach(),
                  f"{name}.bias": source.head.bias.detach()})
    return state


def write_model(net: Probabilities, source: Source, fmt: str, path: Path) -> None:
    """One file of the asked-for format, written whole or not at all."""
    size, channels = source.cfg.image_size, source.cfg.in_channels
    example = torch.zeros(2, channels, size, size)
    if fmt == "torchscript":
        traced = torch.jit.trace(net, example, check_trace=False)
        atomic_write(path, lambda p: traced.save(str(p)))
    elif fmt == "onnx":
        if importlib.util.find_spec("onnx") is None:  # torch's exporter needs it
            raise MedsslError("--format onnx needs the onnx package, which is not installed. "
                              "Fix: pip install medssl[export] (onnx, onnxruntime).")
        atomic_write(path, lambda p: torch.onnx.export(
            net, example, str(p), input_names=["image"], output_names=["probabilities"],
            dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}}, dynamo=False))
    else:
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in library_state(source).items()}
        atomic_write(path, lambda p: save_file(state, str(p)))


def check_onnx(net: Probabilities, path: Path, source: Source) -> str:
    """Run the ONNX file on random inputs with onnxruntime; its probabilities against PyTorch's."""
    try:
        import onnxruntime
    except ImportError:
        return "not checked: onnxruntime is not installed (pip install medssl[export])"
    size, channels = source.cfg.image_size, source.cfg.in_channels
    x = torch.randn(3, channels, size, size, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        want = net(x).numpy()
    gap = float(abs(got - want).max())
    if gap > 1e-4:
        raise MedsslError(f"The ONNX export of {source.name} gives other probabilities than "
                          f"PyTorch (largest difference {gap:.2e}). This is a bug in medssl or "
                          "in torch's exporter: please report it; --format torchscript works.")
    return f"checked with onnxruntime: largest difference from PyTorch {gap:.1e}"


def export(run: str, fmt: str, out: str) -> Path:
    """Write the run's classifier in `fmt` and classifier.json into `out`; return the model file."""
    if fmt not in FORMATS:
        raise MedsslError(f"--format {fmt}: choose one of {', '.join(FORMATS)}.")
    source = open_source(run)
    if source.head is None:
        raise MedsslError(f"{run} is a backbone: it has no classifier head to export. Fix: a "
                          "finished finetuning run's folder.")
    net = Probabilities(source.backbone.cpu(), source.head.cpu()).eval()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FORMATS[fmt]
    write_model(net, source, fmt, path)
    checked = check_onnx(net, path, source) if fmt == "onnx" else None
    mean, std = run_stats(source.init, preset_for(source.cfg.dataset), source.cfg.in_channels)
    meta = {"format": fmt, "file": path.name, "run": str(run), "model": source.model,
            "arch": source.cfg.arch, "classes": source.classes,
            "image_size": source.cfg.image_size, "channels": source.cfg.in_channels,
            "mean": list(mean), "std": list(std), "window": source.cfg.window,
            "input": "float N x C x S x S: pixels / 255, minus mean, over std, after resizing "
                     "the short side to 8/7 S and cropping the centre S x S",
            "output": ("probabilities per class, in the order of `classes`" if fmt != "safetensors"
                       else "the library's classifier state_dict (logits: softmax them)"),
            **({"onnx_check": checked} if checked else {})}
    atomic_write(folder / "classifier.json",
                 lambda p: p.write_text(json.dumps(meta, indent=2)))
    log.info("%s exported as %s: %s%s", source.name, fmt, path, f" ({checked})" if checked else "")
    return path
