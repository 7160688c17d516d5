"""Interrupted runs: killed at random points and resumed, they end exactly where an
uninterrupted run with the same seed ends; and nothing half-written ever looks finished."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from medssl.data import fixtures as fx
from medssl.runs import finetune_finished, is_finished
from tests.conftest import ctrl_c_as_usual

# Every epoch checkpointed: kills land between checkpoints of runs that last seconds.
FAST = ["--arch", "resnet18", "--image-size", "32", "--batch-size", "8", "--checkpoint-interval", "0"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}

# What each command writes last, and the weights to compare: finetune's last checkpoint (the
# selected one may predate the kills), pretrain's exported backbone.
COMMANDS = {
    "finetune": (["--model", "M1", "--epochs", "6", "--seed", "5"], "metrics.json",
                 lambda out: torch.load(out / "checkpoints" / "last.ckpt",
                                        weights_only=True)["state_dict"]),
    "pretrain": (["--epochs", "6", "--seed", "3"], "backbone.json",
                 lambda out: torch.load(out / "backbone.pt", weights_only=True)),
    # A momentum method (its target network and schedule) and a multi-crop one (its prototypes).
    "pretrain-byol": (["--epochs", "6", "--seed", "3", "--method", "byol", "--method-opt",
                       "hidden_dim=256"], "backbone.json",
                      lambda out: torch.load(out / "checkpoints" / "last.ckpt",
                                             weights_only=True)["state_dict"]),
    "pretrain-swav": (["--epochs", "6", "--seed", "3", "--method", "swav", "--method-opt",
                       "local_views=2", "--method-opt", "prototypes=32"], "backbone.json",
                      lambda out: torch.load(out / "checkpoints" / "last.ckpt",
                                             weights_only=True)["state_dict"]),
    # Distillation from a finished teacher run, and a mutual-learning cohort (M1 with M3 from a
    # stand-in ImageNet file): two networks, one optimiser, a selection per member.
    "finetune-kd": (["--model", "M1", "--epochs", "6", "--seed", "5", "--teacher", "{teacher}"],
                    "metrics.json", lambda out: torch.load(out / "checkpoints" / "last.ckpt",
                                                           weights_only=True)["state_dict"]),
    "finetune-dml": (["--mutual", "M1", "M3", "--imagenet-weights", "{weights}", "--epochs", "5",
                      "--seed", "5"], "metrics.json",
                     lambda out: torch.load(out / "checkpoints" / "last.ckpt",
                                            weights_only=True)["state_dict"]),
}


def prepare(kind: str, tmp_path: Path, root: Path) -> dict:
    """What a command needs made first: a teacher run, ImageNet weights."""
    if kind == "finetune-kd":
        teacher = tmp_path / "teacher"
        subprocess.run([sys.executable, "-m", "medssl", "finetune", "--dataset", "covid19",
                        "--data-root", str(root), "--model", "M1", "--epochs", "2", "--out",
                        str(teacher), "--num-workers", "0", *FAST], env=ENV, check=True,
                       capture_output=True)
        return {"teacher": str(teacher)}
    if kind == "finetune-dml":
        from medssl.models import build_backbone

        torch.manual_seed(11)
        torch.save(build_backbone("resnet18").state_dict(), tmp_path / "imagenet.pt")
        return {"weights": str(tmp_path / "imagenet.pt")}
    return {}


def command(kind, root, out, workers, resume, filled=None):
    args = [a.format(**(filled or {})) for a in COMMANDS[kind][0]]
    return [sys.executable, "-m", "medssl", kind.split("-")[0], "--dataset", "covid19", "--data-root", str(root),
            "--out", str(out), "--num-workers", str(workers), *args, *FAST,
            *(["--resume"] if resume else [])]


def comparable(out: Path, result_file: str) -> dict:
    """The run's result, less what legitimately differs between runs (time, paths, flags)."""
    m = json.loads((out / result_file).read_text())
    del m["wall_time_s"]
    m.get("compute", {}).pop("images_per_s", None)  # the machine's pace, a time
    for key in ("out", "resume"):
        del m["config"][key]
    del m["data"]["notes"]  # a resumed run says it read its own split.csv back
    for key in ("cohort_run", "member_runs"):  # a cohort's folders
        m.get("objective", {}).pop(key, None)
    return m


