"""A run's loggers: TensorBoard for curves, and `logs/metrics.csv` that survives a resume.

Lightning's CSVLogger deletes `metrics.csv` when it starts and writes rows only every 100 steps,
so a killed and resumed run would lose every epoch before the kill. Here each row is written at
once, end-of-epoch values before the epoch's checkpoint (`log_now`), and a resumed run keeps the
rows logged before its checkpoint and drops the ones after it, which it logs again: its file ends
up with the rows an uninterrupted run writes.
"""

from __future__ import annotations

import csv
import os
import shutil
import warnings
from pathlib import Path

from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment

from medssl.atomic import atomic_write
from medssl.training.checks import check_loggers
from medssl.runs import LOGS, LR_SEARCH, TENSORBOARD, curves_file
from medssl.training.distributed import is_rank_zero


def log_now(trainer, values: dict) -> None:
    """Write end-of-epoch values to every logger at once, tagged with the epoch.

    What `self.log` collects at the end of a train epoch, Lightning writes only after the
    epoch's checkpoint is saved: a run killed in between would lose those values, and resumed
    it would not log them again. Written here, they precede the checkpoint."""
    row = {k: float(v) for k, v in values.items()}
    row["epoch"] = trainer.current_epoch
    for logger in trainer.loggers:
        logger.log_metrics(row, step=trainer.global_step)
        flush = getattr(logger.experiment, "flush", None)  # TensorBoard buffers up to 2 minutes
        if callable(flush):
            flush()


def _logged_before(row: dict, epoch: int, step: int) -> bool:
    """Whether a row was logged before the checkpoint at which a run resumes at `epoch` and
    global step `step`: every row of an earlier epoch, and rows without an epoch (the learning
    rate) from earlier steps. The rest (the resumed epoch, the final test rows) come again."""
    if None in row.values():  # a line cut short by the kill
        return False
    if row.get("epoch"):
        return int(float(row["epoch"])) < epoch
    return bool(row.get("step")) and int(float(row["step"])) < step


class ResumableCSVLogger(CSVLogger):
    """`<out>/logs/metrics.csv`, flushed on every row; resumed at (`epoch`, `step`) it keeps
    what was logged before that checkpoint."""

    def __init__(self, out: Path, resume_at: tuple[int, int] | None = None):
        super().__init__(str(out), name=LOGS, version="", flush_logs_every_n_steps=1)
        self._kept_header, self._kept_rows = [], []
        if resume_at is not None and is_rank_zero():  # rank 0 alone writes the log
            self._keep_rows_before(*resume_at)

    def _keep_rows_before(self, epoch: int, step: int) -> None:
        path = Path(self.log_dir) / "metrics.csv"
        # A copy survives the moment between Lightning deleting metrics.csv and us writing it
        # back: if an earlier attempt died there, the copy is the log.
        kept = path.with_name("metrics.kept.csv")
        source = kept if kept.is_file() else path
        if not source.is_file():
            return
        with open(source, newline="") as f:
            reader = csv.DictReader(f)
            self._kept_header = list(reader.fieldnames or [])
            self._kept_rows = [r for r in reader if _logged_before(r, epoch, step)]
        if source == path:
            atomic_write(kept, self._write)

    def _write(self, path: Path) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._kept_header)
            writer.writeheader()
            writer.writerows(self._kept_rows)

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        with warnings.catch_warnings():  # "…will be deleted": not here, see _keep_rows_before
            warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
            writer = super().experiment
        if self._kept_header:
            path = Path(self.log_dir) / "metrics.csv"
            self._write(path)
            writer.metrics_keys = list(self._kept_header)
            path.with_name("metrics.kept.csv").unlink(missing_ok=True)
        return writer


