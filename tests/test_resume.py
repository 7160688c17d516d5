"""Interrupted runs: killed at random points and resumed, they end exactly where an
uninterrupted run with the same seed ends."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medssl.data import fixtures as fx

FAST = ["--arch", "resnet18", "--image-size", "32", "--batch-size", "8"]


def command(root, out, workers, resume):
    return [sys.executable, "-m", "medssl", "finetune", "--dataset", "covid19", "--data-root",
            str(root), "--model", "M1", "--epochs", "6", "--seed", "5", "--out", str(out),
            "--num-workers", str(workers), *FAST, *(["--resume"] if resume else [])]


def finished_metrics(out: Path) -> dict:
    m = json.loads((out / "metrics.json").read_text())
    del m["wall_time_s"]
    for key in ("out", "resume"):
        del m["config"][key]
    del m["data"]["notes"]  # a resumed run says it read its own split.csv back
    return m


# With 2 loader workers a resumed run's metrics.json matched, but its last weights did not
# (seen 2026-11-29); that case is open work (issue #6), so it is not claimed here.
@pytest.mark.parametrize("workers", [0])
def test_killed_three_times_and_resumed_equals_uninterrupted(tmp_path, workers):
    root = fx.make_covid19(tmp_path, per_class=6)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    straight = subprocess.run(command(root, tmp_path / "straight", workers, False), env=env,
                              capture_output=True, text=True, timeout=600)
    duration = time.monotonic() - started
    assert straight.returncode == 0, straight.stderr[-2000:]

    out = tmp_path / "killed"
    last = out / "checkpoints" / "last.ckpt"
    rng = random.Random(workers)  # seeded: the same kill points on every run of the test
    kills = resumes = 0
    for attempt in range(3):
        resume = last.is_file()
        resumes += resume
        before = last.stat().st_mtime_ns if resume else None
        proc = subprocess.Popen(command(root, out, workers, resume), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if attempt == 0:  # somewhere in start-up, data preparation or the first epoch
            time.sleep(rng.uniform(0.2, 0.6) * duration)
        else:  # once this attempt has written a new checkpoint, a random moment later
            while proc.poll() is None and (not last.is_file() or last.stat().st_mtime_ns == before):
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)  # no chance to clean up: like a lost machine
            kills += 1
        proc.wait()
        if (out / "metrics.json").is_file():
            break
    assert kills >= 1
    if not (out / "metrics.json").is_file():
        resume = (out / "checkpoints" / "last.ckpt").is_file()
        resumes += resume
        final = subprocess.run(command(root, out, workers, resume), env=env,
                               capture_output=True, text=True, timeout=600)
        assert final.returncode == 0, final.stderr[-2000:]
    assert resumes >= 1  # at least one kill came after a checkpoint: a real resume happened
    assert finished_metrics(out) == finished_metrics(tmp_path / "straight")
    # The selected checkpoint may predate the kills: the last weights must match as well.
    import torch

    ours, theirs = (torch.load(p / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
                    for p in (out, tmp_path / "straight"))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
