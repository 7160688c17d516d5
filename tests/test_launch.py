"""A grid's cells at the same time (experiments.launch, experiments.schedule): `--jobs` and
`--launcher local` give the sequential grid's results, no finetuning starts before its
pretraining, a failed cell is reported while the others finish, a killed worker's cell resumes,
and `--dry-run` prints the plan and the SLURM jobs without submitting."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from medssl.data import fixtures as fx
from medssl.experiments.launch import cell_folder, make_executor, slurm_parameters
from medssl.experiments.schedule import Board, waves
from medssl.options import LaunchOptions

FAST = ["--arch", "resnet18", "--image-size", "32", "--num-workers", "0", "--batch-size", "8"]
# Columns that measure the machine, not the result (wall times aside, as a rerun's would differ).
TIMINGS = ("images_per_s",)


def grid_args(root: Path, out: Path, *extra: str, seeds=("0",)) -> list[str]:
    return [sys.executable, "-m", "medssl", "compare", "--dataset", "covid19", "--data-root",
            str(root), "--models", "M1", "M2", "--seeds", *seeds, "--epochs", "1",
            "--ssl-epochs", "1", "--lr", "1e-3", "--out", str(out), *FAST, *extra]


def one_thread_env() -> dict:
    # A cell's numbers follow its thread count (the order of a float sum): the sequential grid
    # runs at the one thread each of two workers gets on two cores (launch.cpu_share).
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def results(out: Path) -> pd.DataFrame:
    table = pd.read_csv(out / "results.csv")
    return table.drop(columns=[c for c in table if c.startswith(TIMINGS)])


def started_after_pretraining(out: Path, seeds=(0,)) -> None:
    """Each M2 seed's finetuning wrote its first file (split.csv) after its pretraining wrote
    its last (backbone.pt)."""
    for seed in seeds:
        backbone = out / "ssl-random" / f"seed{seed}" / "backbone.pt"
        first = out / "M2" / f"seed{seed}" / "split.csv"
        assert backbone.stat().st_mtime_ns <= first.stat().st_mtime_ns, (backbone, first)


def test_jobs_and_the_local_launcher_give_the_sequential_results(tmp_path):
    """Three cells (M2's pretraining and M1's finetuning at once, then M2's finetuning): the
    same results.csv three ways, and M2's finetuning after its pretraining each time."""
    root = fx.make_covid19(tmp_path, per_class=6)
    env = one_thread_env()
    runs, said = {}, {}
    for name, extra in (("sequential", ()), ("jobs", ("--jobs", "2")),
                        ("local", ("--launcher", "local"))):
        out = tmp_path / name
        done = subprocess.run(grid_args(root, out, *extra), capture_output=True, text=True,
                              env=env)
        assert done.returncode == 0, done.stderr
        runs[name], said[name] = out, done.stderr
    pd.testing.assert_frame_equal(results(runs["sequential"]), results(runs["jobs"]))
    pd.testing.assert_frame_equal(results(runs["sequential"]), results(runs["local"]))
    for name in ("jobs", "local"):
        started_after_pretraining(runs[name])
        log = (cell_folder(runs[name], "finetune:M2:1") / "cell.log").read_text()
        assert "cell finetune:M2:1 finished" in log  # each cell's log in its own folder
        assert "grid: 3/3 cells done, 0 running, 0 waiting, 0 failed" in said[name]
        # each run records the threads it trained on (here OMP_NUM_THREADS=1, shared by two)
        record = json.loads((runs[name] / "M1" / "seed0" / "metrics.json").read_text())
        assert record["compute"]["cpu_threads"] == 1


def wait_for_a_checkpoint(grid, last: Path, running: Path, other_than: int | None) -> int:
    """The pid of the worker running M1's cell once it has saved a checkpoint (a new one, and
    a worker other than `other_than`)."""
    seen = last.stat().st_mtime_ns if last.is_file() else None
    deadline = time.monotonic() + 240
    while grid.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint was written"
        pid = json.loads(running.read_text())["pid"] if running.is_file() else None
        if pid and pid != other_than and last.is_file() and last.stat().st_mtime_ns != seen:
            return pid
        time.sleep(0.05)
    raise AssertionError(f"the grid ended first:\n{grid.communicate()[1]}")


def test_a_preempted_or_killed_worker_resumes_and_a_failing_cell_leaves_the_others(tmp_path):
    """M1's worker is pre-empted (USR2, SLURM's warning before a time limit): submitit requeues
    it through CellJob.checkpoint and it resumes. Then it is killed (SIGKILL: no handler runs):
    started once more, it resumes again. M2's pretraining fails (--ssl-min-gain no one-epoch
    pretraining reaches): M2's finetuning is never started, M1 finishes, the table names the
    failed cells and their logs, and compare ends in one message naming them."""
    root = fx.make_covid19(tmp_path, per_class=6)
    out = tmp_path / "grid"
    args = grid_args(root, out, "--jobs", "2", "--checkpoint-interval", "0", "--ssl-min-gain",
                     "99")
    args[args.index("--epochs") + 1] = "10"  # killed after epoch 2: eight to finish with
    grid = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=one_thread_env())
    last = out / "M1" / "seed0" / "checkpoints" / "last.ckpt"
    running = cell_folder(out, "finetune:M1:1") / "running.json"
    first = wait_for_a_checkpoint(grid, last, running, None)
    os.kill(first, signal.SIGUSR2)
    second = wait_for_a_checkpoint(grid, last, running, first)
    os.kill(second, signal.SIGKILL)
    _, err = grid.communicate(timeout=600)
    assert grid.returncode == 2, err
    assert "Traceback" not in err
    assert "cell finetune:M1:1 stopped" in err and "starting it again, resuming its runs" in err
    log = (cell_folder(out, "finetune:M1:1") / "cell.log").read_text()
    assert log.count("seed0: resumed from its checkpoint after epoch") == 2, log
    assert (out / "M1" / "seed0" / "metrics.json").is_file()
    assert "2 cell(s) failed; the others finished" in err and "whole log:" in err
    assert "not started, they need it: finetune:M2:1" in err
    assert not (out / "M2").exists()
    failed = json.loads((out / "failed.json").read_text())
    assert set(failed) == {"pretrain:M2:1:0", "finetune:M2:1"}
    assert Path(failed["pretrain:M2:1:0"]["log"]).is_file()
    md = (out / "results.md").read_text()
    assert "2 cell(s) failed" in md and "--ssl-min-gain" in md


