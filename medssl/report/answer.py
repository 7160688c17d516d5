"""`## Answer`: the results table's verdict in plain words, generated from its numbers.

Every sentence is bound by an interval: a difference is called supported only where its
Holm-adjusted interval excludes 0; an equivalence only where that interval lies inside the
margin (`--equivalence-margin`, default 2 points); anything else is inconclusive, with the
smallest difference this test set and these seeds would detect (80% power). "Level" or "no
difference" is never said of an interval that merely contains 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medssl.report.comparisons import METRIC_TITLES, REFERENCES

FEW_SEEDS = 5  # below this many seeds, the seed-to-seed variance is poorly estimated


def pts(value: float) -> str:
    return f"{value * 100:+.1f}"


def verdict(row: pd.Series, ref: str, margin: float) -> tuple[str, int, str] | None:
    """(kind, sign, sentence) of the row's primary comparison with `ref`: kind supported,
    equivalent or inconclusive, sign +1 where the row's model is ahead; None where there is no
    such comparison."""
    key = f"test_{row['primary_metric']}_vs_{ref}"
    diff = row.get(f"{key}_diff", np.nan)
    if np.isnan(diff):
        return None
    low, high, p = row[f"{key}_low_holm"], row[f"{key}_high_holm"], row[f"{key}_p_holm"]
    other = f"{row['base']} trained alone" if ref == "base" else ref
    span = f"{pts(diff)} points [{pts(low)}, {pts(high)}]"
    sign = 1 if diff > 0 else -1
    if row.get(f"vs_{ref}_seeds", 2) < 2:  # the interval holds the test images' variance only
        return "inconclusive", sign, (f"{row['model']} vs {other}: {span} over the test images "
                                      "alone; with one seed the seed-to-seed variance is not "
                                      "estimated, so no difference is claimed.")
    if low > 0 or high < 0:
        word = "ahead of" if low > 0 else "behind"
        return "supported", 1 if low > 0 else -1, (f"**{row['model']} is {word} {other}**: "
                                                     f"{span}, adjusted p = {p:.2g}.")
    if -margin < low and high < margin:
        return "equivalent", sign, (f"{row['model']} and {other} are equivalent within "
                                    f"±{margin * 100:g} points: {span}.")
    mde = row.get(f"{key}_mde", np.nan)
    return "inconclusive", sign, (f"{row['model']} vs {other}: inconclusive, {span}; this test "
                                  "set and "
                                  f"these seeds detect a difference of about {abs(mde) * 100:.1f} "
                                  "points with 80% power, and a smaller one could be missed.")


def best_line(rows: pd.DataFrame, primary: str, verdicts: dict) -> str:
    """Which prior has the highest mean on the primary endpoint, and what the comparisons say
    about it: shown ahead only of the models it was compared with, which are named, as are the
    ones it was not compared with."""
    title = METRIC_TITLES[primary]
    scored = rows.dropna(subset=[f"test_{primary}_mean"])
    if scored.empty:
        return f"No model has a {title} on this test split, so there is no answer on it."
    top = scored.sort_values(f"test_{primary}_mean", ascending=False).iloc[0]
    value = top[f"test_{primary}_mean"]
    mean = f"{value:.3f}" if primary == "qwk" else f"{value * 100:.1f}%"
    name = top["model"]
    # Where `name` is the row's model, ahead means sign +1; where it is the reference, -1.
    own = {(ref if model == name else model): (kind, sign if model == name else -sign)
           for (model, ref), (kind, sign, _) in verdicts.items() if name in (model, ref)}
    ahead = sorted(other for other, (kind, sign) in own.items() if kind == "supported" and sign > 0)
    others = [m for m in scored["model"] if m != name]
    unpaired = [m for m in others if m not in own]
    said = f"{name} has the highest mean {title} ({mean})"
    if not own:
        return (f"{said}; it was not compared with any other model here (comparisons are with "
                "M1, M3 and a model's own base), so nothing is shown either way.")
    not_compared = (f" It was not compared with {', '.join(unpaired)}, so it is not shown ahead "
                    "of them." if unpaired else "")
    if len(ahead) == len(own):
        return f"{said} and is shown ahead of {', '.join(ahead)}.{not_compared}"
    if ahead:
        return (f"{said}; it is shown ahead of {', '.join(ahead)}, not of "
                f"{', '.join(sorted(set(own) - set(ahead)))}.{not_compared}")
    return (f"{said}, but no difference from it is supported: these data do not pick a winner "
            f"among the models compared with it, and give no reason to pay for a costlier "
            f"prior.{not_compared}")


def cost_line(rows: pd.DataFrame, primary: str, grid_size: int) -> str:
    """What each prior cost over all its seeds (images seen in pretraining, and in finetuning
    with its learning-rate search, `grid_size` runs per seed; GPU-hours where measured) beside
    the points it gained over M1 on the primary endpoint."""
    parts = []
    for _, r in rows.iterrows():
        pretrainings = 1 if r["sd_includes"] == "finetuning (one pretraining)" else r["seeds"]
        searched = grid_size if r["lr_searched"] else 1
        hours = np.nansum([r["pretrain_gpu_hours_mean"], r["finetune_gpu_hours_mean"]])
        gpu = (f", {hours:.2f} GPU-h" if not np.isnan([r["pretrain_gpu_hours_mean"],
                                                        r["finetune_gpu_hours_mean"]]).all()
               else "")
        gain = r.get(f"test_{primary}_vs_M1_diff", np.nan)
        gained = "" if np.isnan(gain) else f": {pts(gain)} points vs M1"
        parts.append(f"{r['model']} {r['pretrain_images_seen_mean'] * pretrainings:,.0f} "
                     f"pretraining + {r['finetune_images_seen_mean'] * r['seeds'] * searched:,.0f}"
                     f" finetuning images{gpu}{gained}")
    return ("Cost against gain (images seen over all seeds, the learning-rate search included; "
            "ImageNet's own pretraining not counted): " + "; ".join(parts) + ".")


def unlearned_priors(runs: pd.DataFrame) -> dict[str, list[str]]:
    """The models whose pretraining (of any seed) ended at or below a random init on its val
    read-outs, with each such seed's gain in points."""
    out: dict[str, list[str]] = {}
    for _, r in runs[runs["prior_learned"].eq(False)].iterrows():
        seen = f"seed {r['seed']}: {r['prior_gain']:+.1f}"
        if seen not in out.setdefault(r["model"], []):
            out[r["model"]].append(seen)
    return out


