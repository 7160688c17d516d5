"""Flags checked before any work starts, whoever sets them (the CLI, `compare`, the Python API):
trainer settings against what Lightning accepts and what this machine has, learning rates, and
the places a run writes to. A refused flag stops the run before its folder is made.

Lightning and torch would refuse most of these too, but only once the data is prepared and a
run folder is half made, and with a traceback from deep inside the Trainer or a loader worker.
"""

from __future__ import annotations

import importlib.util
import logging

from medssl.errors import MedsslError
from medssl.names import ACCELERATORS, LOGGERS, PRECISIONS
from medssl.oserrors import writable_folder

log = logging.getLogger("medssl")


def check_loggers(names: list[str]) -> None:
    """Each asked-for logger known and its package installed, before any work."""
    for name in names:
        if name not in LOGGERS:
            raise MedsslError(f"--logger {name}: choose from {', '.join(LOGGERS)}.")
        package = LOGGERS[name]
        if package and importlib.util.find_spec(package) is None:
            raise MedsslError(f"--logger {name} needs the {package} package, which is not "
                              f"installed. Fix: pip install {package}, or leave {name} out.")


def check_hardware(cfg) -> None:
    """`--precision`, `--accelerator` and `--devices` against Lightning's values and this
    machine; the loggers asked for."""
    check_loggers(getattr(cfg, "loggers", []))
    if cfg.precision is not None and str(cfg.precision) not in PRECISIONS:
        raise MedsslError(f"--precision {cfg.precision} is not a precision Lightning knows. Fix: "
                          f"one of {', '.join(PRECISIONS[:6])} (default: bf16-mixed on a GPU that "
                          "supports it, else 32-true).")
    if cfg.accelerator not in ACCELERATORS:
        raise MedsslError(f"--accelerator {cfg.accelerator} is not one of "
                          f"{', '.join(ACCELERATORS)}. Fix: gpu for CUDA GPUs, cpu, or auto.")
    import torch

    if cfg.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise MedsslError(f"--accelerator {cfg.accelerator}: no CUDA GPU is visible to this torch "
                          f"({torch.__version__}, {build}). Fix: run on a machine with a GPU "
                          "and its driver, or pass --accelerator cpu (or auto).")
    if cfg.accelerator == "mps" and not torch.backends.mps.is_available():
        raise MedsslError("--accelerator mps: Apple's Metal GPU is not available here. "
                          "Fix: pass --accelerator cpu (or auto).")
    gpus = torch.cuda.device_count() if cfg.accelerator in ("gpu", "cuda") else None
    if gpus is not None and isinstance(cfg.devices, int) and cfg.devices > gpus:
        raise MedsslError(f"--devices {cfg.devices}: this machine has {gpus} GPU(s). "
                          f"Fix: --devices {gpus} (or auto).")
    if gpus is not None and isinstance(cfg.devices, str) and "," in cfg.devices:
        absent = [d for d in cfg.devices.split(",") if int(d) >= gpus]
        if absent:
            raise MedsslError(f"--devices {cfg.devices}: there is no GPU {absent[0]} on this "
                              f"machine (it has {gpus}, numbered from 0).")


def check_places(out, cache: bool, data=None) -> None:
    """The run folder and, when the image cache is used, the cache can be written; and with
    `data` (the run's DataOptions), the run folder is not inside the dataset's folder, where its
    files would be read as images or classes."""
    from medssl.data.files import cache_dir  # lazy: the data package loads pandas, PIL and numpy

    writable_folder(out, "--out")
    if data is not None:
        check_outside_data(out, data)
    if cache:
        writable_folder(cache_dir(), "the image cache $MEDSSL_CACHE_DIR",
                        "set $MEDSSL_CACHE_DIR to a folder you can write to, or pass --no-cache "
                        "to decode the original images on every read instead")


def check_outside_data(out, data) -> None:
    """Refuse an --out inside the dataset's folder (a dataset that cannot be found is said by
    the run itself, later)."""
    from pathlib import Path

    from medssl.data.registry import get_adapter  # lazy: the data package loads pandas, PIL

    try:
        root = get_adapter(data.dataset).find_root(data.data_root)
    except MedsslError:
        return
    where = Path(out).expanduser().resolve()
    if where == root or root in where.parents:
        raise MedsslError(f"--out {out} lies inside the dataset's folder {root}: what a run writes "
                          "there would be read as images and classes. Fix: --out a folder outside "
                          "it.")


def check_run(cfg) -> None:
    """Everything above, for a resolved PretrainConfig or FinetuneConfig (whose numbers
    fill_training_defaults checked against their ranges)."""
    check_hardware(cfg)
    check_places(cfg.out, cfg.cache, cfg)


def imagenet_weights_for(init: str, weights, what: str):
    """The --imagenet-weights a run uses: the given ones (or the default) for an ImageNet init;
    None for a random one, with a warning when some were given, since they would be ignored."""
    from medssl.models.backbones import DEFAULT_IMAGENET  # lazy: the CLI imports checks at start, torch-free

    if init == "imagenet":
        return weights or DEFAULT_IMAGENET
    if weights:
        log.warning("--imagenet-weights %s is ignored: %s starts from random weights", weights, what)
    return None