def test_dry_run_prints_the_job_arrays_and_submits_nothing(tmp_path):
    root = fx.make_covid19(tmp_path, per_class=6)
    out = tmp_path / "grid"
    done = subprocess.run(grid_args(root, out, "--launcher", "slurm", "--dry-run",
                                    "--slurm-partition", "gpu", "--slurm-time", "90",
                                    seeds=("0", "1")),
                          capture_output=True, text=True, env={**os.environ, "PATH": "/bin"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    wave1 = lines.index("wave 1: 3 cell(s) (a job array)")
    wave2 = lines.index("wave 2: 1 cell(s) (a job array)")
    assert {x.split()[0] for x in lines[wave1 + 1:wave2]} == {
        "pretrain:M2:1:0", "pretrain:M2:1:1", "finetune:M1:1"}  # M1 needs no pretraining
    assert any(x.startswith("  finetune:M2:1") and "after pretrain:M2:1:0, pretrain:M2:1:1" in x
               for x in lines)  # one pretraining per seed, both before
    assert "device-hours" in done.stdout and "slurm_partition=gpu" in done.stdout
    assert not out.exists()  # no split, plan or folder: a later call makes its own


def test_the_slurm_executor_gets_the_jobs_parameters(tmp_path, monkeypatch):
    """What sbatch would be asked, through submitit's own executor (a stand-in srun on PATH: the
    executor looks for it, nothing is submitted)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    launch = LaunchOptions(launcher="slurm", slurm_partition="gpu", slurm_time=90,
                           slurm_gpus_per_job=2, slurm_cpus_per_job=12, slurm_account="lab",
                           slurm_max_parallel=16)
    executor = make_executor(tmp_path, launch)
    assert executor.cluster == "slurm"
    params = executor._executor.parameters  # submitit's names for sbatch's
    # One task per GPU: a cell on two GPUs is a two-process DDP run under srun.
    assert params == {"time": 90, "nodes": 1, "ntasks_per_node": 2, "gpus_per_node": 2,
                      "cpus_per_task": 12, "job_name": "medssl-cell", "signal_delay_s": 120,
                      "partition": "gpu", "account": "lab", "array_parallelism": 16}
    assert slurm_parameters(LaunchOptions(launcher="slurm")).get("slurm_partition") is None


def test_waves_put_each_cell_after_what_it_needs():
    needs = {"p0": [], "p1": [], "f1": [], "f2": ["p0", "p1"], "kd": ["f1", "f2"]}
    assert waves(list(needs), needs) == [["p0", "p1", "f1"], ["f2"], ["kd"]]


def test_a_failure_blocks_what_needs_it_and_nothing_else():
    board = Board({"p0": [], "f1": [], "f2": ["p0"], "kd": ["f1", "f2"]})
    assert board.ready() == ["p0", "f1"]
    board.start("p0")
    board.start("f1")
    assert board.ready() == []  # f2 waits for p0
    assert board.fail("p0", "boom") == ["f2", "kd"]
    assert board.why["kd"] == "it needs f2, which failed"
    board.finish("f1")
    assert board.over and board.count("done") == 1
    assert "1/4 cells done, 0 running, 0 waiting, 3 failed" in board.line(2)


def test_several_datasets_in_one_call_make_a_grid_each_and_the_summary(tmp_path):
    covid = fx.make_covid19(tmp_path / "data", per_class=6)
    fx.make_chest_xray(tmp_path / "data", per_class=6)
    out = tmp_path / "study"
    done = subprocess.run(
        [sys.executable, "-m", "medssl", "compare", "--dataset", "covid19", "chest_xray",
         "--data-root", str(covid.parent), "--models", "M1", "M2", "--seeds", "0", "--epochs",
         "1", "--ssl-epochs", "1", "--lr", "1e-3", "--out", str(out), *FAST],
        capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for dataset in ("covid19", "chest_xray"):
        assert (out / dataset / "results.csv").is_file()
    summary = (out / "summary.md").read_text()  # one data folder held both downloads
    assert "covid19" in summary and "chest_xray" in summary
    assert (out / "summary.csv").is_file()
