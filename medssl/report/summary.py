"""Across datasets: `medssl report runs/ham10000 runs/isic ... --out DIR`.

Each grid's own table says how the models compare on one dataset, with intervals over seeds and
test images. Whether a ranking holds across datasets is another question, asked of the datasets
themselves (each one observation): each model's mean rank per metric, a Friedman test over the
datasets with Iman and Davenport's F form of its p (the chi-square approximation is too
conservative for few datasets, Demšar 2006), and pairwise Wilcoxon signed-rank tests (exact),
Holm-adjusted. With five datasets these tests have little power, and summary.md says so in
numbers.
"""

from __future__ import annotations

import math
import os
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from medssl.atomic import atomic_write
from medssl.errors import MedsslError
from medssl.report.build import build_report
from medssl.report.curves import colours
from medssl.report.figure_io import legend_outside, pyplot, save_figure
from medssl.report.html import write_html
from medssl.report.statistics import holm
from medssl.report.tables import by_protocol, collect_runs, judged_by, summarise

METRICS = {"test_acc": "test accuracy", "test_balanced_acc": "balanced accuracy",
           "test_macro_f1": "macro-F1", "test_auroc": "AUROC"}


def dataset_scores(tables: dict[str, pd.DataFrame], frac: float, metric: str) -> pd.DataFrame:
    """datasets x models: the mean over seeds of `metric` at label fraction `frac`."""
    columns = {}
    for dataset, table in tables.items():
        rows = table[table["label_fraction"] == frac]
        columns[dataset] = rows.set_index("model")[f"{metric}_mean"]
    return pd.DataFrame(columns).T


def mean_ranks(scores: pd.DataFrame) -> pd.Series:
    """Rank 1 is the best model of a dataset (ties share the mean rank); averaged over datasets."""
    ranks = scores.apply(lambda row: pd.Series(stats.rankdata(-row.to_numpy()), index=row.index),
                         axis=1)
    return ranks.mean()


def friedman(scores: pd.DataFrame) -> dict:
    """Friedman's test that all models rank alike over the datasets, or why it was not run. The
    statistic is scipy's (ties corrected); its p comes from Iman and Davenport's F form,
    F = (N - 1) chi2 / (N (k - 1) - chi2) on (k - 1, (k - 1)(N - 1)) degrees of freedom, which
    holds its level on few datasets where the chi-square approximation is conservative
    (`p_chi2` is kept beside it)."""
    n_datasets, n_models = scores.shape
    if n_models < 3 or n_datasets < 2:
        return {"statistic": math.nan, "p": math.nan, "p_chi2": math.nan,
                "note": f"not run: needs at least 3 models and 2 datasets ({n_models} and "
                        f"{n_datasets} here)"}
    result = stats.friedmanchisquare(*[scores[m].to_numpy() for m in scores.columns])
    chi2, k, n = float(result.statistic), n_models, n_datasets
    denominator = n * (k - 1) - chi2
    if denominator <= 0:  # every dataset ranks the models alike: F is infinite
        p = 0.0
    else:
        p = float(stats.f.sf((n - 1) * chi2 / denominator, k - 1, (k - 1) * (n - 1)))
    return {"statistic": chi2, "p": p, "p_chi2": float(result.pvalue),
            "note": f"{n} datasets, {k} models; Iman-Davenport F (chi-square approximation: "
                    f"p = {float(result.pvalue):.3g})"}


def pairwise_wilcoxon(scores: pd.DataFrame) -> pd.DataFrame:
    """Each pair of models, paired by dataset: median difference, Wilcoxon signed-rank p (exact
    for few datasets) and the smallest p that many datasets can give at all."""
    rows = []
    n = len(scores)
    for a, b in combinations(scores.columns, 2):
        diff = (scores[a] - scores[b]).to_numpy()
        if n < 2 or np.all(diff == 0):
            p, statistic = math.nan, math.nan
        else:
            result = stats.wilcoxon(scores[a], scores[b], zero_method="zsplit")
            p, statistic = float(result.pvalue), float(result.statistic)
        rows.append({"model": a, "other": b, "median_diff": float(np.median(diff)),
                     "wins": int((diff > 0).sum()), "losses": int((diff < 0).sum()),
                     "statistic": statistic, "p": p})
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["p_holm"] = holm(frame["p"].to_numpy())
    return frame


def smallest_possible_p(n_datasets: int) -> float:
    """The smallest two-sided p an exact Wilcoxon signed-rank test can reach on n datasets
    (every difference of one sign): 2 / 2^n."""
    return min(1.0, 2 / 2 ** n_datasets)


