"""The GPU check (bench/gpu_check.sh and .py) runs end to end on the CPU with --dry-run.

A GPU is lent by chance and for minutes, so the script must work the first time it meets one:
this runs every step of it (the same commands at tiny sizes, through the same shell wrapper
that the device call uses) so that a change to a flag or a path breaks this test, not the loan.
It is the only test of `--compile` too.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What issue 29 asks the check to run; later issues' steps may be skipped until their flags land.
REQUIRED = ["pipeline", "pretrain-simclr", "finetune-M2", "compare", "pretrain-byol",
            "pretrain-dino", "pretrain-compile"]
LATER = ["prior-timm-vit-linear", "compare-jobs2"]


def test_gpu_check_dry_run_runs_every_step(tmp_path):
    out = tmp_path / "out"
    # The wrapper calls `python3`: make it this interpreter (CI's venv), whatever PATH says.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").exists() else ""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + log[-5000:]

    # Four files, within what the device tool brings back (8 files, no deeper folders).
    assert sorted(p.name for p in out.iterdir()) == ["gpu.json", "gpu_check.json",
                                                      "gpu_check.log", "nvidia-smi.txt"]
    result = json.loads((out / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in result["steps"]}
    assert list(steps) == REQUIRED + LATER
    for name in REQUIRED:
        assert steps[name]["status"] == "ok", steps[name]
        assert steps[name]["rc"] == 0 and steps[name]["wall_s"] > 0
    for name in LATER:  # run once landed, else said why not
        assert steps[name]["status"] == "ok" or "not landed" in steps[name]["reason"], steps[name]
    # The dry run is the CPU at tiny sizes; the GPU run is ResNet-50 at 224 px in bf16.
    assert result["sizes"]["accelerator"] == "cpu" and result["environment"]["device"] == "cpu"
    # Pretraining and finetuning runs report what they saw (2 epochs of pretraining).
    assert steps["pretrain-simclr"]["images_seen"] > 0
    assert steps["finetune-M2"]["images_seen"] > 0
    # The pipeline benchmark wrote the figures docs/benchmarks.md's GPU section records.
    pipeline = json.loads((out / "gpu.json").read_text())
    for key in ("loader_views_per_core", "simclr_images_per_s_end_to_end",
                "simclr_images_per_s_model_only", "finetune_images_per_s_end_to_end",
                "finetune_images_per_s_model_only", "step_ratio_vs_model_only"):
        assert pipeline[key] > 0, key
    smi = (out / "nvidia-smi.txt").read_text()
    assert "===== before" in smi and "===== after" in smi
    # Every command's output is kept, with its exit status.
    for name in REQUIRED:
        assert f"===== {name}: ok (exit code 0)" in log


def test_gpu_check_refuses_a_machine_without_a_gpu(tmp_path):
    # Without --dry-run on a CPU it stops at once, saying what to do, and runs nothing.
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr and "--dry-run" in done.stderr
    assert not (tmp_path / "gpu_check.log").exists()
