"""The task's own metrics in the report, the primary endpoint, and the answer in words
(medssl.report.tables, comparisons, answer)."""

import json

import numpy as np
import pandas as pd
import pytest

from medssl.data import fixtures as fx
from medssl.report.answer import verdict
from tests.test_finetune import FAST

# Two priors, two seeds, one rate: what the report does with them, not the search.
GRID = ["--models", "M1", "M2", "--seeds", "0", "1", "--epochs", "1", "--ssl-epochs", "1",
        "--lr", "1e-3", *FAST]


def test_graded_labels_are_judged_by_kappa_with_its_own_paired_columns(tmp_path, cli):
    root = fx.make_idrid(tmp_path, per_class=8)
    out = tmp_path / "grid"
    code, stdout, err = cli("compare", "--dataset", "idrid", "--data-root", root, "--out", out,
                            *GRID)
    assert code == 0, err
    results = pd.read_csv(out / "results.csv").set_index("model")
    assert (results["primary_metric"] == "qwk").all()
    for key in ("diff", "low", "high", "p", "p_holm", "low_holm", "high_holm", "mde"):
        assert not np.isnan(results.at["M2", f"test_qwk_vs_M1_{key}"]), key
    assert not np.isnan(results.at["M2", "test_ece_vs_M1_diff"])  # ECE gets its interval too
    assert "test_balanced_acc_vs_M1_p_holm" not in results  # secondary: unadjusted
    md = (out / "results.md").read_text()
    assert "Primary endpoint: **QWK**" in md and "| AUROC % | QWK |" in md
    assert "Δ QWK (primary, adjusted)" in md and "Δ balanced accuracy (unadjusted)" in md
    # The primary endpoint cannot be one the task lacks: refused before any run.
    code, _, err = cli("compare", "--dataset", "idrid", "--data-root", root, "--out",
                       tmp_path / "bad", "--primary-metric", "sens_at_spec", *GRID)
    assert code == 2 and "sens_at_spec does not apply to idrid" in err
    assert not list((tmp_path / "bad").rglob("metrics.json"))


def test_binary_tasks_report_the_sensitivity_and_the_specificity_reached(tmp_path, cli):
    root = fx.make_chest_xray(tmp_path, per_class=10, duplicate_tree=False)
    out = tmp_path / "grid"
    code, stdout, err = cli("compare", "--dataset", "chest_xray", "--data-root", root, "--out",
                            out, *GRID)
    assert code == 0, err
    m = json.loads((out / "M1" / "seed0" / "metrics.json").read_text())
    point = m["test"]["operating_point"]
    # val holds few NORMAL images: the target is one that they can reach (one false positive
    # allowed), and recorded.
    split = pd.read_csv(out / "M1" / "seed0" / "split.csv")
    negatives = ((split["split"] == "val") & (split["label"] == "NORMAL")).sum()
    assert 2 <= negatives < 20
    assert point["target_asked"] == 0.95
    assert point["target_specificity"] == pytest.approx((negatives - 1) / negatives)
    assert "sens_at_spec" in m["test"] and point["chosen_on"] == "val"
    results = pd.read_csv(out / "results.csv").set_index("model")
    assert (results["primary_metric"] == "auroc").all()
    assert not np.isnan(results.at["M2", "test_sens_at_spec_vs_M1_diff"])
    assert results.at["M1", "test_spec_reached_mean"] == pytest.approx(
        np.mean([json.loads((out / "M1" / f"seed{s}" / "metrics.json").read_text())
                 ["test"]["operating_point"]["specificity"] for s in (0, 1)]))
    md = (out / "results.md").read_text()
    assert "specificity % reached on test" in md and "% val specificity" in md
    assert "Primary endpoint: **AUROC** (declared before the runs, the task's default)" in md
    # Judged later by another endpoint: said to be chosen after the runs.
    code, stdout, err = cli("report", out, "--primary-metric", "sens_at_spec")
    assert code == 0, err
    assert "chosen after the runs with --primary-metric: the grid declared AUROC" in stdout
    assert (pd.read_csv(out / "results.csv")["primary_metric"] == "sens_at_spec").all()
    # One the task lacks is refused with the ones it has, not an internal error.
    code, _, err = cli("report", out, "--primary-metric", "qwk")
    assert code == 2 and "--primary-metric qwk does not apply to this task" in err
    assert "auroc" in err and "sens_at_spec" in err


