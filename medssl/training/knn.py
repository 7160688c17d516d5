"""Does pretraining learn? Two read-outs of frozen backbone features, labelled train split vs val.

- kNN: predict every val image from its k=20 nearest train images by cosine similarity
  (lightly's weighted vote), logged as `val_knn_acc` and `val_knn_balanced_acc`;
- few-shot linear probe: logistic regression on 5 labelled train images per class, averaged over
  10 draws, logged as `val_fewshot_acc` and `val_fewshot_balanced_acc`.
Both are measured once before the first step (the prior's own score) and after every epoch, in
eval mode without augmentation; and once for a random init of the same network (`random`): the bar
a pretraining must clear for its prior to mean anything (`readout_gain`). For a pretraining from
random init that is its own start; from ImageNet, a random backbone made for the purpose.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import knn_predict

from medssl.training.distributed import gather_shards
from medssl.training.probe import few_shot_scores
from medssl.training.run_logs import log_now

log = logging.getLogger("medssl")


@torch.no_grad()
def embed(backbone: torch.nn.Module, loader, device, normalize=None) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised features and labels of every image of `loader` (uint8 batches are turned
    into normalised floats on the device by `normalize`). In a distributed run each process
    embeds its share (a `ShardSampler` loader) and every process gets all of them, in order."""
    feats, labels = [], []
    for x, y in loader:
        x = x.to(device)
        if normalize is not None:
            x = normalize.to(device)(x)
        feats.append(F.normalize(backbone(x).float(), dim=1).cpu())
        labels.append(torch.as_tensor(y))
    n = len(loader.dataset)
    feats = torch.cat(feats) if feats else torch.empty(0, 0)
    labels = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
    return gather_shards(feats, n), gather_shards(labels, n)


def knn_scores(train_feats, train_labels, val_feats, val_labels, num_classes: int,
               k: int = 20, temperature: float = 0.1) -> dict:
    """kNN accuracy and balanced accuracy (mean recall over the classes in val) on val."""
    from sklearn.metrics import balanced_accuracy_score

    k = min(k, len(train_feats))
    pred = knn_predict(val_feats, train_feats.T, train_labels, num_classes, k, temperature)[:, 0]
    return {"acc": (pred == val_labels).float().mean().item(),
            "balanced_acc": float(balanced_accuracy_score(val_labels.numpy(), pred.numpy()))}


def knn_accuracy(train_feats, train_labels, val_feats, val_labels, num_classes: int,
                 k: int = 20, temperature: float = 0.1) -> float:
    return knn_scores(train_feats, train_labels, val_feats, val_labels, num_classes, k,
                      temperature)["acc"]


def evaluate_features(backbone: torch.nn.Module, train_loader, val_loader, num_classes: int,
                      device="cpu", k: int = 20, shots: int = 5, seed: int = 0,
                      normalize=None) -> dict:
    """kNN and few-shot probe accuracy of `backbone` on val; the backbone's mode is restored."""
    was_training = backbone.training
    backbone.eval()
    try:
        tf, tl = embed(backbone, train_loader, device, normalize)
        vf, vl = embed(backbone, val_loader, device, normalize)
    finally:
        backbone.train(was_training)
    knn = knn_scores(tf, tl, vf, vl, num_classes, k)
    shot = few_shot_scores(tf, tl, vf, vl, shots=shots, seed=seed)
    return {"knn_acc": knn["acc"], "knn_balanced_acc": knn["balanced_acc"],
            "fewshot_acc": shot["acc"], "fewshot_balanced_acc": shot["balanced_acc"]}


def readout_gain(scores: dict | None, random: dict | None) -> float | None:
    """Points over a random init: the mean of the kNN and few-shot balanced accuracy gains on
    val (one number from both read-outs: either alone moves by a draw's noise), x 100."""
    if not scores or not random:
        return None
    keys = ("knn_balanced_acc", "fewshot_balanced_acc")
    return round(100 * sum(scores[k] - random[k] for k in keys) / len(keys), 2)


class KNNMonitor(pl.Callback):
    def __init__(self, train_loader, val_loader, num_classes: int, k: int = 20, shots: int = 5,
                 normalize=None, random_backbone=None):
        """`random_backbone`: a function making a random init of the network, where the run
        starts from another (ImageNet); None where the run's own start is the random init."""
        self.train_loader, self.val_loader = train_loader, val_loader
        self.normalize = normalize
        self.num_classes, self.k, self.shots = num_classes, k, shots
        self.random_backbone = random_backbone
        self.initial: dict | None = None  # the prior's scores, before any pretraining step
        self.random: dict | None = None  # a random init's scores
        self.last: dict | None = None

    def measure(self, backbone: torch.nn.Module, device) -> dict:
        return evaluate_features(backbone, self.train_loader, self.val_loader, self.num_classes,
                                 device, self.k, self.shots, normalize=self.normalize)

    def on_train_start(self, trainer, pl_module):
        if self.initial is None:  # a resumed run keeps the baseline from its checkpoint
            self.initial = self.measure(pl_module.backbone, pl_module.device)
            log.info("before %s: val kNN %.3f, few-shot %.3f",
                     getattr(pl_module, "title", "pretraining"), self.initial["knn_acc"],
                     self.initial["fewshot_acc"])
            self.random = self.initial
            if self.random_backbone is not None:
                self.random = self.measure(self.random_backbone().to(pl_module.device),
                                           pl_module.device)
                log.info("a random init reads: val kNN %.3f, few-shot %.3f",
                         self.random["knn_acc"], self.random["fewshot_acc"])

    def on_train_epoch_end(self, trainer, pl_module):
        self.last = self.measure(pl_module.backbone, pl_module.device)
        # Written at once, before the epoch's checkpoint (see run_logs.log_now).
        log_now(trainer, {f"val_{k}": v for k, v in self.last.items()})
        # This hook runs before the module's, which logs and resets the epoch's mean loss.
        loss = pl_module.epoch_loss.compute() if hasattr(pl_module, "epoch_loss") else None
        # One line per epoch: the progress a log file or a batch job shows.
        log.info("epoch %d/%d: loss %s, val kNN %.3f, few-shot %.3f", trainer.current_epoch + 1,
                 trainer.max_epochs, f"{float(loss):.3f}" if loss is not None else "?",
                 self.last["knn_acc"], self.last["fewshot_acc"])

    # Both kept in checkpoints: a run resumed after its last epoch trains nothing more, yet
    # reports the prior's scores and the last epoch's.
    def state_dict(self) -> dict:
        return {"initial": self.initial, "random": self.random, "last": self.last}

    def load_state_dict(self, state_dict: dict) -> None:
        self.initial, self.last = state_dict.get("initial"), state_dict.get("last")
        self.random = state_dict.get("random")
