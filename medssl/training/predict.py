"""`medssl predict`: a finished finetuning run applied to new pictures, with the run's own
preprocessing (the reader and its windowing, the image size and centre crop, the channels, the
normalisation of its prior), its selected checkpoint, and one row per picture: `path`,
`prob_<class>` for each class (as test_predictions.csv), and the predicted class (the most
probable). `tta` averages the flips the run's finetuning trained with.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path

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
from medssl.presets import preset_for
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
    bad = [(p, problem) for p in rel if (problem := image_problem(root / p, window))]
    if bad and not skip:
        listed = "\n".join(f"  {p}: {problem}" for p, problem in bad[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise MedsslError(f"{len(bad)} picture(s) cannot be read:\n{listed}{more}\nFix: "
                          "replace them, or pass --skip-bad-images to predict the others.")
    for p, problem in bad:
        log.warning("skipped %s: %s", p, problem)
    return [p for p in rel if p not in dict(bad)]


def run_config(record) -> FinetuneConfig:
    """The run's configuration, as metrics.json records it (what the preprocessing reads)."""
    known = {f.name for f in fields(FinetuneConfig)}
    return FinetuneConfig(**{k: v for k, v in record.config.items() if k in known})


def predict(opts: PredictOptions) -> Path:
    """Write the predictions of run `opts.run` for the pictures asked for; return the file."""
    run = Path(opts.run)
    record = teacher_record(run, "Run")
    net, _ = run_classifier(run, record, "Run")
    cfg = run_config(record)
    preset = preset_for(cfg.dataset)
    if opts.tta and not preset.flips:
        raise MedsslError(f"--tta averages the flips the run trained with, and {cfg.dataset}'s "
                          "finetuning uses none (its anatomy has a side). Fix: drop --tta.")
    root, rel = pictures(opts)
    rel = readable(root, rel, cfg.window, opts.skip_bad_images)
    samples = pd.DataFrame({"path": rel, "label": record.classes[0], "group": rel,
                            "split": "test"})  # a placeholder label: the loader wants one
    table = SampleTable(record.dataset, root, list(record.classes), samples, window=cfg.window)
    cfg.batch_size, cfg.num_workers, cfg.seed = opts.batch_size, opts.num_workers, 0
    loader = make_loader(table, samples, eval_crop(cfg.image_size), cfg, cache=None,
                         persistent=False)
    device = device_of(opts)
    net = net.to(device)
    normalize = Normalize(*run_stats(record.prior.get("init", "random"), preset,
                                     cfg.in_channels)).to(device)
    probs = []
    with torch.no_grad():
        for x, _ in tqdm(loader, desc="predict", disable=not opts.progress, unit="batch"):
            x = normalize(x.to(device))
            views = [x, *([x.flip(-1)] if "h" in preset.flips and opts.tta else []),
                     *([x.flip(-2)] if "v" in preset.flips and opts.tta else [])]
            probs.append(torch.stack([net(v).float().softmax(1) for v in views]).mean(0).cpu())
    probs = torch.cat(probs)
    frame = pd.DataFrame(probs.numpy(), columns=[f"prob_{c}" for c in record.classes])
    frame.insert(0, "path", rel)
    frame["predicted"] = [record.classes[i] for i in probs.argmax(1).tolist()]
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: frame.to_csv(p, index=False))
    log.info("%d picture(s) predicted by %s (%s): %s", len(frame), record.model, run, out)
    return out
