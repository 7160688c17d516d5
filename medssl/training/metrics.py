"""The numbers a finished model is judged by, computed once from its predicted probabilities.

One function for train, val and test alike, so every split and every model is measured the same
way: accuracy, balanced accuracy (mean per-class recall), macro-F1, AUROC (macro, one-vs-rest),
cross-entropy loss, per-class recall and the confusion matrix (rows: true class).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (multiclass_accuracy, multiclass_auroc,
                                                    multiclass_confusion_matrix,
                                                    multiclass_f1_score, multiclass_recall)


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    n = len(classes)
    probs, labels = probs.float(), labels.long()
    recall = multiclass_recall(probs, labels, n, average="none")
    present = torch.bincount(labels, minlength=n) > 0
    return {
        "n": int(len(labels)),
        "acc": multiclass_accuracy(probs, labels, n, average="micro").item(),
        # Classes absent from this split have no recall; they must not drag the mean to zero.
        "balanced_acc": recall[present].mean().item(),
        "macro_f1": multiclass_f1_score(probs, labels, n, average="macro").item(),
        "auroc": multiclass_auroc(probs, labels, n, average="macro").item(),
        "loss": F.nll_loss(probs.clamp_min(1e-12).log(), labels).item(),
        "per_class_recall": {c: (recall[i].item() if present[i] else None)
                             for i, c in enumerate(classes)},
        "confusion_matrix": multiclass_confusion_matrix(probs, labels, n).tolist(),
    }