def run_loggers(out: Path, resume_at: tuple[int, int] | None = None,
                names: tuple[str, ...] = ("tensorboard", "csv")) -> list:
    """The CSV log (`<out>/logs/metrics.csv`, always: the report reads it), and the loggers
    asked for: TensorBoard (`<out>/tensorboard`); MLflow (experiment "medssl", its store where
    MLFLOW_TRACKING_URI says, else MLflow's ./mlruns: one store for a grid's runs); Weights &
    Biases (project "medssl", one W&B run per medssl run, ended with it: end_loggers). Each run
    is named by its folder's last parts (M3/frac0.1/seed0)."""
    check_loggers(list(names))
    loggers = [ResumableCSVLogger(Path(out), resume_at)]
    if "tensorboard" in names:
        # No placeholder hp_metric at the start: log_hparams writes the run's real ones at its end.
        loggers.insert(0, TensorBoardLogger(str(out), name=TENSORBOARD, version="",
                                            default_hp_metric=False))
    name = "/".join(Path(out).resolve().parts[-3:])
    if "mlflow" in names:
        from pytorch_lightning.loggers import MLFlowLogger

        loggers.append(MLFlowLogger(experiment_name="medssl", run_name=name,
                                    tracking_uri=os.environ.get("MLFLOW_TRACKING_URI")))
    if "wandb" in names:
        from pytorch_lightning.loggers import WandbLogger

        loggers.append(WandbLogger(project="medssl", name=name, save_dir=str(out)))
    return loggers


HPARAM_METRICS = ("acc", "balanced_acc", "macro_f1", "auroc", "loss", "qwk")
HPARAMS = "hparams"  # <run>/tensorboard/hparams: the run's line in the HParams tab


def log_hparams(out: Path, record, loggers: list[str], role: str | None = None) -> None:
    """The finished run in TensorBoard's HParams tab: what it is (prior, method, protocol, lr,
    seed, label fraction, and the lr's role) and its final val and test metrics
    (`hparams/val_acc`, ...), so that `tensorboard --logdir GRID` compares the priors run by
    run. `record`: its RunRecord. Written to a folder of its own, replaced when a search's run
    is adopted as the chosen one (experiments.lr_search.adopt)."""
    if "tensorboard" not in loggers or not is_rank_zero():
        return
    # A learning-rate search trains every rate under lr-search/ and copies the chosen one out:
    # the tab says which rates were candidates, so that no one picks a rate by its test scores.
    role = role or ("candidate of a learning-rate search" if LR_SEARCH in Path(out).parts
                    else "given")
    params = {"dataset": record.dataset, "prior": record.model, "protocol": record.protocol,
              "method": record.prior.get("method") or "none",
              "init": record.prior.get("init") or "none", "seed": record.seed,
              "label_fraction": record.label_fraction, "lr_role": role}
    if record.lr is not None:  # kNN has none: the key left out keeps lr a number in the tab
        params["lr"] = record.lr
    metrics = {f"hparams/{split}_{k}": float(getattr(record, split)[k])
               for split in ("val", "test") for k in HPARAM_METRICS
               if isinstance(getattr(record, split).get(k), (int, float))}
    folder = Path(out) / TENSORBOARD / HPARAMS
    shutil.rmtree(folder, ignore_errors=True)  # one session per run, the latest
    logger = TensorBoardLogger(str(Path(out) / TENSORBOARD), name=HPARAMS, version="",
                               default_hp_metric=False)
    logger.log_hyperparams(params, metrics, step=0)
    logger.finalize("success")


def end_loggers(trainer) -> None:
    """End the W&B run of a finished medssl run: wandb keeps one run per process open, and the
    next run of a grid would log into it (Lightning's WandbLogger does not end it)."""
    if any(type(lg).__name__ == "WandbLogger" for lg in trainer.loggers):
        import wandb

        wandb.finish()


def epoch_curves(run: Path):
    """One row per epoch (index: Lightning's 0-based epoch) with train, train_eval and val
    accuracy and loss, from Lightning's CSVLogger file."""
    import pandas as pd

    raw = pd.read_csv(curves_file(run))
    cols = [f"{split}/{metric}" for split in ("train", "train_eval", "val")
            for metric in ("acc", "loss") if f"{split}/{metric}" in raw]
    return raw.dropna(subset=["epoch"]).groupby("epoch")[cols].first().dropna(how="all")
