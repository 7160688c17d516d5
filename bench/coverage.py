"""How often the paired interval excludes 0 when two priors are equal: medssl's crossed design
(medssl.report.statistics: a shared group bootstrap for the images, the seeds' spread, t) against
the nested bootstrap it replaced and the pigeonhole bootstrap (seeds and groups both resampled),
on simulated studies.

    python bench/coverage.py                  # 1000 null studies per setting, a few minutes
    python bench/coverage.py --trials 200 --json coverage.json

A simulated study: test images drawn from a population, each model finetuned with several seeds
and scored on the same test images. Whether model M with seed k gets image i right is
    1[mu + a_i + b_Mi + s_Mk + e_Mki > 0]
with a_i the image's difficulty (shared by every model), b_Mi how much the image suits prior M
(shared by all of M's seeds: the image-by-prior interaction that makes seeds and images
crossed), s_Mk the seed's luck and e_Mki the rest. Both priors have the same distribution, so
the true difference is 0, and a 95% interval should exclude 0 in about 5% of studies.
It also checks the two properties the nested design broke: five copies of one seed must give
the interval of that one seed, and images filed as groups of copies must widen it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medssl.report.statistics import group_weights, paired_difference  # noqa: E402


def probs_from(right: np.ndarray, labels: np.ndarray, rng, n_classes: int = 2) -> np.ndarray:
    """Probabilities whose top class is the label where `right`, another class elsewhere."""
    n = len(labels)
    probs = rng.random((n, n_classes)) * 0.1
    top = np.where(right, labels, (labels + 1 + rng.integers(0, n_classes - 1, n)) % n_classes)
    probs[np.arange(n), top] += 1
    return probs / probs.sum(1, keepdims=True)


def simulate(rng, n_images: int, n_seeds: int, sd_prior_image: float, sd_seed: float,
             copies: int = 1) -> tuple[np.ndarray, list, list, np.ndarray]:
    """One null study: labels, seeds x probs for A and B, and the group of each test image
    (`copies` > 1 files every picture that many times, with identical predictions)."""
    n_pictures = n_images // copies
    labels = rng.integers(0, 2, n_pictures)
    a = rng.normal(0, 1, n_pictures)
    models = []
    for _ in range(2):
        b = rng.normal(0, sd_prior_image, n_pictures)
        runs = []
        for _ in range(n_seeds):
            right = 0.8 + a + b + rng.normal(0, sd_seed) + rng.normal(0, 0.5, n_pictures) > 0
            runs.append(np.repeat(probs_from(right, labels, rng), copies, axis=0))
        models.append(runs)
    return np.repeat(labels, copies), models[0], models[1], np.repeat(np.arange(n_pictures), copies)


def interval(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates."""
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return float(low), float(high)


def right_of(labels, probs) -> np.ndarray:
    return np.stack([p.argmax(1) == labels for p in probs]).astype(float)


def nested_difference(labels, probs_a, probs_b, resamples, seed) -> np.ndarray:
    """The replaced design, for the record: a fresh image resample for every drawn seed."""
    rng = np.random.default_rng(seed)
    n_seeds, n = len(probs_a), len(labels)
    right_a, right_b = right_of(labels, probs_a), right_of(labels, probs_b)
    seeds = rng.integers(0, n_seeds, (resamples, n_seeds))
    total = np.zeros(resamples)
    for slot in range(n_seeds):
        w = rng.multinomial(n, np.full(n, 1 / n), resamples) / n
        k = seeds[:, slot]
        total += ((w * right_a[k]).sum(1) - (w * right_b[k]).sum(1)) / n_seeds
    return total


def pigeonhole_difference(labels, probs_a, probs_b, groups, resamples, seed) -> np.ndarray:
    """Seeds and groups both resampled, one group resample shared by all seeds (Owen 2007)."""
    rng = np.random.default_rng(seed)
    n_seeds = len(probs_a)
    d = right_of(labels, probs_a) - right_of(labels, probs_b)  # seeds x images
    share = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), resamples) / n_seeds
    w = group_weights(groups, rng, resamples)
    return (share * ((w @ d.T) / w.sum(1)[:, None])).sum(1)


