"""The frozen protocols: a prior's backbone as it is (eval mode, so BatchNorm keeps its
statistics; no gradient), its features of the labelled train, val and test images computed once
and used by both:

- `linear`: a linear head on the features, trained at each rate of a small grid of its own
  (LINEAR_LRS, full-batch Adam); the rate and the step are chosen on val;
- `knn`: cosine kNN, each neighbour's vote weighted by exp(similarity / 0.1), k chosen on val.

Each protocol writes a run folder as a finetuning does (split.csv, metrics.json with its
`protocol`, the val and test predictions, the completion marker), so the report pairs and
compares its rows like any other, within their protocol. Selection never looks at test.
"""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from medssl import __version__
from medssl.data.transforms import Normalize, eval_crop
from medssl.names import SELECT_METRICS, prior_of
from medssl.presets import preset_for
from medssl.records import RunRecord, write_run_record
from medssl.runs import (FINETUNE_OUTPUTS, LABELLED, SELECTION_VAL, SPLIT, cleaned_up_on_failure,
                         mark_finished, predictions_file)
from medssl.training.distributed import barrier, is_rank_zero
from medssl.training.finetune import (FinetuneConfig, identity_of, load_priors, prepare_splits,
                                      resolve)
from medssl.training.finetune_results import write_predictions
from medssl.training.harness import RunStart, keep_identity, open_run
from medssl.training.loaders import make_loader, open_cache, run_stats
from medssl.training.metrics import classification_metrics, metric_options
from medssl.training.run_logs import log_hparams

log = logging.getLogger("medssl")

FROZEN = ("linear", "knn")
LINEAR_LRS = (1e-3, 1e-2, 1e-1)  # the head's own grid (Adam on fixed features)
LINEAR_STEPS = 300  # full-batch steps; val is looked at every LINEAR_EVERY
LINEAR_EVERY = 10
KNN_KS = (1, 3, 5, 10, 20, 50)  # those up to the number of labelled train images
KNN_TEMPERATURE = 0.1  # as the pretraining's kNN monitor (training.knn)


@dataclass
class Features:
    """One split's frozen features, labels and the dataset they came from (its paths)."""
    x: torch.Tensor
    y: torch.Tensor
    dataset: object


def device_of(cfg) -> torch.device:
    if cfg.accelerator == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


@torch.no_grad()
def frozen_features(cfg: FinetuneConfig, backbone, loaders: dict) -> dict[str, Features]:
    """Every split's features through the backbone in eval mode, at the run's normalisation."""
    device = device_of(cfg)
    backbone = backbone.to(device).eval()
    normalize = Normalize(*run_stats(prior_of(cfg.model).init, preset_for(cfg.dataset),
                                     cfg.in_channels)).to(device)
    out = {}
    for split, loader in loaders.items():
        feats, labels = [], []
        for x, y in loader:
            feats.append(backbone(normalize(x.to(device))).float().cpu())
            labels.append(torch.as_tensor(y))
        out[split] = Features(torch.cat(feats), torch.cat(labels), loader.dataset)
    return out


def selection_value(probs, labels, classes, select: str) -> float:
    """The val value a frozen protocol is chosen by: the run's --select metric."""
    value = classification_metrics(probs, labels, classes)[select]
    return value if SELECT_METRICS[select] == "max" else -value


def linear_probe(cfg: FinetuneConfig, feats: dict, classes: list[str]) -> tuple[dict, dict]:
    """The head with the best val value over the grid's rates and the steps looked at: its
    probabilities per split, and the record of the choice."""
    train, val = feats["train"], feats["val"]
    # Standardised by the labelled train images' statistics alone (a frozen feature's scale
    # differs by orders of magnitude between priors; one grid of rates then suits them all).
    mean, std = train.x.mean(0), train.x.std(0).clamp_min(1e-6)
    scaled = {s: (f.x - mean) / std for s, f in feats.items()}
    best = None
    for lr in LINEAR_LRS:
        torch.manual_seed(cfg.seed)
        head = torch.nn.Linear(train.x.shape[1], len(classes))
        opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=cfg.weight_decay)
        for step in range(1, LINEAR_STEPS + 1):
            opt.zero_grad()
            F.cross_entropy(head(scaled["train"]), train.y).backward()
            opt.step()
            if step % LINEAR_EVERY == 0:
                with torch.no_grad():
                    value = selection_value(head(scaled["val"]).softmax(1), val.y, classes,
                                            cfg.select)
                if best is None or value > best[0]:
                    with torch.no_grad():
                        probs = {s: head(x).softmax(1) for s, x in scaled.items()}
                    best = (value, lr, step, probs)
    value, lr, step, probs = best
    return probs, {"lr": lr, "step": step, "lrs": list(LINEAR_LRS), "steps": LINEAR_STEPS,
                   "value": abs(value)}


def knn_probs(train: Features, x: torch.Tensor, k: int, n_classes: int,
              itself: bool = False) -> torch.Tensor:
    """Class probabilities from the k nearest train images by cosine similarity, each vote
    weighted by exp(sim / T). (lightly's knn_predict gives the ranking only; the comparisons
    pair probabilities, so the weighted votes are normalised here.) `itself`: `x` are the train
    images, each left out of its own neighbours (else train accuracy would be near 100%)."""
    sims = F.normalize(x, dim=1) @ F.normalize(train.x, dim=1).T
    if itself:
        sims.fill_diagonal_(-float("inf"))
        k = min(k, len(train.x) - 1)
    top, idx = sims.topk(k, dim=1)
    votes = torch.zeros(len(x), n_classes).scatter_add_(1, train.y[idx],
                                                         (top / KNN_TEMPERATURE).exp())
    probs = votes / votes.sum(1, keepdim=True)
    return (probs + 1e-4) / (1 + n_classes * 1e-4)  # no zero: the loss stays finite


