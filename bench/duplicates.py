"""Duplicate-search benchmark: false alarms, copies found, and what the search costs `check`.

    python bench/duplicates.py                  # about 5 minutes on 2 cores
    python bench/duplicates.py --json dup.json  # also as one JSON object

1. False alarms on pictures that are similar but different (every pair of each set):
   scikit-learn's handwritten digits (1,797 real scans, 10 look-alike classes), chest-X-ray
   look-alikes (`fixtures.xray_like`: one anatomy, 300 patients), the demo's lesions, and
   scikit-image's LFW faces where scikit-image is installed.
2. Copies found: of each set's first pictures, copies re-saved as PNG, resized and re-encoded,
   cropped, both, and harsher ones (3% crops, 40% size, JPEG quality 60).
3. `medssl check` on the full-size fixtures of the five layouts, each a fresh process as a
   user runs it, with the duplicate search and without it (the same decode pass, fingerprints
   and search switched off), interleaved, each first in turn, median of 5.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from medssl.data import fixtures as fx
from medssl.data.duplicates import THUMB, _thumb, candidate_pairs, find_duplicates, gate, similarity
from medssl.data.images import inspect_images

COPIES = {
    "png": lambda img, rng: fx.copy_of(img, "png", rng),
    "resized": lambda img, rng: fx.copy_of(img, "resized", rng),
    "cropped": lambda img, rng: fx.copy_of(img, "cropped", rng),
    "both": lambda img, rng: fx.copy_of(img, "both", rng),
    "crop3%_q60": lambda img, rng: harsh(img, rng, crop=0.03, scale=0.8, quality=60),
    "size40%_q60": lambda img, rng: harsh(img, rng, crop=0.0, scale=0.4, quality=60),
}


def harsh(img: Image.Image, rng, crop: float, scale: float, quality: int) -> bytes:
    w, h = img.size
    if crop:
        l, t, r, b = rng.uniform(0, crop, 4)
        img = img.crop((int(l * w), int(t * h), w - int(r * w), h - int(b * h)))
    img = img.resize((max(8, round(img.size[0] * scale)), max(8, round(img.size[1] * scale))),
                     Image.BICUBIC)
    return fx.encode(img.convert("RGB"), "JPEG", quality=quality)


def look_alike_sets(tmp: Path) -> dict[str, list[Image.Image]]:
    from sklearn.datasets import load_digits

    from medssl.data import DataConfig
    from medssl.data.prepare import read_layout

    digits = load_digits()
    sets = {"digits (real, 32 px)": [Image.fromarray((d * 255 / 16).astype(np.uint8)).resize(
        (32, 32), Image.BICUBIC) for d in digits.images]}
    sets["chest X-ray look-alikes (256 px)"] = [fx.xray_like(seed, 256) for seed in range(300)]
    os.environ["MEDSSL_CACHE_DIR"] = str(tmp / "cache")
    _, demo = read_layout(DataConfig("demo"))
    sets["demo lesions (96 px)"] = [Image.open(demo.root / p).convert("RGB")
                                    for p in demo.samples["path"]]
    try:
        from skimage.data import lfw_subset

        faces = lfw_subset()[:100]  # the first 100 are faces, 25x25 grey
        sets["LFW faces (real, 25 px)"] = [Image.fromarray((f * 255).astype(np.uint8)) for f in faces]
    except ImportError:
        pass
    return sets


def write_set(folder: Path, images: list[Image.Image]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, img in enumerate(images):
        img.save(folder / f"{i:04d}.png")
        names.append(f"{i:04d}.png")
    return names


def search(folder: Path) -> list:
    names = sorted(p.name for p in folder.iterdir())
    _, prints = inspect_images(folder, names, progress=False)
    return find_duplicates(folder, prints)


def candidate_statistics(folder: Path, pairs_of=None) -> dict:
    """Over pHash candidate pairs (all of them, or those `pairs_of` keeps): how many, how many
    pass the 32-px gate, and the 64-px comparison's two numbers - the highest detail
    correlation and the lowest residual seen (different pictures), or the other ends (copies)."""
    names = sorted(p.name for p in folder.iterdir())
    _, prints = inspect_images(folder, names, progress=False)
    listed = [prints[n] for n in names]
    pairs = candidate_pairs(np.array([f.phash for f in listed], dtype=np.uint64))
    pairs = np.array([(i, j) for i, j in pairs if pairs_of is None or pairs_of(names[i], names[j])],
                     dtype=int).reshape(-1, 2)
    gated = gate(listed, pairs)
    thumbs = {i: _thumb(folder / names[i], THUMB) for i in np.unique(pairs)}
    stats = [similarity(thumbs[i], thumbs[j]) for i, j in pairs]
    if not stats:
        return {"candidates": 0}
    detail, residual = zip(*stats)
    return {"candidates": len(stats), "past_gate": len(gated), "detail_max": round(max(detail), 3),
            "detail_min": round(min(detail), 3), "residual_min": round(min(residual), 3),
            "residual_max": round(max(residual), 3)}


def bench_false_alarms(tmp: Path, sets: dict) -> dict:
    out = {}
    for name, images in sets.items():
        folder = tmp / "alike" / name.split()[0]
        write_set(folder, images)
        start = time.perf_counter()
        groups = search(folder)
        pairs = len(images) * (len(images) - 1) // 2
        flagged = sum(len(g.paths) * (len(g.paths) - 1) // 2 for g in groups)
        out[name] = {"images": len(images), "pairs": pairs, "false_alarm_pairs": flagged,
                     "false_alarm_rate": flagged / pairs, "groups": [list(g.paths) for g in groups],
                     "seconds": round(time.perf_counter() - start, 2),
                     "phash_candidates_64px": candidate_statistics(folder)}
    return out


def bench_copies(tmp: Path, sets: dict, per_set: int = 30) -> dict:
    out = {}
    rng = np.random.default_rng(0)
    for name, images in sets.items():
        for how, make in COPIES.items():
            folder = tmp / "copies" / f"{name.split()[0]}-{how}"
            names = write_set(folder, images[:per_set])
            for n in names:
                copy = make(Image.open(folder / n), rng)
                (folder / f"copy-{n}.{'png' if how == 'png' else 'jpg'}").write_bytes(copy)
            groups = {g.paths: g.kind for g in search(folder)}
            expected = {tuple(sorted((n, f"copy-{n}.{'png' if how == 'png' else 'jpg'}")))
                        for n in names}
            found = sum(pair in groups for pair in expected)
            kinds = sum(groups.get(pair) == ("exact" if how == "png" else "near")
                        for pair in expected)
            extra = sum(paths not in expected for paths in groups)
            copy_pairs = candidate_statistics(
                folder, lambda a, b: tuple(sorted((a, b))) in expected)
            out[f"{name} / {how}"] = {"copies": len(names), "found": found, "right_kind": kinds,
                                      "other_groups": extra, "copies_as_candidates_64px": copy_pairs}
    return out


# `medssl check` in a fresh process, as a user runs it, with the search switched off or on.
CHECK = """
import contextlib, importlib, io, sys
from medssl.cli import main
if sys.argv[3] == "off":  # the same decode pass; no fingerprints, no search
    importlib.import_module("medssl.data.images").fingerprint = lambda data, img, size: None
    importlib.import_module("medssl.data.prepare").find_duplicates = lambda *a, **k: []
