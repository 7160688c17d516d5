"""Paired differences for the crossed design of seeds and test groups, and Holm's correction
(medssl.report.statistics, medssl.report.comparisons)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from medssl.report.statistics import (METRICS, at_level, holm, paired_difference, p_value,
                                      weighted_scores)
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


def coverage_bench():
    """bench/coverage.py, which measures what docs/statistics.md reports: its simulated null
    studies are what these tests check, at fewer trials."""
    path = Path(__file__).resolve().parents[1] / "bench" / "coverage.py"
    spec = importlib.util.spec_from_file_location("coverage_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_weighted_scores_with_unit_weights_are_the_run_metrics_even_with_a_class_absent():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 80)  # class 3 of 4 never appears
    probs = synthetic_model(rng, labels, 0.7, 4)
    metrics = (*METRICS, "qwk", "ece")
    ours = weighted_scores(labels, probs, np.ones((1, len(labels))), metrics)
    run = classification_metrics(torch.tensor(probs), torch.tensor(labels), list("abcd"),
                                 ordinal=True)
    for m in metrics:
        assert ours[m][0] == pytest.approx(run[m], abs=1e-6), m
    # Twice the weight on every image is the same test set.
    twice = weighted_scores(labels, probs, np.full((1, len(labels)), 2.0), metrics)
    assert all(twice[m][0] == pytest.approx(ours[m][0]) for m in metrics)


def test_the_weighted_sensitivity_is_the_runs_at_its_val_threshold():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 120)
    probs = synthetic_model(rng, labels, 0.75, 2)
    run = classification_metrics(torch.tensor(probs), torch.tensor(labels), ["neg", "pos"],
                                 positive=1, threshold=0.6, target_specificity=0.95)
    ours = weighted_scores(labels, probs, np.ones((1, 120)), ("sens_at_spec",), 0.6, 1)
    assert ours["sens_at_spec"][0] == pytest.approx(run["sens_at_spec"])


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
    assert excludes_zero >= 30


def test_identical_models_differ_by_nothing():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 60)
    a = [synthetic_model(rng, labels, 0.7, 2) for _ in range(2)]
    r = paired_difference(labels, a, a, resamples=200)
    # The same resamples for both models: no variation at all, and no evidence of a difference.
    assert all(r[m]["diff"] == r[m]["low"] == r[m]["high"] == 0 and r[m]["p"] == 1
               for m in METRICS)


def test_copied_seeds_do_not_narrow_the_interval():
    # Five copies of one seed's predictions add no information: the interval must be that of
    # the one seed (the nested bootstrap this replaced narrowed it to about 1/sqrt(5)).
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 300)
    a, b = synthetic_model(rng, labels, 0.7, 3), synthetic_model(rng, labels, 0.68, 3)
    one = paired_difference(labels, [a], [b], resamples=500)
    five = paired_difference(labels, [a] * 5, [b] * 5, resamples=500)
    for m in METRICS:
        assert five[m]["low"] == pytest.approx(one[m]["low"])
        assert five[m]["high"] == pytest.approx(one[m]["high"])
    bench = coverage_bench()
    ratios = bench.copied_seed_ratios(500)
    assert ratios["medssl_width_ratio_5_copies"] == pytest.approx(1)
    assert ratios["nested_width_ratio_5_copies"] < 0.6  # the defect, measured on the old design


def test_a_null_study_excludes_zero_about_5_percent_of_the_time():
    # Two priors equal in expectation, 300 test images, 3 seeds, image-by-prior effects shared
    # by a prior's seeds (seeds and images crossed): the 95% interval should exclude 0 in about
    # 5% of studies. 300 studies per setting: a rate of 5% reads 2.5-7.5% within 2 se.
    bench = coverage_bench()
    for sd_image, sd_seed in ((0.5, 0.05), (0.5, 0.15)):
        rates = bench.null_rates(300, 300, 3, sd_image, sd_seed, 300, seed=7)
        assert 0.01 <= rates["medssl_rejects"] <= 0.09, rates
        assert rates["nested_rejects"] > rates["medssl_rejects"], rates


def test_grouped_resampling_widens_the_interval_when_groups_hold_copies():
    # 100 pictures filed three times each: resampled as 300 independent images the interval
    # is too narrow by about sqrt(3); resampled by group it is not.
    bench = coverage_bench()
    ratio = bench.grouped_ratio(1000)["grouped_width_ratio_3_copies"]
    assert 1.45 < ratio < 2.0


@pytest.mark.parametrize("df", [2.0, 7.5, np.inf])
def test_every_interval_agrees_with_its_p_value(df):
    # An interval at level 1 - a excludes 0 exactly when p < a, at every level: how an adjusted
    # p gets the interval printed beside it.
    for diff in (-0.031, 0.004, 0.02, 0.09):
        result = {"diff": diff, "se": 0.015, "df": df}
        p = p_value(result)
        for alpha in (0.01, 0.05, 0.05 / 3, 0.2):
            low, high = at_level(result, 1 - alpha)
            assert (low > 0 or high < 0) == (p < alpha)
        low, high = at_level(result, 1 - p)  # at the level of its own p, the interval touches 0
        assert min(abs(low), abs(high)) == pytest.approx(0, abs=1e-9)


def test_holm_matches_a_hand_computed_case_and_skips_nan():
    adjusted = holm([0.01, 0.04, np.nan, 0.03])
    # sorted: 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> kept monotone at 0.06
    assert adjusted[[0, 1, 3]] == pytest.approx([0.03, 0.06, 0.06]) and np.isnan(adjusted[2])


def comparison_row(model, base, z, metric="balanced_acc"):
    """A table row with one primary comparison vs M1 (and the same vs its base where named),
    its difference z standard errors from 0, its p from the same t."""
    row = {"model": model, "base": base}
    result = {"diff": 0.01 * z, "se": 0.01, "df": np.inf}
    for ref in ("M1", "base"):
        key = f"test_{metric}_vs_{ref}"
        given = ref == "M1" or base
        row.update({f"{key}_diff": result["diff"] if given else np.nan, f"{key}_se": 0.01,
                    f"{key}_df": np.inf, f"{key}_p": p_value(result) if given else np.nan})
    return row


def test_the_holm_family_is_the_primary_metric_each_comparison_counted_once():
    from medssl.report.comparisons import adjust, compared

    # M1 against M3 is one comparison: on M3's row, never again on M1's.
    assert compared("M3", "M1") and not compared("M1", "M3") and not compared("M1", "M1")
    assert compared("M2", "M1") and compared("M2", "M3")
    rows = [comparison_row("M2", None, 3.1), comparison_row("KD(M3→M1)", "M1", 1.9),
            comparison_row("DML(M1+M3)", "M1+M3 ensemble", 2.4)]
    rows[2]["test_balanced_acc_vs_base_p"] = p_value({"diff": 0.028, "se": 0.01, "df": np.inf})
    rows[2]["test_balanced_acc_vs_base_diff"] = 0.028
    # A secondary metric's p is not in the family.
    rows[0]["test_acc_vs_M1_p"] = 0.001
    out = adjust([dict(r) for r in rows], "balanced_acc")
    # Four tests: the KD row's base is its M1 column, counted once.
    family = holm([rows[0]["test_balanced_acc_vs_M1_p"], rows[1]["test_balanced_acc_vs_M1_p"],
                   rows[2]["test_balanced_acc_vs_M1_p"], rows[2]["test_balanced_acc_vs_base_p"]])
    assert (family < 0.05).any() and (family > 0.05).any()  # both outcomes are checked below
    assert [out[0]["test_balanced_acc_vs_M1_p_holm"], out[1]["test_balanced_acc_vs_M1_p_holm"],
            out[2]["test_balanced_acc_vs_M1_p_holm"],
            out[2]["test_balanced_acc_vs_base_p_holm"]] == list(family)
    assert out[1]["test_balanced_acc_vs_base_p_holm"] == out[1]["test_balanced_acc_vs_M1_p_holm"]
    assert out[0]["primary_family"] == 4 and "test_acc_vs_M1_p_holm" not in out[0]
    # Each adjusted interval agrees with its adjusted p.
    for row in out:
        for ref in ("M1", "base"):
            key = f"test_balanced_acc_vs_{ref}"
            if np.isnan(row[f"{key}_p_holm"]):
                continue
            excludes = row[f"{key}_low_holm"] > 0 or row[f"{key}_high_holm"] < 0
            assert excludes == (row[f"{key}_p_holm"] < 0.05)