def knn_protocol(cfg: FinetuneConfig, feats: dict, classes: list[str]) -> tuple[dict, dict]:
    """The k with the best val value; its probabilities per split and the record."""
    train = feats["train"]
    ks = [k for k in KNN_KS if k <= len(train.x)] or [len(train.x)]
    scored = [(selection_value(knn_probs(train, feats["val"].x, k, len(classes)), feats["val"].y,
                               classes, cfg.select), k) for k in ks]
    value, k = max(scored, key=lambda t: (t[0], -t[1]))  # a tie: the smaller k
    probs = {s: knn_probs(train, f.x, k, len(classes), itself=s == "train")
             for s, f in feats.items()}
    return probs, {"k": k, "ks": ks, "temperature": KNN_TEMPERATURE, "value": abs(value)}


PROTOCOL_RUNNERS = {"linear": linear_probe, "knn": knn_protocol}


def run_frozen(cfgs: list[FinetuneConfig]) -> list[Path]:
    """The frozen protocols of one model at one seed and label fraction (`cfgs`: one config per
    protocol, alike but for it): the prior loaded and its features computed once, then each
    protocol's run written."""
    cfgs = [resolve(replace(c)) for c in cfgs]
    with ExitStack() as stack:  # a run cut off leaves no folder that looks finished
        for c in cfgs:
            stack.enter_context(cleaned_up_on_failure(Path(c.out), owner=is_rank_zero()))
        return _frozen(cfgs)


def _frozen(cfgs: list[FinetuneConfig]) -> list[Path]:
    first = cfgs[0]
    runs = [open_run(c, FINETUNE_OUTPUTS) for c in cfgs]
    for run, c in zip(runs, cfgs):
        keep_identity(run, identity_of(c))
    pl.seed_everything(first.seed, workers=True, verbose=False)  # a random init's draw
    backbones, sources = load_priors(first, [first.model])
    data = prepare_splits(first, runs[0], sources)
    table, plain = data.table, eval_crop(first.image_size)
    cache = open_cache(table, first)
    loaders = {split: make_loader(table, rows, plain, first, cache)
               for split, rows in (("train", data.labelled), ("val", data.val_rows),
                                   ("test", table.samples[table.samples["split"] == "test"]))}
    started = time.time()
    feats = frozen_features(first, backbones[first.model], loaders)
    features_s = time.time() - started
    parameters = sum(p.numel() for p in backbones[first.model].parameters())
    for run, c in zip(runs, cfgs):
        if run is not runs[0] and run.writer:  # the split files, as the first run wrote them
            for name in (SPLIT, LABELLED, SELECTION_VAL):
                if (runs[0].out / name).is_file():
                    shutil.copyfile(runs[0].out / name, run.out / name)
        probs, choice = PROTOCOL_RUNNERS[c.protocol](c, feats, table.classes)
        if is_rank_zero():
            write_frozen(c, run, data, feats, probs, choice, sources[c.model],
                         {"parameters": parameters, "features_s": round(features_s, 2),
                          "images_per_s": round(sum(len(f.x) for f in feats.values())
                                                / max(features_s, 1e-9), 1)})
    barrier()
    return [r.out for r in runs]


def write_frozen(cfg: FinetuneConfig, run: RunStart, data, feats: dict, probs: dict,
                 choice: dict, source: dict, cost: dict) -> None:
    """A frozen protocol's run folder: predictions, metrics.json, then the marker."""
    classes, preset = data.table.classes, preset_for(cfg.dataset)
    task = metric_options(preset, classes, probs["val"], feats["val"].y)
    results = {s: classification_metrics(probs[s], feats[s].y, classes, **task) for s in probs}
    for split in ("val", "test"):
        write_predictions(predictions_file(run.out, split), feats[split].dataset, data.table,
                          probs[split])
    wall = time.time() - run.started
    record = RunRecord(
        dataset=cfg.dataset, model=cfg.model, protocol=cfg.protocol, seed=cfg.seed,
        label_fraction=cfg.label_fraction, labelled_train_images=len(data.labelled),
        selection={"metric": f"val/{cfg.select}", "mode": SELECT_METRICS[cfg.select],
                   "epoch": None, "val_images": len(data.val_rows), **choice},
        epochs_trained=0, classes=classes, world_size=1, lr=choice.get("lr"),
        train=results["train"], val=results["val"], test=results["test"],
        test_last=results["test"], objective={"name": cfg.protocol},
        compute={"finetune_images_seen": sum(len(f.x) for f in feats.values()),
                 "pretrain_images_seen": source.get("ssl_images_seen", 0), **cost},
        prior=source, split_file=SPLIT, data=data.data_info, medssl_version=__version__,
        wall_time_s=round(wall, 1), config=asdict(cfg))
    write_run_record(run.out, record)
    log_hparams(run.out, record, cfg.loggers)
    mark_finished(run.out, FINETUNE_OUTPUTS)
    log.info("%s %s (%s) seed %d: %s, test acc %.3f, balanced acc %.3f", cfg.dataset, cfg.model,
             cfg.protocol, cfg.seed, ", ".join(f"{k} {v}" for k, v in choice.items()
                                                if k in ("k", "lr", "step")),
             results["test"]["acc"], results["test"]["balanced_acc"])
