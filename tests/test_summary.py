"""Across datasets (medssl.report.summary): mean ranks, Friedman, Wilcoxon with Holm."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from medssl.data import fixtures as fx
from medssl.report.summary import (mean_ranks, pairwise_wilcoxon, smallest_possible_p,
                                   summarise_grids)
from tests.test_finetune import FAST


def synthetic_tables():
    # 5 datasets, 3 models: M3 best everywhere, M1 worst everywhere but on the last.
    acc = {"d1": (0.60, 0.70, 0.80), "d2": (0.50, 0.55, 0.65), "d3": (0.70, 0.72, 0.90),
           "d4": (0.40, 0.45, 0.50), "d5": (0.66, 0.65, 0.70)}
    tables = {}
    for d, values in acc.items():
        rows = [{"label_fraction": 1.0, "model": m, "test_acc_sd": 0.01,
                 **{f"test_{k}_mean": v for k in ("acc", "balanced_acc", "macro_f1", "auroc")}}
                for m, v in zip(("M1", "M2", "M3"), values)]
        tables[d] = pd.DataFrame(rows)
    return tables, acc


def test_ranks_and_tests_match_scipy_on_a_synthetic_case():
    tables, acc = synthetic_tables()
    frame, md = summarise_grids(tables)
    ranks = frame[(frame["kind"] == "mean_rank") & (frame["metric"] == "test_acc")]
    assert ranks.set_index("model")["mean_rank"].to_dict() == pytest.approx(
        {"M3": 1.0, "M2": (2 * 4 + 3) / 5, "M1": (3 * 4 + 2) / 5})
    friedman = frame[(frame["kind"] == "friedman") & (frame["metric"] == "test_acc")].iloc[0]
    by_model = np.array(list(acc.values())).T
    chi2 = stats.friedmanchisquare(*by_model)
    assert friedman["p_chi2"] == pytest.approx(chi2.pvalue)
    # Iman-Davenport, by hand: N = 5 datasets, k = 3 models.
    n, k = 5, 3
    f = (n - 1) * chi2.statistic / (n * (k - 1) - chi2.statistic)
    assert friedman["p"] == pytest.approx(stats.f.sf(f, k - 1, (k - 1) * (n - 1)))
    assert friedman["p"] < friedman["p_chi2"]  # the chi-square form is conservative here
    pairs = frame[(frame["kind"] == "wilcoxon") & (frame["metric"] == "test_acc")]
    m1_m3 = pairs[(pairs["model"] == "M1") & (pairs["other"] == "M3")].iloc[0]
    # M3 wins on all 5: the exact test's smallest possible p, 2 / 2^5.
    assert m1_m3["p"] == pytest.approx(smallest_possible_p(5)) == pytest.approx(0.0625)
    assert m1_m3["losses"] == 5 and m1_m3["p_holm"] >= m1_m3["p"]
    assert "cannot give a p-value below 0.0625" in md
    assert "with 5 datasets no pairwise difference can reach p < 0.05" in md


def test_the_limits_sentence_uses_the_real_number_of_datasets():
    from medssl.report.summary import limits_statement

    two, seven = limits_statement(2), limits_statement(7)
    assert "2 in all" in two and "below 0.5 " in two and "with 2 datasets no pairwise" in two
    # 7 datasets can reach 0.0156: the sentence must not say they cannot.
    assert "7 in all" in seven and "below 0.0156" in seven and "no pairwise" not in seven


def test_mean_ranks_share_ties():
    scores = pd.DataFrame({"A": [0.5, 0.9], "B": [0.5, 0.8]}, index=["d1", "d2"])
    assert mean_ranks(scores).to_dict() == {"A": 1.25, "B": 1.75}
    assert len(pairwise_wilcoxon(scores)) == 1


def test_the_summary_is_built_from_two_grids(tmp_path, cli):
    grids = []
    for make, name in ((fx.make_covid19, "covid19"), (fx.make_chest_xray, "chest_xray")):
        root = make(tmp_path / name, per_class=6)
        out = tmp_path / f"grid-{name}"
        code, _, err = cli("compare", "--dataset", name, "--data-root", root, "--models", "M1",
                           "M2", "--seeds", "0", "--epochs", "1", "--ssl-epochs", "1", "--lr",
                           "1e-3", "--out", out, *FAST)
        assert code == 0, err
        grids.append(out)
    code, _, err = cli("report", *grids)
    assert code == 2 and "needs --out" in err
    code, stdout, err = cli("report", *grids, "--out", tmp_path / "summary")
    assert code == 0, err
    summary = pd.read_csv(tmp_path / "summary" / "summary.csv")
    ranks = summary[summary["kind"] == "mean_rank"]
    assert {"covid19", "chest_xray"} <= set(summary.columns)
    assert sorted(ranks.loc[ranks["metric"] == "test_acc", "model"]) == ["M1", "M2"]
    assert "Friedman" in stdout and "not run: needs at least 3 models" in stdout
    assert (tmp_path / "summary" / "summary_accuracy.png").is_file()
    bars = pd.read_csv(tmp_path / "summary" / "summary_accuracy.csv")  # the figure's numbers
    assert len(bars) == 4 and set(bars["dataset"]) == {"covid19", "chest_xray"}
    # One page for the summary: its tables, and each dataset's own answer with its forest plot,
    # every image inlined.
    page = (tmp_path / "summary" / "report.html").read_text()
    assert "Each dataset&#39;s own answer" in page or "Each dataset's own answer" in page
    assert page.count("data:image/png;base64,") == 3 and 'src="../' not in page
    assert (tmp_path / "summary" / "summary.md").read_text() in stdout