def null_rates(trials: int, n_images: int, n_seeds: int, sd_prior_image: float,
               sd_seed: float, resamples: int, seed: int) -> dict:
    """Share of null studies whose 95% interval excludes 0, for each design."""
    rng = np.random.default_rng(seed)
    rejects = {"medssl": 0, "pigeonhole": 0, "nested": 0}
    for t in range(trials):
        labels, a, b, groups = simulate(rng, n_images, n_seeds, sd_prior_image, sd_seed)
        r = paired_difference(labels, a, b, resamples, seed=t, metrics=("acc",))["acc"]
        rejects["medssl"] += not (r["low"] <= 0 <= r["high"])
        for name, draws in (("nested", nested_difference(labels, a, b, resamples, t)),
                            ("pigeonhole", pigeonhole_difference(labels, a, b, groups,
                                                                 resamples, t))):
            low, high = interval(draws)
            rejects[name] += not (low <= 0 <= high)
    return {"trials": trials, "images": n_images, "seeds": n_seeds,
            "sd_prior_image": sd_prior_image, "sd_seed": sd_seed,
            **{f"{k}_rejects": v / trials for k, v in rejects.items()}}


def copied_seed_ratios(resamples: int, seed: int = 0) -> dict:
    """Interval width with one seed's predictions copied five times, over the width with it
    once (the crossed design must give 1; the nested one gave about 1/sqrt(5))."""
    rng = np.random.default_rng(seed)
    labels, a, b, _ = simulate(rng, 300, 1, 0.5, 0.1)
    one = paired_difference(labels, a, b, resamples, metrics=("acc",))["acc"]
    five = paired_difference(labels, a * 5, b * 5, resamples, metrics=("acc",))["acc"]
    width = lambda r: r["high"] - r["low"]  # noqa: E731
    nested_one = interval(nested_difference(labels, a, b, resamples, 0))
    nested_five = interval(nested_difference(labels, a * 5, b * 5, resamples, 0))
    return {"medssl_width_ratio_5_copies": width(five) / width(one),
            "nested_width_ratio_5_copies": (nested_five[1] - nested_five[0])
            / (nested_one[1] - nested_one[0])}


def grouped_ratio(resamples: int, seed: int = 0) -> dict:
    """Interval width resampling groups of 3 copies of a picture, over resampling images as
    if each copy were a new picture (one seed: the image part alone; sqrt(3) expected)."""
    rng = np.random.default_rng(seed)
    labels, a, b, groups = simulate(rng, 300, 1, 0.5, 0.1, copies=3)
    by_group = paired_difference(labels, a, b, resamples, groups=groups, metrics=("acc",))["acc"]
    by_image = paired_difference(labels, a, b, resamples, metrics=("acc",))["acc"]
    return {"grouped_width_ratio_3_copies": (by_group["high"] - by_group["low"])
            / (by_image["high"] - by_image["low"])}


# (sd of the image-by-prior effect, sd of the seed effect): image-dominated, both, seed-dominated.
SETTINGS = [(0.5, 0.05), (0.5, 0.15), (0.2, 0.3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    started = time.time()
    results = {"settings": []}
    for n_seeds in args.seeds:
        for k, (sd_b, sd_s) in enumerate(SETTINGS):
            row = null_rates(args.trials, args.images, n_seeds, sd_b, sd_s, args.resamples, k)
            results["settings"].append(row)
            print(f"{n_seeds} seeds, sd image x prior {sd_b}, sd seed {sd_s}: the 95% interval "
                  f"excludes 0 in {row['medssl_rejects']:.1%} (medssl), "
                  f"{row['pigeonhole_rejects']:.1%} (pigeonhole), {row['nested_rejects']:.1%} "
                  f"(nested) of {args.trials} null studies", flush=True)
    results.update(copied_seed_ratios(args.resamples))
    results.update(grouped_ratio(args.resamples))
    results["seconds"] = round(time.time() - started, 1)
    for key in ("medssl_width_ratio_5_copies", "nested_width_ratio_5_copies",
                "grouped_width_ratio_3_copies"):
        print(f"{key}: {results[key]:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