with contextlib.redirect_stdout(io.StringIO()):
    main(["check", "--dataset", sys.argv[1], "--data-root", sys.argv[2], "--json"])
"""


def time_check(root: Path, dataset: str, with_search: bool) -> float:
    import subprocess

    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", CHECK, dataset, str(root), "on" if with_search else "off"],
                   check=True, env={**os.environ, "MEDSSL_OFFLINE": "1"})
    return time.perf_counter() - start


def bench_check_time(tmp: Path, rounds: int = 5) -> dict:
    roots = {name: make(tmp / "full" / name) for name, make in fx.MAKERS.items()}
    out = {}
    for name, root in roots.items():
        times = {True: [], False: []}
        time_check(root, name, True)  # warm the page cache: neither variant reads from disk
        for k in range(rounds):  # interleaved, each first in turn, so load hits both alike
            for with_search in ((False, True) if k % 2 else (True, False)):
                times[with_search].append(time_check(root, name, with_search))
        off, on = statistics.median(times[False]), statistics.median(times[True])
        out[name] = {"check_s_without_search": round(off, 2), "check_s_with_search": round(on, 2),
                     "added": round(on / off - 1, 3)}
    total_off = sum(v["check_s_without_search"] for v in out.values())
    total_on = sum(v["check_s_with_search"] for v in out.values())
    out["all five"] = {"check_s_without_search": round(total_off, 2),
                       "check_s_with_search": round(total_on, 2),
                       "added": round(total_on / total_off - 1, 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        sets = look_alike_sets(tmp)
        results["false_alarms"] = bench_false_alarms(tmp, sets)
        results["copies"] = bench_copies(tmp, sets)
        if not args.skip_timing:
            results["check_time"] = bench_check_time(tmp)
    for section, rows in results.items():
        print(f"\n{section}")
        for key, row in rows.items():
            shown = {k: v for k, v in row.items() if k != "groups"}
            print(f"  {key:45s} {shown}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
