"""Does pretraining learn? A kNN classifier on backbone features, labelled train split vs val split.

Each epoch: embed both splits (eval mode, no augmentation), predict every val image from its k=20
nearest train images by cosine similarity (lightly's weighted vote), log `val_knn_acc`.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import knn_predict


@torch.no_grad()
def embed(backbone: torch.nn.Module, loader, device) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labels = [], []
    for x, y in loader:
        feats.append(F.normalize(backbone(x.to(device)).float(), dim=1).cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels)


def knn_accuracy(train_feats, train_labels, val_feats, val_labels, num_classes: int,
                 k: int = 20, temperature: float = 0.1) -> float:
    k = min(k, len(train_feats))
    pred = knn_predict(val_feats, train_feats.T, train_labels, num_classes, k, temperature)[:, 0]
    return (pred == val_labels).float().mean().item()


class KNNMonitor(pl.Callback):
    def __init__(self, train_loader, val_loader, num_classes: int, k: int = 20):
        self.train_loader, self.val_loader = train_loader, val_loader
        self.num_classes, self.k = num_classes, k
        self.last: float | None = None

    def measure(self, backbone: torch.nn.Module, device) -> float:
        was_training = backbone.training
        backbone.eval()
        try:
            tf, tl = embed(backbone, self.train_loader, device)
            vf, vl = embed(backbone, self.val_loader, device)
        finally:
            backbone.train(was_training)
        return knn_accuracy(tf, tl, vf, vl, self.num_classes, self.k)

    def on_train_epoch_end(self, trainer, pl_module):
        self.last = self.measure(pl_module.backbone, pl_module.device)
        pl_module.log("val_knn_acc", self.last, prog_bar=True, sync_dist=True)
