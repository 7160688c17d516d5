"""Few-shot linear probe: how well do frozen backbone features classify with a handful of labels?

Draw `shots` labelled train images per class (seeded), fit a logistic regression on their
L2-normalised features, score it on the val split; repeat over several draws and average, because
one draw of 5 images per class is noisy. The test split is never touched.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression


def few_shot_draw(labels: np.ndarray, shots: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `shots` images per class (all of a class's images when it has fewer)."""
    picked = [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in np.unique(labels)]
    return np.concatenate(picked)


def few_shot_scores(train_feats: torch.Tensor, train_labels: torch.Tensor,
                    val_feats: torch.Tensor, val_labels: torch.Tensor,
                    shots: int = 5, draws: int = 10, seed: int = 0) -> dict:
    """Mean val accuracy and balanced accuracy of logistic regressions fitted on `draws` seeded
    few-shot train subsets (balanced: each class counts alike, which plain accuracy does not
    on imbalanced sets such as HAM10000)."""
    from sklearn.metrics import balanced_accuracy_score

    xtr, ytr = train_feats.numpy(), train_labels.numpy()
    xva, yva = val_feats.numpy(), val_labels.numpy()
    rng = np.random.default_rng(seed)
    acc, balanced = [], []
    for _ in range(draws):
        idx = few_shot_draw(ytr, shots, rng)
        if len(np.unique(ytr[idx])) < 2:  # one class only: nothing to fit
            pred = np.full_like(yva, ytr[idx][0])
        else:
            # Features are L2-normalised, so a large C (weak regularisation) suits their scale.
            clf = LogisticRegression(C=10.0, max_iter=2000)
            clf.fit(xtr[idx], ytr[idx])
            pred = clf.predict(xva)
        acc.append(float(np.mean(pred == yva)))
        balanced.append(float(balanced_accuracy_score(yva, pred)))
    return {"acc": float(np.mean(acc)), "balanced_acc": float(np.mean(balanced))}


def few_shot_accuracy(train_feats, train_labels, val_feats, val_labels, shots: int = 5,
                      draws: int = 10, seed: int = 0) -> float:
    """Mean val accuracy of the few-shot probes (`few_shot_scores`)."""
    return few_shot_scores(train_feats, train_labels, val_feats, val_labels, shots, draws,
                           seed)["acc"]
