"""What a finished finetuning writes to its run folder: the metrics of the selected checkpoint's
predictions, the prediction CSVs, metrics.json and, last, the completion marker; for a cohort,
each member's folder and then the ensemble's."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from medssl import __version__
from medssl.atomic import atomic_write
from medssl.names import SELECT_METRICS, dml_name, member_folder
from medssl.presets import preset_for
from medssl.records import RunRecord, write_run_record
from medssl.runs import (FINETUNE_OUTPUTS, LABELLED, SELECTION_VAL, SPLIT, best_checkpoint,
                         curves_file, mark_finished, predictions_file)
from medssl.training.distributed import gpu_hours, scaled_lr, scaling_rule
from medssl.training.metrics import classification_metrics, metric_options
from medssl.training.run_logs import epoch_curves, log_hparams

log = logging.getLogger("medssl")


def write_cohort(run: RunResults, module, out: Path, members: list[str], sources: dict,
                  probs: dict, last_test, chosen: list[tuple[int, float]],
                  objective_record: dict) -> None:
    """Each member's run folder (its selected weights, curves, predictions and metrics), then
    the ensemble's (the mean of the members' selected probabilities) in the cohort's folder,
    whose completion marker comes last of all."""
    curves = pd.read_csv(curves_file(out))  # written by rank 0, this process
    member_runs = {}
    for k, member in enumerate(members):
        folder = member_folder(out, member)
        best_checkpoint(folder).parent.mkdir(parents=True, exist_ok=True)
        for name in (SPLIT, LABELLED, SELECTION_VAL):
            if (out / name).is_file():
                shutil.copy(out / name, folder / name)
        # The member's selected weights as a single run's best.ckpt: loadable as a teacher.
        state = module.member_state(k, module.state_dict())
        atomic_write(best_checkpoint(folder), lambda path: torch.save(
            {"state_dict": {key: v.cpu() for key, v in state.items()},
             "epoch": chosen[k][0] - 1}, path))
        # Its curves: the cohort's log columns under its name, as a single run logs them.
        prefix = f"{member}/"
        own = curves[[c for c in curves if c in ("epoch", "step") or c.startswith(prefix)]]
        own = own.rename(columns=lambda c: c[len(prefix):] if c.startswith(prefix) else c)
        curves_file(folder).parent.mkdir(exist_ok=True)
        atomic_write(curves_file(folder), lambda path: own.to_csv(path, index=False))
        record = {**objective_record, "cohort_run": str(out)}
        run.write(folder, dml_name(members, member), {s: v[k] for s, v in probs.items()},
                  last_test[k], run.selection(*chosen[k]), sources[member], record,
                  epoch_curves(folder), lr=module.members[k].hparams.lr, base_models=[member],
                  log_prefix=f"{member}/")
        member_runs[member] = str(folder)
    mean = {s: v.mean(dim=0) for s, v in probs.items()}
    selection = {**run.selection(None, None), "members": {m: chosen[k][0] for k, m
                                                          in enumerate(members)}}
    ssl_seeds = [s["ssl_seed"] for s in sources.values() if s.get("ssl_seed") is not None]
    ensemble_source = {"model": dml_name(members), "members": sources,
                       # what the report says its sd includes: its SSL members' pretraining
                       "ssl_seed": ssl_seeds[0] if ssl_seeds else None,
                       "ssl_images_seen": sum(s.get("ssl_images_seen") or 0
                                              for s in sources.values())}
    lrs = {m: module.members[k].hparams.lr for k, m in enumerate(members)}
    run.write(out, dml_name(members), mean, last_test.mean(dim=0), selection, ensemble_source,
              {**objective_record, "member_runs": member_runs, "member_lrs": lrs},
              epoch_curves(out), lr=lrs[members[0]] if len(set(lrs.values())) == 1 else None,
              base_models=members)


class RunResults:
    """What every run folder of one training writes: metrics of the predictions, the prediction
    CSVs, metrics.json and, last, the completion marker."""

    def __init__(self, cfg, data, loaders, trainer, started: float):
        """`data`: finetune.Splits; `loaders`: finetune.Loaders (their `predict` ones are read)."""
        self.cfg, self.table, self.preset = cfg, data.table, preset_for(cfg.dataset)
        self.loaders, self.train_loader = loaders.predict, loaders.train
        self.labelled, self.val_rows, self.data_info = data.labelled, data.val_rows, data.data_info
        self.trainer, self.started = trainer, started

    def selection(self, epoch: int | None, value: float | None) -> dict:
        cfg = self.cfg
        return {"metric": f"val/{cfg.select}", "mode": SELECT_METRICS[cfg.select],
                "epoch": epoch, "value": value, "val_images": len(self.val_rows),
                "val": "full" if cfg.full_val or cfg.label_fraction >= 1 else
                       f"fraction {cfg.label_fraction:g} of val (selection_val.csv)"}

    def write(self, out: Path, name: str, probs: dict, last_test, selection: dict, source: dict,
              objective: dict, curves, lr: float | None, base_models: list[str] | None,
              log_prefix: str = "") -> None:
        cfg, table, trainer = self.cfg, self.table, self.trainer
        truth = {split: torch.tensor(self.loaders[split].dataset.targets) for split in probs}
        task = metric_options(self.preset, table.classes, probs["val"], truth["val"])
        results = {split: classification_metrics(probs[split], truth[split], table.classes,
                                                 **task) for split in probs}
        results["test_last"] = classification_metrics(last_test, truth["test"], table.classes,
                                                      **task)
        for split in ("val", "test"):
            write_predictions(predictions_file(out, split), self.loaders[split].dataset,
                              table, probs[split])
        for logger in trainer.loggers:
            logger.log_metrics({f"selected/{log_prefix}test_{k}": results["test"][k]
                                for k in ("acc", "balanced_acc", "macro_f1", "auroc", "loss")},
                               step=trainer.global_step)
            logger.save()
        wall = time.time() - self.started
        metrics = {
            "dataset": cfg.dataset, "model": name, "protocol": cfg.protocol, "seed": cfg.seed,
            "label_fraction": cfg.label_fraction, "labelled_train_images": len(self.labelled),
            "selection": selection,
            "epochs_trained": trainer.current_epoch, "classes": table.classes,
            "world_size": trainer.world_size, "lr": lr,
            "lr_used": None if lr is None else scaled_lr(lr, trainer.world_size,
                                                         cfg.lr_scaling),
            "lr_scaling": scaling_rule(cfg.lr_scaling, "adam"), "lr_schedule": cfg.lr_schedule,
            "train": results["train"], "val": results["val"], "test": results["test"],
            "test_last": results["test_last"], "objective": objective,
            # What this model is compared with as its own base: a distilled student with its
            # prior trained alone, a cohort member likewise, a cohort's ensemble with the
            # ensemble of its members trained alone (report.tables).
            **({"base_models": base_models} if base_models else {}),
            **((cfg.assigned and cfg.assigned.lr_choice)
               or {"lr_selected": None, "lr_grid": None}),
            "overfitting": overfitting(curves, selection["epoch"]),
            # No batch is dropped: every epoch sees every labelled image once (or, cut short by
            # --max-steps, its steps' batches).
            "compute": compute_record(source, trainer, wall_time_s=wall,
                                      images_seen=trainer.current_epoch * len(self.labelled)
                                      if cfg.max_steps < 0 else
                                      trainer.global_step * self.train_loader.batch_size),
            "prior": source, "split_file": SPLIT, "data": self.data_info,
            "medssl_version": __version__, "wall_time_s": round(wall, 1),
            "config": {**asdict(cfg), **({"model": name} if cfg.mutual else {})},
        }
        record = RunRecord(**metrics)
        write_run_record(out, record)
        log_hparams(out, record, cfg.loggers)
        mark_finished(out, FINETUNE_OUTPUTS)
        log.info("%s %s seed %d: selected epoch %s, test acc %.3f, balanced acc %.3f",
                 cfg.dataset, name, cfg.seed, selection["epoch"] or "per member",
                 results["test"]["acc"], results["test"]["balanced_acc"])


def overfitting(curves, selected_epoch: int | None) -> dict:
    """The generalisation gap (train_eval minus val, accuracy and loss) at the selected and at
    the last epoch, and how far val loss rose after its minimum. Epochs count from 1. A cohort's
    ensemble has no one selected epoch (each member has its own): its gaps at the last only."""
    needed = ["train_eval/acc", "train_eval/loss", "val/acc", "val/loss"]
    if curves.empty or any(c not in curves for c in needed):
        return {}
    last = int(curves.index.max()) + 1

    def gap(epoch: int | None, metric: str) -> float | None:
        if epoch is None:
            return None
        row = curves.loc[epoch - 1]
        return float(row[f"train_eval/{metric}"] - row[f"val/{metric}"])

    val_loss = curves["val/loss"].dropna()
    return {"selected_epoch": selected_epoch, "last_epoch": last,
            "acc_gap_selected": gap(selected_epoch, "acc"),
            "loss_gap_selected": gap(selected_epoch, "loss"),
            "acc_gap_last": gap(last, "acc"), "loss_gap_last": gap(last, "loss"),
            "val_loss_min": float(val_loss.min()), "val_loss_last": float(val_loss.iloc[-1]),
            "val_loss_rise": float(val_loss.iloc[-1] - val_loss.min())}


def network_parameters(module) -> int:
    """The parameters of the networks a run trains (backbone and head; every member of a
    cohort), a distillation's teachers (inside its objective) left out."""
    return sum(p.numel() for name, m in module.named_modules()
               if hasattr(m, "backbone") and hasattr(m, "head") and "objective" not in name
               for p in (*m.backbone.parameters(), *m.head.parameters()))