def summarise_grids(tables: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, str]:
    """summary.csv's rows and summary.md's text, from each dataset's results table."""
    fractions = sorted(set.intersection(*[set(t["label_fraction"]) for t in tables.values()]),
                       reverse=True)
    if not fractions:
        raise MedsslError("The grids share no label fraction, so no model can be compared across "
                          "them. Fix: run `medssl compare` with the same --label-fractions.")
    n = len(tables)
    rows, md = [], [f"# Across {n} datasets: {', '.join(tables)}\n"]
    for frac in fractions:
        md.append(f"## Label fraction {frac:g}\n")
        for metric, title in METRICS.items():
            scores = dataset_scores(tables, frac, metric)
            missing = scores.columns[scores.isna().any()].tolist()
            scores = scores.dropna(axis=1)
            if scores.shape[1] < 2:
                md.append(f"{title}: fewer than two models were run on every dataset.\n")
                continue
            ranks = mean_ranks(scores)
            test = friedman(scores)
            pairs = pairwise_wilcoxon(scores)
            for model in scores.columns:
                rows.append({"kind": "mean_rank", "label_fraction": frac, "metric": metric,
                             "model": model, "mean_rank": ranks[model],
                             **{f"{d}": scores.at[d, model] for d in scores.index}})
            rows.append({"kind": "friedman", "label_fraction": frac, "metric": metric,
                         "statistic": test["statistic"], "p": test["p"],
                         "p_chi2": test["p_chi2"], "note": test["note"]})
            for _, pair in pairs.iterrows():
                rows.append({"kind": "wilcoxon", "label_fraction": frac, "metric": metric,
                             **pair.to_dict()})
            md.append(_metric_section(title, scores, ranks, test, pairs, missing))
    md.append(limits_statement(n))
    return pd.DataFrame(rows), "\n".join(md)


def _metric_section(title, scores, ranks, test, pairs, missing) -> str:
    order = ranks.sort_values().index
    head = ["model", "mean rank", *scores.index]
    lines = [f"### {title}\n", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in order:
        lines.append("| " + " | ".join([model, f"{ranks[model]:.2f}",
                                        *(f"{scores.at[d, model] * 100:.2f}" for d in scores.index)])
                     + " |")
    text = "\n".join(lines) + "\n"
    p = "—" if math.isnan(test["p"]) else f"{test['p']:.3g}"
    text += f"\nFriedman: p = {p} ({test['note']}).\n"
    if not pairs.empty:
        text += "\n| model | vs | wins / losses | median Δ (points) | Wilcoxon p | Holm p |\n" \
                "|---|---|---|---|---|---|\n"
        for _, r in pairs.iterrows():
            text += (f"| {r['model']} | {r['other']} | {r['wins']} / {r['losses']} | "
                     f"{r['median_diff'] * 100:+.2f} | {_p(r['p'])} | {_p(r['p_holm'])} |\n")
    if missing:
        text += f"\nLeft out (not run on every dataset): {', '.join(missing)}.\n"
    return text


def _p(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.3g}"


def limits_statement(n: int) -> str:
    smallest = smallest_possible_p(n)
    reach = (f"so with {n} datasets no pairwise difference can reach p < 0.05 across datasets, "
             "before any correction" if smallest >= 0.05 else
             f"so a pair can reach p < 0.05 only by winning on (nearly) every one of the {n} "
             "datasets, before the correction over pairs")
    return (
        "## What this can and cannot show\n\n"
        f"Each dataset is one observation here: {n} in all. A Wilcoxon signed-rank test on {n} "
        f"datasets cannot give a p-value below {smallest:.3g} even when one model wins on every "
        f"dataset, {reach}. Mean ranks and win counts describe "
        "these datasets; they do not generalise to other medical datasets, which differ in "
        "modality, size and label noise. Within one dataset, the intervals of its own results.md "
        "(over seeds and test groups) are the evidence; a consistent sign across datasets "
        "is supporting evidence, not a test. Scores are means over each grid's seeds; the "
        "datasets' grids must have been run with the same recipe to be compared at all.\n")


def figure(tables: dict[str, pd.DataFrame], frac: float, path: Path) -> Path:
    """Test accuracy per dataset and model, mean ± sd over seeds (like the study's Fig. 4); its
    CSV holds the bars."""
    plt = pyplot()
    means = dataset_scores(tables, frac, "test_acc")
    sds = pd.DataFrame({d: t[t["label_fraction"] == frac].set_index("model")["test_acc_sd"]
                        for d, t in tables.items()}).T
    models = list(means.columns)
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(means), 4))
    x = np.arange(len(means))
    colour = colours(models)
    for i, model in enumerate(models):
        ax.bar(x + i * width, means[model] * 100, width, yerr=sds[model].fillna(0) * 100,
               label=model, capsize=2, color=colour[model])
    ax.set_xticks(x + width * (len(models) - 1) / 2, means.index)
    ax.set_ylabel("test accuracy %")
    ax.set_title(f"Test accuracy per dataset, label fraction {frac:g} (mean ± sd over seeds)")
    ax.grid(axis="y", alpha=0.3)
    legend_outside(fig, *ax.get_legend_handles_labels())
    data = pd.DataFrame([{"dataset": d, "model": m, "label_fraction": frac,
                          "test_acc_mean": means.at[d, m], "test_acc_sd": sds.at[d, m]}
                         for d in means.index for m in models])
    return save_figure(fig, path, data)