def answer(summary: pd.DataFrame, runs: pd.DataFrame, margin: float, declared: str,
           margin_how: str = "declared before the runs") -> str:
    """The `## Answer` section of results.md."""
    primary = summary["primary_metric"].iloc[0]
    grids = runs["lr_grid"].dropna()
    grid_size = len(grids.iloc[0].split()) if len(grids) else 1
    seeds = int(summary["seeds"].min())
    test_n = int(runs["test_n"].max())
    groups = summary[[c for c in summary if c.endswith("_groups")]].max().max()
    lines = ["## Answer\n",
             f"Primary endpoint: **{METRIC_TITLES[primary]}** ({declared}). Test split: {test_n} "
             f"images" + (f" in {groups:.0f} groups (patients, lesions or copies of one "
                          "picture, resampled together)" if groups < test_n else "")
             + f"; {seeds} seed(s) per model at least. Differences in points, with intervals "
             f"Holm-adjusted over the table's {int(summary['primary_family'].iloc[0])} primary "
             f"comparison(s). Equivalence margin: ±{margin * 100:g} points ({margin_how}).\n"]
    for frac, rows in summary.groupby("label_fraction", sort=False):
        verdicts = {}
        for _, r in rows.iterrows():
            for ref in (*REFERENCES, "base"):
                if ref == "base" and r.get("base") in REFERENCES:
                    continue
                found = verdict(r, ref, margin)
                if found:
                    verdicts[(r["model"], r["base"] if ref == "base" else ref)] = found
        what = "all the labels" if frac == 1 else f"{frac * 100:g}% of the labels"
        lines.append(f"**With {what}:** " + best_line(rows, primary, verdicts) + "\n")
        for kind in ("supported", "equivalent", "inconclusive"):
            lines += [f"- {text}" for k, _, text in verdicts.values() if k == kind]
        lines.append("\n" + cost_line(rows, primary, grid_size) + "\n")
    if seeds < 2:
        lines.append("With one seed the seed-to-seed variance is not estimated at all: the "
                     "intervals cover the test images only and understate the uncertainty, so "
                     "no difference is claimed. Run three or more seeds (`--seeds 0 1 2`).\n")
    elif seeds < FEW_SEEDS:
        lines.append(f"With {seeds} seed(s) per model the seed-to-seed variance is poorly "
                     f"estimated ({max(seeds - 1, 0)} degree(s) of freedom): the intervals use a "
                     "t quantile for it, which widens them where seeds disagree. Five or more "
                     "seeds give a firmer answer.\n")
    unlearned = unlearned_priors(runs)
    if unlearned:  # a difference of such a row is the recipe's, whatever its verdict above
        lines.append(f"{', '.join(unlearned)}: the pretraining ended at or below a random init "
                     "of the network on its val read-outs (‡ in the table), so what is said of "
                     "it above measures that pretraining recipe, not the method.\n")
    lines.append("Secondary metrics (the differences table) are unadjusted and describe; they do "
                 "not add findings. Nothing here holds beyond this split, these images and this "
                 "recipe (docs/statistics.md).\n")
    return "\n".join(lines)