def compute_record(source: dict, trainer, wall_time_s: float, images_seen: int) -> dict:
    """What the model cost: images seen in its pretraining (from backbone.json) and finetuning,
    and GPU-hours where GPUs were used (None on a CPU: not measured)."""
    module = trainer.lightning_module
    return {"finetune_images_seen": images_seen,
            "pretrain_images_seen": source.get("ssl_images_seen", 0),
            "finetune_gpu_hours": gpu_hours(trainer, wall_time_s),
            "pretrain_gpu_hours": source.get("ssl_gpu_hours"),
            # cost beside gain: the network's size and the run's pace (the report's columns)
            "parameters": network_parameters(module) if module else None,
            "images_per_s": round(images_seen / wall_time_s, 1) if wall_time_s > 0 else None,
            # On the CPU a run's numbers follow its thread count (the order of a float sum):
            # `compare --jobs N` gives each cell 1/N of them (experiments.launch.cpu_share).
            "cpu_threads": torch.get_num_threads()}


def write_predictions(path: Path, dataset, table, probs) -> None:
    frame = pd.DataFrame(probs.numpy(), columns=[f"prob_{c}" for c in table.classes])
    frame.insert(0, "label", [table.classes[t] for t in dataset.targets])
    frame.insert(0, "path", dataset.rel_paths)
    atomic_write(path, lambda p: frame.to_csv(p, index=False))