def row_with(diff, low, high, p, mde=0.1, model="M2"):
    """A results row whose primary comparison with M1 has these numbers (fractions)."""
    key = "test_balanced_acc_vs_M1"
    return pd.Series({"model": model, "base": None, "primary_metric": "balanced_acc",
                      f"{key}_diff": diff, f"{key}_low_holm": low, f"{key}_high_holm": high,
                      f"{key}_p_holm": p, f"{key}_mde": mde})


@pytest.mark.parametrize("diff, low, high, p, kind, said, never", [
    (0.05, 0.01, 0.09, 0.01, "supported", "**M2 is ahead of M1**", "equivalent"),
    (-0.05, -0.09, -0.01, 0.01, "supported", "**M2 is behind M1**", "inconclusive"),
    (0.004, -0.012, 0.015, 0.6, "equivalent", "equivalent within ±2 points", "ahead"),
    # Inside 0 but wider than the margin: not "level", not "equivalent", and the MDE is said.
    (0.01, -0.03, 0.05, 0.5, "inconclusive", "detect a difference of about 10.0 points", "equivalent"),
])
def test_each_sentence_claims_what_its_interval_allows(diff, low, high, p, kind, said, never):
    found_kind, sign, text = verdict(row_with(diff, low, high, p), "M1", margin=0.02)
    assert found_kind == kind and said in text and never not in text
    assert "level" not in text and "no difference" not in text
    assert sign == (1 if diff > 0 else -1)


def test_the_best_is_shown_ahead_only_of_the_models_it_was_compared_with():
    from medssl.report.answer import best_line

    rows = pd.DataFrame([{"model": "M1", "test_balanced_acc_mean": 0.60},
                         {"model": "M2", "test_balanced_acc_mean": 0.65},
                         {"model": "M4", "test_balanced_acc_mean": 0.64}])
    ahead = {("M2", "M1"): ("supported", 1, "")}
    said = best_line(rows, "balanced_acc", ahead)
    # Ahead of M1, and M4 named as not compared: never "the best" of all.
    assert "is shown ahead of M1" in said and "not compared with M4" in said
    assert "every" not in said
    unclear = {("M2", "M1"): ("inconclusive", 1, "")}
    assert "no difference from it is supported" in best_line(rows, "balanced_acc", unclear)
    # The top model as the reference of another row: its sign is turned.
    behind = {("M4", "M2"): ("supported", -1, "")}
    assert "is shown ahead of M4" in best_line(rows, "balanced_acc", behind)
    # Nothing compared: nothing claimed; no mean at all: said.
    assert "nothing is shown either way" in best_line(rows, "balanced_acc", {})
    empty = rows.assign(test_balanced_acc_mean=np.nan)
    assert "no answer" in best_line(empty, "balanced_acc", {})


def test_one_seed_claims_no_difference():
    # An interval far from 0, but over one seed: the test images' variance alone.
    row = row_with(0.2, 0.1, 0.3, 0.001)
    row["vs_M1_seeds"] = 1
    kind, _, text = verdict(row, "M1", margin=0.02)
    assert kind == "inconclusive" and "no difference is claimed" in text and "ahead" not in text


def test_a_margin_set_after_the_runs_is_said_to_be(tmp_path):
    from medssl.options import AnalysisOptions
    from medssl.report.tables import judged_by
    from medssl.runs import declare_analysis

    runs = pd.DataFrame({"ordinal": [False], "n_classes": [3], "positive_index": [np.nan]})
    declare_analysis(tmp_path, AnalysisOptions())
    _, margin, _, how = judged_by(runs, tmp_path, AnalysisOptions(equivalence_margin=50))
    assert margin == 0.5 and "chosen after the runs with --equivalence-margin" in how
    _, margin, _, how = judged_by(runs, tmp_path, AnalysisOptions())
    assert margin == 0.02 and how == "declared before the runs"