def answers(grids: dict[str, Path], out: Path) -> str:
    """Each dataset's own answer (its results.md's, over its seeds and test images), its forest
    plot and a link to its own page, for the summary's page."""
    parts = ["## Each dataset's own answer\n"]
    for dataset, grid in grids.items():
        md = (grid / "results.md").read_text()
        answer = md[:md.find("\n## Results")] if "\n## Results" in md else md
        answer = answer.replace("## Answer", f"### {dataset}", 1)
        forest = grid / "forest.png"
        if forest.is_file():  # drawn by this rebuild (build_report removes a stale one)
            data = os.path.relpath(forest.with_suffix(".csv"), out)
            answer += (f"\n![{dataset}: paired differences]({os.path.relpath(forest, out)})\n\n"
                       f"*Its numbers: [forest.csv]({data})*\n")
        # The tables, recipe, skipped priors and data audit are on the dataset's own page.
        answer += (f"\n{dataset}'s own page, with its tables, recipe, skipped priors and data "
                   f"audit: [report.html]({os.path.relpath(grid / 'report.html', out)})\n")
        parts.append(answer)
    return "\n".join(parts)


def write_summary(grids: list[Path], out: Path, analysis=None) -> str:
    """Rebuild each grid's table, then summary.md, summary.csv and summary_accuracy.png in `out`."""
    tables, grids_of = {}, {}
    for grid in grids:
        build_report(grid, analysis=analysis)  # each grid's own table and figures, refreshed
        runs, _ = collect_runs(grid)
        if not (runs["protocol"] == "finetune").any():  # never one protocol against another
            raise MedsslError(f"{grid} holds no finetuned runs (its protocols: "
                              f"{', '.join(by_protocol(runs))}), and the summary across datasets "
                              "compares finetuned priors. Fix: run that grid with --protocols "
                              "finetune (and any others), or leave it out.")
        runs = runs[runs["protocol"] == "finetune"]
        dataset = runs["dataset"].iloc[0]
        if dataset in tables:
            raise MedsslError(f"Two grids hold {dataset} ({grid} and another): one grid per "
                              "dataset. Fix: pass each dataset's grid folder once.")
        tables[dataset] = summarise(runs, judged_by(runs, grid, analysis)[0])
        grids_of[dataset] = Path(grid)
    if len(tables) < 2:
        raise MedsslError("A summary across datasets needs at least two grids. Fix: pass two or "
                          "more grid folders (runs/ham10000 runs/isic ...).")
    frame, md = summarise_grids(tables)
    if frame.empty:
        models = sorted({m for t in tables.values() for m in t["model"]})
        raise MedsslError(f"The summary compares priors across datasets, and the grids hold "
                          f"{', '.join(models)} alone: nothing to compare. Fix: grids with two "
                          "or more models (the default M1-M4).")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fractions = sorted(frame["label_fraction"].unique(), reverse=True)
    figure(tables, fractions[0], out / "summary_accuracy.png")
    md += "\n![test accuracy per dataset](summary_accuracy.png)\n"
    atomic_write(out / "summary.csv", lambda p: frame.to_csv(p, index=False))
    atomic_write(out / "summary.md", lambda p: p.write_text(md))
    title, _, body = md.partition("\n")  # the page's title is summary.md's first line
    write_html(out / "report.html", title.lstrip("# "), body + "\n" + answers(grids_of, out),
               [out / "summary_accuracy.png"])
    return md
