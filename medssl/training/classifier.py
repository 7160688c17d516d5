"""The classifier all four models share: a backbone with its prior, a head, one recipe.

Metrics come from torchmetrics and are logged each epoch under the same tags for every model
(`train/acc`, `val/loss`, `val/balanced_acc`, `val/macro_f1`, `val/auroc`, `val/recall/<class>`),
so `tensorboard --logdir runs/<dataset>` overlays M1-M4.
Options the study used are kept, off by default and documented:
- `freeze_epochs`: train only the head for the first N epochs (the backbone's BN stays in eval);
- `bn_eval`: keep the backbone's BatchNorm in eval mode throughout. The study did this, which
  leaves a randomly initialised backbone (M1) with no working normalisation at all.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (MulticlassAccuracy, MulticlassAUROC, MulticlassF1Score,
                                         MulticlassRecall, MulticlassStatScores)

from medssl.data.sampling import shard, stream_seed
from medssl.training.distributed import scaled_lr
from medssl.training.run_logs import log_now
from medssl.names import HEADS
from medssl.options import HardwareOptions, RecipeOptions
from medssl.training.objectives import get_objective

log = logging.getLogger("medssl")
# train_eval: a clean pass (eval mode, no augmentation) over a fixed sample of the labelled train
# images, beside val each epoch, so that the gap between them measures overfitting.
STAGES = ("train", "val", "train_eval", "test")


def make_head(kind: str, in_dim: int, num_classes: int) -> nn.Module:
    """`linear`, or `mlp`: the study's 3-layer head (in -> 512 -> 256 -> classes, ReLU, dropout)."""
    if kind == "linear":
        return nn.Linear(in_dim, num_classes)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, 512), nn.ReLU(), nn.Dropout(0.2),
                             nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, num_classes))
    raise ValueError(f"unknown head '{kind}'; choose one of {HEADS}")


def epoch_metrics(num_classes: int) -> MetricCollection:
    """The per-epoch metrics every model logs, per class where an average must skip the classes
    absent from the split (`epoch_values`)."""
    return MetricCollection({
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "recall": MulticlassRecall(num_classes, average="none"),
        "f1": MulticlassF1Score(num_classes, average="none"),
        "auroc": MulticlassAUROC(num_classes, average="none"),
        "stats": MulticlassStatScores(num_classes, average="none"),  # tp, fp, tn, fn, support
    })


def epoch_values(computed: dict) -> dict:
    """The logged scalars from `epoch_metrics`: balanced accuracy (mean recall), macro-F1 and
    AUROC averaged over the classes present (F1: or predicted), as `metrics.classification_metrics`
    does for the final numbers."""
    import math

    stats = computed["stats"]
    support, predicted = stats[:, 4], stats[:, 0] + stats[:, 1]
    present = support > 0
    scorable = present & (support < support.sum())

    def mean(values, mask):
        return values[mask].mean() if mask.any() else torch.tensor(math.nan)

    return {"acc": computed["acc"], "balanced_acc": mean(computed["recall"], present),
            "macro_f1": mean(computed["f1"], present | (predicted > 0)),
            "auroc": mean(computed["auroc"], scorable)}


class StageMetrics(nn.Module):
    """One network's per-epoch metrics and mean loss in every stage, logged under `prefix`
    (a cohort's members as `M3/val/acc`; a single classifier, or a cohort's ensemble, as
    `val/acc`). Fed probabilities, so an ensemble's mean probabilities are scored alike."""

    def __init__(self, classes: list[str], prefix: str = ""):
        super().__init__()
        self.classes, self.prefix = list(classes), prefix
        # ModuleDict keys may not shadow Module attributes such as `train`: hence the prefix.
        self.metrics = nn.ModuleDict({f"m_{s}": epoch_metrics(len(classes)) for s in STAGES})
        self.losses = nn.ModuleDict({f"m_{s}": MeanMetric() for s in STAGES})

    def update(self, stage: str, probs: torch.Tensor, labels: torch.Tensor,
               loss: torch.Tensor) -> None:
        self.losses[f"m_{stage}"].update(loss, weight=len(labels))
        self.metrics[f"m_{stage}"].update(probs, labels)

    def updated(self, stage: str) -> bool:
        return self.losses[f"m_{stage}"].update_called

    def reset(self, stage: str) -> None:
        self.metrics[f"m_{stage}"].reset()
        self.losses[f"m_{stage}"].reset()

    def compute(self, stage: str) -> dict:
        """The stage's epoch values (reduced over processes by torchmetrics), then reset."""
        computed = self.metrics[f"m_{stage}"].compute()
        tag = f"{self.prefix}{stage}"
        values = {f"{tag}/{k}": v for k, v in epoch_values(computed).items()}
        values.update({f"{tag}/recall/{c}": r for c, r in zip(self.classes, computed["recall"])})
        values[f"{tag}/loss"] = self.losses[f"m_{stage}"].compute()
        self.reset(stage)
        return values


def seed_epoch(seed: int, epoch: int) -> None:
    """Dropout (the mlp head) draws from the global RNG: a stream per epoch, so that a run
    resumed at epoch k draws what an uninterrupted run draws there. Under DDP each rank its own
    stream (the same masks on every rank would repeat)."""
    rank, world = shard()
    torch.manual_seed(stream_seed(seed, epoch, *((rank,) if world > 1 else ())))


