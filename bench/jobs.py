"""`compare --jobs N` against the same grid one cell after another, measured in one run.

    python bench/jobs.py                  # the demo grid as the quick start runs it, N = 2
    python bench/jobs.py --jobs 4 -- --seeds 0 1   # other N, extra compare flags after --

Runs the grid with --jobs N first, then sequentially, each into a fresh folder with one shared
cache folder (the images decoded by the first; so the sequential run, second, never waits for a
decode the parallel one did: the ratio is, if anything, to its advantage). Prints both wall times
and their ratio, the machine's CPU, and whether the two results tables agree once the timing
columns are left out (they need not: a worker runs on its share of the cores, and a float sum's
order follows the thread count; tests/test_launch.py checks equality at equal threads).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def timed(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "medssl", "compare", *args], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"compare {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def table(out: Path) -> pd.DataFrame:
    frame = pd.read_csv(out / "results.csv")
    return frame.drop(columns=[c for c in frame if c.startswith("images_per_s")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("extra", nargs="*", help="more compare flags (after --)")
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medssl-bench-jobs-"))
    env = {**os.environ, "MEDSSL_CACHE_DIR": os.environ.get("MEDSSL_CACHE_DIR",
                                                            str(work / "cache"))}
    common = ["--dataset", opts.dataset, *opts.extra]
    parallel = timed([*common, "--out", str(work / "jobs"), "--jobs", str(opts.jobs)], env)
    sequential = timed([*common, "--out", str(work / "sequential")], env)
    same = table(work / "jobs").equals(table(work / "sequential"))
    print(f"{cpu_name()}, {os.cpu_count()} cores; compare {' '.join(common)}")
    print(f"sequential: {sequential:.0f} s; --jobs {opts.jobs}: {parallel:.0f} s; "
          f"ratio {sequential / parallel:.2f}x")
    print(f"results tables {'identical' if same else 'differ'} (timing columns aside)")


if __name__ == "__main__":
    main()
