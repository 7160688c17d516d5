"""The numbers a finished model is judged by, computed once from its predicted probabilities.

One function for train, val and test alike, so every split and every model is measured the same
way: accuracy, balanced accuracy (mean per-class recall), macro-F1, AUROC (one-vs-rest, averaged
over the classes present), cross-entropy loss, calibration (ECE over 15 bins, Brier score),
per-class recall and the confusion matrix (rows: true class); quadratic weighted kappa for graded
labels (IDRiD); for binary tasks, the sensitivity at the threshold that gives 95% specificity on
val (chosen on val, never on test; a lower target where val has too few negatives to reach 95%
with one false positive, see `reachable_specificity`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (binary_roc, multiclass_accuracy,
                                                    multiclass_auroc,
                                                    multiclass_calibration_error,
                                                    multiclass_cohen_kappa,
                                                    multiclass_confusion_matrix,
                                                    multiclass_f1_score, multiclass_recall)

ECE_BINS = 15
TARGET_SPECIFICITY = 0.95


def present_mean(per_class: torch.Tensor, present: torch.Tensor) -> float | None:
    """The mean over the classes present in the split: an absent class has no recall and no
    AUROC, and counting it as 0 (torchmetrics' macro average does) would drag the mean down."""
    return per_class[present].mean().item() if present.any() else None


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Multi-class Brier score: the mean over images of the squared distance between the
    predicted distribution and the one-hot truth (0 is perfect, 2 the worst)."""
    onehot = F.one_hot(labels, probs.shape[1]).float()
    return ((probs - onehot) ** 2).sum(dim=1).mean().item()


def reachable_specificity(negatives: int, target: float = TARGET_SPECIFICITY) -> float | None:
    """The specificity an operating point chosen on `negatives` val negatives can aim at: the
    target where val holds enough negatives for one of them to be a false positive (20 for 95%),
    else (n - 1) / n, one false positive allowed. With fewer than 2 negatives there is no
    operating point to choose (None). Demanding 95% of 8 negatives would demand 100%: zero
    false positives, a threshold above every negative and a sensitivity near 0."""
    if negatives < 2:
        return None
    return min(target, (negatives - 1) / negatives)


def specificity_threshold(probs: torch.Tensor, labels: torch.Tensor, positive: int,
                          specificity: float | None = None) -> float | None:
    """The lowest threshold on P(positive) whose specificity on these images is at least
    `specificity` (default: `reachable_specificity` of these images' negatives): the operating
    point, chosen on val."""
    negatives = probs[labels != positive, positive]
    specificity = specificity or reachable_specificity(len(negatives))
    if specificity is None or (labels == positive).sum() == 0:
        return None
    fpr, _, thresholds = binary_roc(probs[:, positive], (labels == positive).long())
    ok = (1 - fpr) >= specificity - 1e-9  # (n - 1) / n and 1 - fpr may differ in the last bit
    return float(thresholds[ok].min()) if ok.any() else float(thresholds.max())


def operating_point(probs: torch.Tensor, labels: torch.Tensor, positive: int,
                    threshold: float) -> dict:
    """Sensitivity and specificity of `P(positive) >= threshold` on these images."""
    said = probs[:, positive] >= threshold
    pos, neg = labels == positive, labels != positive
    return {"threshold": threshold,
            "sensitivity": said[pos].float().mean().item() if pos.any() else None,
            "specificity": (~said[neg]).float().mean().item() if neg.any() else None}


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, classes: list[str],
                           ordinal: bool = False, positive: int | None = None,
                           threshold: float | None = None,
                           target_specificity: float | None = None) -> dict:
    """Every metric of one split. `ordinal`: the class order is a grade order (adds `qwk`).
    `positive` and `threshold` (binary tasks): the positive class and the threshold chosen on
    val (`specificity_threshold`) for `target_specificity`, giving `sens_at_spec` and the
    specificity it reaches on this split (`operating_point`)."""
    n = len(classes)
    probs, labels = probs.float(), labels.long()
    recall = multiclass_recall(probs, labels, n, average="none")
    counts = torch.bincount(labels, minlength=n)
    present = counts > 0
    # AUROC is defined for a class that has positives and negatives in the split.
    scorable = present & (counts < len(labels))
    auroc = multiclass_auroc(probs, labels, n, average="none") if scorable.any() else None
    out = {
        "n": int(len(labels)),
        "acc": multiclass_accuracy(probs, labels, n, average="micro").item(),
        "balanced_acc": present_mean(recall, present),
        # Over the classes present or predicted: one neither true nor said has no F1.
        "macro_f1": present_mean(multiclass_f1_score(probs, labels, n, average="none"),
                                 present | (torch.bincount(probs.argmax(1), minlength=n) > 0)),
        "auroc": present_mean(auroc, scorable) if auroc is not None else None,
        "loss": F.nll_loss(probs.clamp_min(1e-12).log(), labels).item(),
        "ece": multiclass_calibration_error(probs, labels, n, n_bins=ECE_BINS, norm="l1").item(),
        "brier": brier_score(probs, labels),
        "per_class_recall": {c: (recall[i].item() if present[i] else None)
                             for i, c in enumerate(classes)},
        "confusion_matrix": multiclass_confusion_matrix(probs, labels, n).tolist(),
    }
    if ordinal:
        out["qwk"] = multiclass_cohen_kappa(probs.argmax(1), labels, n, weights="quadratic").item()
    if positive is not None and threshold is not None:
        point = operating_point(probs, labels, positive, threshold)
        out["sens_at_spec"] = point["sensitivity"]
        out["operating_point"] = {**point, "positive_class": classes[positive],
                                  "chosen_on": "val", "target_specificity": target_specificity,
                                  "target_asked": TARGET_SPECIFICITY}
    return out


def metric_options(preset, classes: list[str], val_probs: torch.Tensor,
                   val_labels: torch.Tensor) -> dict:
    """The task's extra metrics (`classification_metrics` keywords): kappa for graded labels;
    for two classes, the positive class and its specificity threshold, chosen on val for the
    specificity val's negatives can reach (`reachable_specificity`)."""
    options = {"ordinal": bool(preset.ordinal)}
    if len(classes) == 2:
        positive = classes.index(preset.positive_class) if preset.positive_class in classes else 1
        target = reachable_specificity(int((val_labels != positive).sum()))
        options["positive"] = positive
        options["target_specificity"] = target
        options["threshold"] = (specificity_threshold(val_probs.float(), val_labels.long(),
                                                      positive, target) if target else None)
    return options