def progress_line(values: dict, prefix: str = "") -> str:
    """One epoch's train and val loss and accuracy, for the progress a log file or a batch job
    shows. (Printed from the module's epoch-end hook: a callback would run before it and print
    the previous epoch's train numbers.)"""
    return ", ".join(f"{k} {float(values[prefix + k]):.3f}" for k in
                     ("train/loss", "train/acc", "val/loss", "val/acc") if prefix + k in values)


class Classifier(pl.LightningModule):
    """A backbone and a head trained by the finetuning recipe (`recipe`, the run's part whole;
    defaults where None) at `lr`; `hardware` says whether to compile the backbone and how the lr
    scales with processes."""

    def __init__(self, backbone: nn.Module, feature_dim: int, classes: list[str], lr: float,
                 recipe: RecipeOptions | None = None, hardware: HardwareOptions | None = None,
                 seed: int = 0, class_weights: torch.Tensor | None = None,
                 input_transform: nn.Module | None = None, objective: nn.Module | None = None):
        super().__init__()
        recipe, hardware = recipe or RecipeOptions(), hardware or HardwareOptions()
        # The values the module reads back, as plain hyperparameters: a checkpoint holds no
        # option objects (checkpoints load with weights_only=True).
        self.save_hyperparameters({
            "feature_dim": feature_dim, "classes": list(classes), "lr": lr,
            "weight_decay": recipe.weight_decay, "head": recipe.head,
            "freeze_epochs": recipe.freeze_epochs, "bn_eval": recipe.bn_eval,
            "lr_schedule": recipe.lr_schedule, "compile_model": hardware.compile, "seed": seed,
            "lr_scaling": hardware.lr_scaling})
        compile_model, head = hardware.compile, recipe.head
        self.backbone = backbone.to(memory_format=torch.channels_last)
        # uint8 batches become normalised floats on the accelerator, after the transfer.
        self.input_transform = input_transform
        # Kept out of the module tree: the compiled wrapper shares the backbone's weights, and a
        # second registration would write every weight twice into checkpoints.
        self.__dict__["_encode"] = torch.compile(self.backbone) if compile_model else self.backbone
        num_classes = len(classes)
        self.head = make_head(head, feature_dim, num_classes)
        # Class weights shape the training objective only; every reported loss is plain CE,
        # so losses stay comparable between runs with and without weighting.
        self.register_buffer("class_weights", class_weights, persistent=False)
        # The training objective (medssl.training.objectives): plain cross-entropy by default.
        if objective is None:
            objective = get_objective("plain")()
        self.objective = objective
        self.tracker = StageMetrics(classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._encode(x))

    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        return (self.input_transform(x) if self.input_transform is not None else x), y

    def backbone_frozen(self, epoch: int) -> bool:
        return epoch < self.hparams.freeze_epochs

    def set_trainable(self, epoch: int) -> None:
        """The backbone trains from epoch `freeze_epochs` on; before, only the head does."""
        frozen = self.backbone_frozen(epoch)
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)

    def batchnorm_to_eval(self, epoch: int) -> None:
        # Lightning switches the whole module to train mode each epoch; put BN back where asked.
        if self.hparams.bn_eval or self.backbone_frozen(epoch):
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def on_train_epoch_start(self):
        seed_epoch(self.hparams.seed, self.current_epoch)
        self.set_trainable(self.current_epoch)

    def on_train_batch_start(self, batch, batch_idx):
        self.batchnorm_to_eval(self.current_epoch)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.tracker.update(stage, logits.detach().float().softmax(dim=1), y, loss.detach())
        if stage == "train":  # the objective shapes training only; the logged loss is plain CE
            return self.objective(logits, y, x, self.class_weights)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self._step(batch, "val" if dataloader_idx == 0 else "train_eval")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        x, _ = batch
        return self(x).float().softmax(dim=1)

    def _log_epoch(self, stage: str) -> dict:
        values = self.tracker.compute(stage)
        if stage == "train":
            log_now(self.trainer, values)  # before this epoch's checkpoint, see log_now
        else:  # through Lightning: checkpoint selection reads val values from callback_metrics
            self.log_dict(values, sync_dist=True)
        return values

    def on_train_epoch_end(self):
        m = {**self.trainer.callback_metrics, **self._log_epoch("train")}
        log.info("epoch %d/%d: %s", self.current_epoch + 1, self.trainer.max_epochs,
                 progress_line(m))

    def on_validation_epoch_end(self):
        for stage in ("val", "train_eval"):
            if self.trainer.sanity_checking or not self.tracker.updated(stage):
                self.tracker.reset(stage)
            else:
                self._log_epoch(stage)

    def on_test_epoch_end(self):
        self._log_epoch("test")

    def configure_optimizers(self):
        # The study's recipe for all four models: Adam with a small weight decay.
        # `lr` is for one process's batch; several processes train on a larger global batch.
        lr = scaled_lr(self.hparams.lr, self.trainer.world_size, self.hparams.lr_scaling)
        return adam(self.parameters(), lr, self.hparams.weight_decay, self.hparams.lr_schedule,
                    self.trainer)


def adam(params, lr: float, weight_decay: float, schedule: str, trainer):
    """Adam over `params` (or parameter groups with their own lr), constant or with a cosine
    decay to 0 over the run, per step; the scheduler's state is in every checkpoint, so a resumed
    run continues the same curve."""
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if schedule == "constant":
        return optimizer
    total = max(1, int(trainer.estimated_stepping_batches))
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}
