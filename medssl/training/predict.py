"""A finished run applied to pictures, with the run's own preprocessing (the reader and its
windowing, the image size and centre crop, the channels, the normalisation of its prior):

- `medssl predict RUN`: its selected checkpoint, one row per picture: `path`, `prob_<class>`
  for each class (as test_predictions.csv), and the predicted class (the most probable); `tta`
  averages the flips the run's finetuning trained with;
- `medssl embed RUN_OR_BACKBONE`: each picture's backbone features, with its path.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medssl.atomic import atomic_write
from medssl.data.files import images_in, relpath
from medssl.data.images import image_problem
from medssl.data.registry import SampleTable
from medssl.data.tables import read_table
from medssl.data.transforms import Normalize, eval_crop
from medssl.errors import MedsslError
from medssl.models.backbones import empty_backbone, load_strict
from medssl.models.checkpoints import read_state_dict
from medssl.presets import preset_for
from medssl.records import read_backbone_dict
from medssl.runs import BACKBONE
from medssl.training.finetune import FinetuneConfig
from medssl.training.frozen import device_of
from medssl.training.loaders import make_loader, run_stats
from medssl.training.teachers import run_classifier, teacher_record

log = logging.getLogger("medssl")


@dataclass(kw_only=True)
class PredictOptions:
    run: str  # a finished finetuning run's folder
    data_root: str | None = None  # every picture under this folder
    csv: str | None = None  # or the `path` column of a CSV (relative to its folder)
    files: list[str] | None = None  # or these files
    out: str = "predictions.csv"
    tta: bool = False
    skip_bad_images: bool = False
    batch_size: int = 64
    num_workers: int = 0
    accelerator: str = "auto"
    progress: bool = True


def pictures(opts: PredictOptions) -> tuple[Path, list[str]]:
    """(root, paths relative to it) of the pictures asked for."""
    given = [x for x in (opts.data_root, opts.csv, opts.files) if x]
    if len(given) != 1:
        raise MedsslError("Which pictures? Fix: pass one of --data-root DIR, --csv FILE, or "
                          "files after the run.")
    if opts.data_root:
        root = Path(opts.data_root)
        if not root.is_dir():
            raise MedsslError(f"--data-root {root} is not a folder. Fix: the folder of the "
                              "pictures to predict.")
        rel = [relpath(p, root) for p in images_in(root)]
    elif opts.csv:
        table = read_table(Path(opts.csv), ["path"], "--csv")
        root = Path(opts.csv).parent
        rel = [str(p) for p in table["path"]]
    else:
        paths = [Path(f).resolve() for f in opts.files]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise MedsslError(f"{missing[0]} does not exist ({len(missing)} of the files given "
                              "do not). Fix: the paths of the pictures to predict.")
        root = paths[0].parent if len(paths) == 1 else Path(os.path.commonpath(paths))
        rel = [relpath(p, root) for p in paths]
    if not rel:
        raise MedsslError(f"No pictures found in {opts.data_root or opts.csv}. Fix: a folder or "
                          "CSV holding images (png, jpg, tif, DICOM, ...).")
    return root, rel


def readable(root: Path, rel: list[str], window: str, skip: bool) -> list[str]:
    """The pictures the run's reader can read; the others listed, fatal unless `skip`."""
    bad = dict((p, problem) for p in rel if (problem := image_problem(root / p, window)))
    if bad and not skip:
        listed = "\n".join(f"  {p}: {problem}" for p, problem in list(bad.items())[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise MedsslError(f"{len(bad)} picture(s) cannot be read:\n{listed}{more}\nFix: "
                          "replace them, or pass --skip-bad-images to predict the others.")
    for p, problem in bad.items():
        log.warning("skipped %s: %s", p, problem)
    return [p for p in rel if p not in bad]


def run_config(record) -> FinetuneConfig:
    """The run's configuration, as metrics.json records it (what the preprocessing reads)."""
    known = {f.name for f in fields(FinetuneConfig)}
    return FinetuneConfig(**{k: v for k, v in record.config.items() if k in known})


@dataclass
class Source:
    """What pictures are put through: a finished run's network, or a backbone file's; and the
    preprocessing it was trained with."""
    name: str
    model: str | None  # the run's model (M3, F-dinov2-vitb14, ...); None for a backbone file
    backbone: torch.nn.Module
    head: torch.nn.Module | None  # a run's; None for a backbone file
    classes: list[str] | None
    cfg: FinetuneConfig  # dataset, image size, channels, window
    init: str  # the prior the network started from (its normalisation)


def open_source(path: str | Path) -> Source:
    """A finished finetuning run's folder, or a backbone.pt (or its pretraining folder) written
    by `medssl pretrain`."""
    path = Path(path)
    file = path / BACKBONE if path.is_dir() and (path / BACKBONE).is_file() else path
    if file.suffix != ".pt" or not file.is_file():
        record = teacher_record(path, "Run")
        net, _ = run_classifier(path, record, "Run")
        return Source(str(path), record.model, net.backbone, net.head, list(record.classes),
                      run_config(record), record.prior.get("init", "random"))
    meta = read_backbone_dict(file)
    missing = [k for k in ("arch", "image_size") if not meta.get(k)]
    if missing:
        raise MedsslError(f"{file}: its backbone.json names no {' and no '.join(missing)}. Fix: "
                          "a backbone.pt written by `medssl pretrain`, with its JSON.")
    backbone = empty_backbone(meta["arch"], meta.get("in_channels", 3), meta.get("image_size"))
    load_strict(backbone, read_state_dict(file, str(file)), str(file))
    config = meta.get("config", {})
    cfg = FinetuneConfig(dataset=meta.get("dataset", "folder"), image_size=meta["image_size"],
                         in_channels=meta.get("in_channels", 3),
                         window=config.get("window", "auto"))
    return Source(str(file), None, backbone.eval(), None, None, cfg, meta.get("init", "random"))


def raw_batches(source: Source, opts: PredictOptions, rel: list[str], root: Path):
    """The pictures, in order, as the run's reader and centre crop make them: uint8 batches
    (B, channels, size, size) on the CPU, before normalisation (what a figure shows)."""
    samples = pd.DataFrame({"path": rel, "label": "?", "group": rel, "split": "test"})
    table = SampleTable(source.cfg.dataset, root, ["?"], samples, window=source.cfg.window)
    cfg = replace(source.cfg, batch_size=opts.batch_size, num_workers=opts.num_workers, seed=0)
    loader = make_loader(table, samples, eval_crop(cfg.image_size), cfg, cache=None,
                         persistent=False)
    for x, _ in tqdm(loader, desc="pictures", disable=not opts.progress, unit="batch"):
        yield x


def normalizer(source: Source, opts: PredictOptions) -> Normalize:
    """uint8 batch -> the network's input: the normalisation of the run's prior, on the device."""
    cfg = source.cfg
    return Normalize(*run_stats(source.init, preset_for(cfg.dataset),
                                cfg.in_channels)).to(device_of(opts))


def batches(source: Source, opts: PredictOptions, rel: list[str], root: Path):
    """The pictures, in order, as normalised batches on the device (the network's input)."""
    device = device_of(opts)
    normalize = normalizer(source, opts)
    for x in raw_batches(source, opts, rel, root):
        yield normalize(x.to(device))


def write_table(frame: pd.DataFrame, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: frame.to_csv(p, index=False))
    return out


def predict(opts: PredictOptions) -> Path:
    """Write the predictions of run `opts.run` for the pictures asked for; return the file."""
    source = open_source(opts.run)
    if source.head is None:
        raise MedsslError(f"{opts.run} is a backbone: it has no classifier head to predict with. "
                          "Fix: a finished finetuning run's folder (`medssl embed` takes "
                          "backbones).")
    flips = preset_for(source.cfg.dataset).flips
    if opts.tta and not flips:
        raise MedsslError(f"--tta averages the flips the run trained with, and "
                          f"{source.cfg.dataset}'s finetuning uses none (its anatomy has a "
                          "side). Fix: drop --tta.")
    root, rel = pictures(opts)
    rel = readable(root, rel, source.cfg.window, opts.skip_bad_images)
    device = device_of(opts)
    net = torch.nn.Sequential(source.backbone, source.head).to(device)
    probs = []
    with torch.no_grad():
        for x in batches(source, opts, rel, root):
            views = [x, *([x.flip(-1)] if "h" in flips and opts.tta else []),
                     *([x.flip(-2)] if "v" in flips and opts.tta else [])]
            probs.append(torch.stack([net(v).float().softmax(1) for v in views]).mean(0).cpu())
    probs = torch.cat(probs)
    frame = pd.DataFrame(probs.numpy(), columns=[f"prob_{c}" for c in source.classes])
    frame.insert(0, "path", rel)
    frame["predicted"] = [source.classes[i] for i in probs.argmax(1).tolist()]
    out = write_table(frame, Path(opts.out))
    log.info("%d picture(s) predicted by %s: %s", len(frame), source.name, out)
    return out


def embed(opts: PredictOptions) -> Path:
    """Write every picture's backbone features (a run's or a backbone file's), with its path:
    .npz (arrays `paths`, `features`) or .csv/.parquet (a `path` column, then one per feature)."""
    out = Path(opts.out)
    if out.suffix not in (".npz", ".csv", ".parquet"):
        raise MedsslError(f"--out {out}: write features as .npz, .csv or .parquet.")
    if out.suffix == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise MedsslError(f"--out {out}: parquet needs pyarrow, which is not installed. Fix: "
                          "pip install pyarrow, or --out features.npz.")
    source = open_source(opts.run)
    root, rel = pictures(opts)
    rel = readable(root, rel, source.cfg.window, opts.skip_bad_images)
    backbone = source.backbone.to(device_of(opts))
    with torch.no_grad():
        feats = torch.cat([backbone(x).float().cpu() for x in batches(source, opts, rel, root)])
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npz":
        def save(tmp):
            with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a name
                np.savez(f, paths=np.array(rel), features=feats.numpy())
        atomic_write(out, save)
    else:
        frame = pd.DataFrame(feats.numpy(), columns=[f"f{i}" for i in range(feats.shape[1])])
        frame.insert(0, "path", rel)
        atomic_write(out, lambda p: frame.to_parquet(p, index=False) if out.suffix == ".parquet"
                     else frame.to_csv(p, index=False))
    log.info("%d picture(s) embedded by %s (%d features each): %s", len(rel), source.name,
             feats.shape[1], out)
    return out
