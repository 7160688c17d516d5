"""The metrics a model is judged by, against hand-computed values and scikit-learn."""

import numpy as np
import pytest
import torch
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from medssl.training.classifier import epoch_metrics, epoch_values
from medssl.training.metrics import (classification_metrics, metric_options,
                                     specificity_threshold)
from medssl.presets import preset_for


def test_ece_and_brier_match_a_hand_computed_case():
    # Four images, two classes. Confidences 0.9, 0.8, 0.6, 0.7; the first three right.
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = torch.tensor([0, 1, 0, 0])
    m = classification_metrics(probs, labels, ["a", "b"])
    # 15 equal bins over [0, 1]: 0.6 alone in (0.533, 0.6], 0.7 in (0.667, 0.733],
    # 0.8 in (0.8-, 0.8], 0.9 in (0.867, 0.933]; one image each, so
    # ECE = mean |acc - conf| = (|1-0.9| + |1-0.8| + |1-0.6| + |0-0.7|) / 4.
    assert m["ece"] == pytest.approx((0.1 + 0.2 + 0.4 + 0.7) / 4, abs=1e-6)
    # Brier: squared distance to the one-hot truth, summed over classes, mean over images.
    brier = (2 * 0.1**2 + 2 * 0.2**2 + 2 * 0.4**2 + 2 * 0.7**2) / 4
    assert m["brier"] == pytest.approx(brier, abs=1e-6)


def test_qwk_for_graded_labels_matches_scikit_learn():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (60,), generator=g)
    # Predictions near the truth, off by one or two now and then: what kappa weighs.
    pred = (labels + torch.randint(-2, 3, (60,), generator=g)).clamp(0, 4)
    probs = torch.nn.functional.one_hot(pred, 5).float() * 0.8 + 0.04
    m = classification_metrics(probs, labels, list("01234"), ordinal=True)
    expected = cohen_kappa_score(labels.numpy(), pred.numpy(), weights="quadratic")
    assert m["qwk"] == pytest.approx(expected, abs=1e-6)
    assert "qwk" not in classification_metrics(probs, labels, list("01234"))
    assert metric_options(preset_for("idrid"), list("01234"), probs, labels)["ordinal"]


def test_auroc_and_balanced_accuracy_skip_a_class_absent_from_the_split():
    g = torch.Generator().manual_seed(1)
    labels = torch.tensor([0, 0, 1, 1, 0, 1, 0, 1])  # class 2 has no image in this split
    probs = torch.rand(8, 3, generator=g).softmax(1)
    m = classification_metrics(probs, labels, ["a", "b", "c"])
    y, p = labels.numpy(), probs.numpy()
    expected = np.mean([roc_auc_score(y == c, p[:, c]) for c in (0, 1)])
    assert m["auroc"] == pytest.approx(expected, abs=1e-6)
    recall = [np.mean(p[y == c].argmax(1) == c) for c in (0, 1)]
    assert m["balanced_acc"] == pytest.approx(np.mean(recall), abs=1e-6)
    # The per-epoch logged values agree with the final ones.
    metrics = epoch_metrics(3)
    metrics.update(probs, labels)
    logged = epoch_values(metrics.compute())
    for key in ("acc", "balanced_acc", "macro_f1", "auroc"):
        assert float(logged[key]) == pytest.approx(m[key], abs=1e-6), key


def test_sensitivity_at_95_specificity_uses_the_threshold_chosen_on_val():
    g = torch.Generator().manual_seed(2)
    val_labels = torch.randint(0, 2, (200,), generator=g)
    val_p1 = (val_labels * 0.3 + torch.rand(200, generator=g) * 0.7).clamp(0, 1)
    val = torch.stack([1 - val_p1, val_p1], 1)
    threshold = specificity_threshold(val, val_labels, positive=1)
    said = val_p1 >= threshold
    assert (~said[val_labels == 0]).float().mean() >= 0.95  # the operating point holds on val
    options = metric_options(preset_for("chest_xray"), ["NORMAL", "PNEUMONIA"], val, val_labels)
    assert options["positive"] == 1 and options["threshold"] == threshold
    # On test, the val threshold is applied as is: never chosen again on test.
    test_labels = torch.tensor([0, 0, 1, 1])
    test = torch.tensor([[0.9, 0.1], [1 - threshold, threshold], [0.5, 0.5], [0.0, 1.0]])
    m = classification_metrics(test, test_labels, ["NORMAL", "PNEUMONIA"], **options)
    expected = np.mean([0.5 >= threshold, True])
    assert m["sens_at_spec"] == pytest.approx(expected)
    assert m["operating_point"]["specificity"] == 0.5 and m["operating_point"]["chosen_on"] == "val"
    assert m["operating_point"]["target_specificity"] == 0.95  # val has ~100 negatives


def test_the_specificity_target_is_one_that_val_can_reach():
    from medssl.training.metrics import reachable_specificity

    # 95% needs 20 negatives for one false positive; with 8 it would demand none at all.
    assert reachable_specificity(200) == reachable_specificity(20) == 0.95
    assert reachable_specificity(8) == 7 / 8 and reachable_specificity(2) == 0.5
    assert reachable_specificity(1) is None and reachable_specificity(0) is None
    # 8 val negatives: the threshold lets one false positive through, so the sensitivity is not
    # forced to the few positives scored above every negative.
    val_labels = torch.tensor([0] * 8 + [1] * 8)
    p1 = torch.tensor([.1, .2, .3, .4, .5, .6, .7, .95] + [.65, .75, .8, .85, .9, .92, .97, .99])
    val = torch.stack([1 - p1, p1], 1)
    options = metric_options(preset_for("chest_xray"), ["NORMAL", "PNEUMONIA"], val, val_labels)
    assert options["target_specificity"] == 7 / 8
    m = classification_metrics(val, val_labels, ["NORMAL", "PNEUMONIA"], **options)
    assert m["operating_point"]["specificity"] == 7 / 8 and m["sens_at_spec"] == 7 / 8
    # With the 95% target as such: no false positive allowed, and most positives missed.
    strict = specificity_threshold(val, val_labels, 1, 0.95)
    assert (p1[8:] >= strict).float().mean() == 2 / 8  # only .97 and .99 above every negative