def kill_and_resume(cmd, out: Path, duration: float, rng: random.Random, done) -> tuple[int, int]:
    """Run `cmd(resume)` into `out`, interrupt it three times at random points (SIGKILL, Ctrl-C,
    SIGKILL), then let it finish with --resume. Returns (kills, resumes)."""
    last = out / "checkpoints" / "last.ckpt"
    kills = resumes = 0
    for attempt in range(3):
        resume = last.is_file()
        resumes += resume
        before = last.stat().st_mtime_ns if resume else None
        proc = subprocess.Popen(cmd(resume), env=ENV, preexec_fn=ctrl_c_as_usual,
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if attempt == 0:  # somewhere in start-up, data preparation or the first epochs
            time.sleep(rng.uniform(0.3, 0.7) * duration)
        else:  # once this attempt has written a new checkpoint, a random moment later
            while proc.poll() is None and (not last.is_file() or last.stat().st_mtime_ns == before):
                time.sleep(0.02)
            # Without a checkpoint before this attempt, kill at once on the first one: a short
            # run could otherwise finish in the random wait and no resume would be tested.
            delay = rng.uniform(0.0, 1.0)
            time.sleep(delay if resume else 0.0)
        if proc.poll() is None:
            # Ctrl-C once; otherwise no chance to clean up, like a lost machine.
            proc.send_signal(signal.SIGINT if attempt == 1 else signal.SIGKILL)
            kills += 1
        proc.wait(timeout=120)  # Ctrl-C must end the run, not hang it
        if done():
            return kills, resumes
    resume = last.is_file()
    final = subprocess.run(cmd(resume), env=ENV, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    return kills, resumes + resume


# Without loader workers the resume path is the same as with two (the sampler's epoch, the RNG
# state, the checkpoint): those two cases run with `-m slow` only, to keep CI within its time.
SLOW = pytest.mark.slow


@pytest.mark.parametrize("kind, workers", [pytest.param("finetune", 0, marks=SLOW),
                                           ("finetune", 2),
                                           pytest.param("pretrain", 0, marks=SLOW),
                                           ("pretrain", 2), ("pretrain-byol", 0),
                                           ("pretrain-swav", 0), ("finetune-kd", 0),
                                           ("finetune-dml", 0)])
def test_killed_three_times_and_resumed_equals_uninterrupted(tmp_path, kind, workers):
    root = fx.make_covid19(tmp_path, per_class=6)
    _, result_file, weights = COMMANDS[kind]
    filled = prepare(kind, tmp_path, root)
    started = time.monotonic()
    straight = subprocess.run(command(kind, root, tmp_path / "straight", workers, False, filled),
                              env=ENV, capture_output=True, text=True, timeout=600)
    duration = time.monotonic() - started
    assert straight.returncode == 0, straight.stderr[-2000:]

    out = tmp_path / "killed"
    rng = random.Random(f"{kind}{workers}")  # seeded: the same kill points on every test run
    kills, resumes = kill_and_resume(lambda resume: command(kind, root, out, workers, resume,
                                                            filled),
                                     out, duration, rng, lambda: is_finished(out))
    assert kills >= 1 and resumes >= 1  # a kill came after a checkpoint: a real resume happened
    assert is_finished(out)
    assert comparable(out, result_file) == comparable(tmp_path / "straight", result_file)
    for member in (tmp_path / "straight").glob(f"*/{result_file}"):  # a cohort's members too
        assert comparable(out / member.parent.name, result_file) == comparable(member.parent,
                                                                               result_file)
    ours, theirs = weights(out), weights(tmp_path / "straight")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    # The curves too: the resumed log holds every epoch once, as the uninterrupted one does.
    pd.testing.assert_frame_equal(pd.read_csv(out / "logs" / "metrics.csv"),
                                  pd.read_csv(tmp_path / "straight" / "logs" / "metrics.csv"))


def test_compare_killed_and_resumed_reports_what_an_uninterrupted_grid_reports(tmp_path):
    root = fx.make_covid19(tmp_path, per_class=6)

    def grid(out, resume=False):
        return [sys.executable, "-m", "medssl", "compare", "--dataset", "covid19", "--data-root",
                str(root), "--models", "M1", "M2", "--seeds", "0", "--epochs", "3",
                "--ssl-epochs", "3", "--lr", "1e-3", "--out", str(out), "--num-workers", "0",
                *FAST,
                *(["--resume"] if resume else [])]

    started = time.monotonic()
    straight = subprocess.run(grid(tmp_path / "straight"), env=ENV, capture_output=True,
                              text=True, timeout=600)
    duration = time.monotonic() - started
    assert straight.returncode == 0, straight.stderr[-2000:]

    out = tmp_path / "killed"
    rng = random.Random("compare")
    # Kill points spread over the whole grid: pretraining, then each finetuning run.
    for share in sorted(rng.uniform(0.2, 0.9) for _ in range(3)):
        proc = subprocess.Popen(grid(out, resume=(out / "split.csv").is_file()), env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(share * duration)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = subprocess.run(grid(out, resume=True), env=ENV, capture_output=True, text=True,
                           timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    ours, theirs = (pd.read_csv(p / "results.csv") for p in (out, tmp_path / "straight"))
    timed = ["run", "images_per_s_mean", "images_per_s_sd"]  # paths, and the machine's pace
    pd.testing.assert_frame_equal(ours.drop(columns=timed, errors="ignore"),
                                  theirs.drop(columns=timed, errors="ignore"))


def test_a_forced_rerun_cut_off_does_not_look_finished(tmp_path):
    root = fx.make_covid19(tmp_path, per_class=6)
    out = tmp_path / "run"
    base = command("finetune", root, out, 0, False)
    assert subprocess.run(base, env=ENV, capture_output=True, timeout=600).returncode == 0
    assert finetune_finished(out)
    # A forced rerun killed before it finishes: the old results must not pass for its own.
    proc = subprocess.Popen([*base, "--force"], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while proc.poll() is None and (out / "metrics.json").is_file():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not finetune_finished(out) and not (out / "finished.json").is_file()


def test_a_result_file_changed_after_the_marker_is_not_finished(tmp_path):
    from medssl.runs import mark_finished

    run = tmp_path / "run"
    run.mkdir()
    for name in ("metrics.json", "val_predictions.csv", "test_predictions.csv"):
        (run / name).write_text("{}")
    assert not finetune_finished(run)  # no marker yet
    mark_finished(run, ("metrics.json", "val_predictions.csv", "test_predictions.csv"))
    assert finetune_finished(run)
    (run / "metrics.json").write_text("{")  # truncated by a copy gone wrong
    assert not finetune_finished(run)
    (run / "metrics.json").write_text("{}")
    (run / "finished.json").write_text('{"files": ')  # a marker cut short
    assert not finetune_finished(run)


def test_the_disk_filling_up_leaves_no_half_written_file(tmp_path, cli, monkeypatch):
    import errno

    from medssl.models.checkpoints import atomic_write

    # A result file that exists stays as it was; the temporary file goes.
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def full(path):
        Path(path).write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with pytest.raises(Exception, match="The disk is full: .*metrics.json.*--resume"):
        atomic_write(target, full)
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]

    # A run whose checkpoint cannot be written stops with one clear message.
    root = fx.make_covid19(tmp_path, per_class=6)
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if str(f).endswith(".tmp"):  # the run's own files; lightning's in-memory copies pass
            real_save(obj, f, *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "run"
    code, _, err = cli(*command("finetune", root, out, 0, False)[3:])
    assert code == 2 and "The disk is full" in err and ".ckpt" in err
    assert "Traceback" not in err
    assert not list(out.rglob("*.tmp")) and not is_finished(out)


def test_torch_saves_own_error_on_a_full_disk_is_said_as_a_full_disk(tmp_path, monkeypatch):
    """torch.save raises RuntimeError ("unexpected pos ...") when its writes fail for want of
    space: the quick start on a full disk ended in "internal error" with it. The disk decides."""
    import shutil
    from collections import namedtuple

    from medssl.atomic import atomic_write
    from medssl.errors import MedsslError

    def torn(path):
        Path(path).write_bytes(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 96 vs 90")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 ** 9, 10 ** 9, 0))
    with pytest.raises(MedsslError, match="The disk is full: .*last.ckpt.*--resume"):
        atomic_write(tmp_path / "last.ckpt", torn)
    assert list(tmp_path.iterdir()) == []
    # With room on the disk the same error is not a full disk: it is raised as it is.
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 ** 9, 0, 10 ** 9))
    with pytest.raises(RuntimeError, match="unexpected pos"):
        atomic_write(tmp_path / "last.ckpt", torn)


def test_a_planted_malicious_resume_checkpoint_is_refused_and_never_runs(tmp_path, cli):
    from tests.test_pretrain import Payload

    root = fx.make_covid19(tmp_path, per_class=6)
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    marker = tmp_path / "payload_ran"
    torch.save({"state_dict": {}, "epoch": Payload(marker)}, out / "checkpoints" / "last.ckpt")
    for kind in ("finetune", "pretrain"):
        code, _, err = cli(*command(kind, root, out, 0, True)[3:])
        assert code == 2 and "last.ckpt is not a checkpoint this run can resume from" in err
        assert "weights_only" in err and "Traceback" not in err
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["finetune", "pretrain"])
def test_killed_after_its_last_checkpoint_and_resumed_writes_the_same_result(tmp_path, kind):
    """The narrowest kill point: training done, result not yet written. Resumed, the run trains
    nothing, so what the result reports of the last epoch must come from the checkpoint."""
    root = fx.make_covid19(tmp_path, per_class=6)
    out = tmp_path / "run"
    result_file = COMMANDS[kind][1]
    run = subprocess.run(command(kind, root, out, 0, False), env=ENV, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    expected = comparable(out, result_file)
    (out / "finished.json").unlink()
    (out / result_file).unlink()
    run = subprocess.run(command(kind, root, out, 0, True), env=ENV, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert comparable(out, result_file) == expected
