"""The paired two-level bootstrap and Holm's correction (medssl.report.statistics)."""

import numpy as np
import pytest
import torch

from medssl.report.statistics import METRICS, holm, paired_difference, weighted_scores
from medssl.training.metrics import classification_metrics


def synthetic_model(rng, labels, accuracy, n_classes):
    """Probabilities that put the top score on the right class with probability `accuracy`."""
    n = len(labels)
    probs = rng.random((n, n_classes))
    right = rng.random(n) < accuracy
    probs[np.arange(n), labels] += 3 * right
    wrong = (labels + 1 + rng.integers(0, n_classes - 1, n)) % n_classes
    probs[np.arange(n), wrong] += 3 * ~right
    return probs / probs.sum(1, keepdims=True)


def test_weighted_scores_with_unit_weights_are_the_run_metrics_even_with_a_class_absent():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 80)  # class 3 of 4 never appears
    probs = synthetic_model(rng, labels, 0.7, 4)
    ours = weighted_scores(labels, probs, np.ones((1, len(labels))))
    run = classification_metrics(torch.tensor(probs), torch.tensor(labels), list("abcd"))
    for m in METRICS:
        assert ours[m][0] == pytest.approx(run[m], abs=1e-6), m
    # Twice the weight on every image is the same test set.
    twice = weighted_scores(labels, probs, np.full((1, len(labels)), 2.0))
    assert all(twice[m][0] == pytest.approx(ours[m][0]) for m in METRICS)


def test_the_interval_covers_a_known_difference():
    # 40 replications of a study: 3 seeds of two models on a fresh test set of 150 images,
    # the first right 80% of the time, the second 65%: the true accuracy difference is 0.15.
    rng = np.random.default_rng(1)
    covered, excludes_zero = 0, 0
    for replication in range(40):
        labels = rng.integers(0, 3, 150)
        a = [synthetic_model(rng, labels, 0.80, 3) for _ in range(3)]
        b = [synthetic_model(rng, labels, 0.65, 3) for _ in range(3)]
        r = paired_difference(labels, a, b, resamples=300, seed=replication)
        covered += r["acc"]["low"] <= 0.15 <= r["acc"]["high"]
        excludes_zero += r["acc"]["low"] > 0
        assert set(r) >= set(METRICS) and all(r[m]["low"] <= r[m]["diff"] <= r[m]["high"]
                                              for m in METRICS)
    assert covered >= 34  # nominal 95%: 38 of 40 expected
    assert excludes_zero >= 34


def test_identical_models_differ_by_nothing_and_the_draws_are_paired():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 60)
    a = [synthetic_model(rng, labels, 0.7, 2) for _ in range(2)]
    r = paired_difference(labels, a, a, resamples=200)
    # The same draws for both models: every resample's difference is exactly 0.
    assert all(r[m]["diff"] == r[m]["low"] == r[m]["high"] == 0 for m in METRICS)


def test_holm_matches_a_hand_computed_case_and_skips_nan():
    adjusted = holm([0.01, 0.04, np.nan, 0.03])
    # sorted: 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> kept monotone at 0.06
    assert adjusted[[0, 1, 3]] == pytest.approx([0.03, 0.06, 0.06]) and np.isnan(adjusted[2])
