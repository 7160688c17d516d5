"""Deep mutual learning (Zhang et al. 2018): a cohort of classifiers trained together on the same
augmented batches, each on cross-entropy plus its KL to the others' predictions
(training.objectives.mutual), each selected on val on its own.

Each member is a whole `Classifier` (its prior, head, freeze and BatchNorm options), logged under
its name (`M3/val/acc`); the cohort's ensemble (the mean of the members' probabilities) is
logged under the plain tags (`val/acc`), so the curves and the report read a cohort as they read
one model.

One Adam over every member's parameters, in one group per member: Adam is element-wise and a
member's loss reaches only its own weights (the peers' logits are detached), so this is exactly
one optimiser per member, as the paper has, while Lightning's automatic optimisation keeps
precision, DDP, checkpoints and exact resume as they are for a single model.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from medssl.training.classifier import (Classifier, StageMetrics, adam, progress_line,
                                        seed_epoch)
from medssl.training.distributed import scaled_lr
from medssl.training.run_logs import log_now

log = logging.getLogger("medssl")


def ensemble_loss(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the mean probabilities: what a single model's logged loss is."""
    return F.nll_loss(probs.clamp_min(1e-12).log(), labels)


class Cohort(pl.LightningModule):
    def __init__(self, members: dict[str, Classifier], objective: nn.Module,
                 input_transform: nn.Module | None = None, seed: int = 0,
                 lr_schedule: str = "constant"):
        super().__init__()
        if len(members) < 2:
            raise ValueError("a cohort needs two or more members")
        self.names = list(members)
        self.members = nn.ModuleList(members.values())
        self.objective = objective
        self.input_transform = input_transform
        self.seed, self.lr_schedule = seed, lr_schedule
        classes = self.members[0].hparams.classes
        self.trackers = nn.ModuleList(StageMetrics(classes, f"{name}/") for name in self.names)
        self.ensemble = StageMetrics(classes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [member(x) for member in self.members]

    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        return (self.input_transform(x) if self.input_transform is not None else x), y

    def on_train_epoch_start(self):
        seed_epoch(self.seed, self.current_epoch)
        for member in self.members:
            member.set_trainable(self.current_epoch)

    def on_train_batch_start(self, batch, batch_idx):
        for member in self.members:
            member.batchnorm_to_eval(self.current_epoch)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        probs = [z.detach().float().softmax(dim=1) for z in logits]
        for tracker, z, p in zip(self.trackers, logits, probs):
            tracker.update(stage, p, y, F.cross_entropy(z.detach(), y))
        mean = torch.stack(probs).mean(dim=0)
        self.ensemble.update(stage, mean, y, ensemble_loss(mean, y))
        if stage != "train":
            return None
        # Each member's objective, the others' logits as its peers (detached in the objective).
        return sum(self.objective(z, y, x, member.class_weights,
                                  peer_logits=[p for j, p in enumerate(logits) if j != k])
                   for k, (member, z) in enumerate(zip(self.members, logits)))

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self._step(batch, "val" if dataloader_idx == 0 else "train_eval")

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        """Every member's probabilities, stacked: (members, batch, classes)."""
        x, _ = batch
        return torch.stack([z.float().softmax(dim=1) for z in self(x)])

    def _computed(self, stage: str) -> dict:
        values = {}
        for tracker in [*self.trackers, self.ensemble]:
            values.update(tracker.compute(stage))
        return values

    def on_train_epoch_end(self):
        values = self._computed("train")
        log_now(self.trainer, values)  # before this epoch's checkpoint, see run_logs.log_now
        m = {**self.trainer.callback_metrics, **values}
        shown = "; ".join(f"{name}: {progress_line(m, f'{name}/')}" for name in self.names)
        log.info("epoch %d/%d: %s; ensemble: %s", self.current_epoch + 1,
                 self.trainer.max_epochs, shown, progress_line(m))

    def on_validation_epoch_end(self):
        for stage in ("val", "train_eval"):
            if self.trainer.sanity_checking or not self.ensemble.updated(stage):
                for tracker in [*self.trackers, self.ensemble]:
                    tracker.reset(stage)
            else:  # through Lightning: each member's checkpoint reads its val values from it
                self.log_dict(self._computed(stage), sync_dist=True)

    def configure_optimizers(self):
        groups = [{"params": list(member.parameters()),
                   "lr": scaled_lr(member.hparams.lr, self.trainer.world_size,
                                   member.hparams.lr_scaling),
                   "weight_decay": member.hparams.weight_decay} for member in self.members]
        return adam(groups, groups[0]["lr"], groups[0]["weight_decay"], self.lr_schedule,
                    self.trainer)

    def member_state(self, k: int, state_dict: dict) -> dict:
        """Member k's weights out of a cohort checkpoint's state_dict, as a single classifier's
        (`backbone.*`, `head.*`): what a run's `best.ckpt` holds, so a member can be a teacher."""
        prefix = f"members.{k}."
        return {key[len(prefix):]: value for key, value in state_dict.items()
                if key.startswith(prefix)}
