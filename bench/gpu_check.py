"""One prepared GPU check: every real path of medssl on one H100/H200, measured, in one call.

    bash bench/gpu_check.sh                       # on the GPU machine (installs carried wheels)
    python bench/gpu_check.py --out OUT           # the same, wheels already importable
    python bench/gpu_check.py --dry-run --out D   # on a CPU at tiny sizes (tests/test_gpu_check.py)

A GPU is lent to a task by chance and for minutes, so this script is kept ready and tested on the
CPU between loans (`--dry-run`: the same steps, the same commands, ResNet-18 at 32 px on a handful
of images, the CPU). On the GPU it runs, in order of importance, each as its own process:
- `bench/pipeline.py --gpu --json OUT/gpu.json`: loader views/s, SimCLR and finetuning steps
  end-to-end against model-only (docs/benchmarks.md);
- on a generated chest X-ray fixture in the real Kaggle layout (ResNet-50, 224 px, bf16-mixed):
  `medssl pretrain` for 2 epochs with SimCLR, then `medssl finetune --model M2` for 1 epoch from
  that backbone, `medssl compare` with 1 epoch and 1 seed, BYOL and DINO pretraining, and one
  `--compile` pretraining;
- the steps of later issues once their flags exist (a timm ViT prior, `--protocols linear`,
  `compare --jobs 2`); until then each is listed as not landed. When a flag lands, its step runs in
  the dry-run test too, so the issue that adds it must make the step's command right.
It records `nvidia-smi` before and after, each step's exit code, wall time and peak GPU memory
(the device's used memory polled by nvidia-smi, and PyTorch's own allocator peak), and stops
starting steps when its time budget (default 450 s, the issue's 8 minutes less a margin) runs out.

Everything it writes goes under OUT as four files (the device tool returns at most 8):
gpu_check.json (every step), gpu_check.log (every command's output), gpu.json (the pipeline
benchmark) and nvidia-smi.txt. The run folders stay in a temporary folder. Exit code 0 only when
every step that ran passed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Runs a module or script in this process after registering an exit hook that writes PyTorch's
# peak GPU memory to a file: the only way to read the allocator's own peak from a child process
# without changing the code under test. Written only where CUDA was initialised (not in loader
# workers, which leave through os._exit).
PEAK_WRAPPER = """
import atexit, json, runpy, sys
peak_file, target = sys.argv[1], sys.argv[2]
def _peak():
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        with open(peak_file, "w") as f:
            json.dump({"allocated": torch.cuda.max_memory_allocated(),
                       "reserved": torch.cuda.max_memory_reserved()}, f)
atexit.register(_peak)
if target == "-m":
    sys.argv = [sys.argv[3]] + sys.argv[4:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[2:]
    runpy.run_path(target, run_name="__main__")
"""


@dataclass
class Sizes:
    """What differs between the GPU check and its CPU dry run; every command is otherwise equal."""
    accelerator: str
    precision: str
    arch: str
    image_size: int
    per_class: int  # fixture images per class and split (chest X-ray layout)
    pretrain_batch: int
    finetune_batch: int
    pipeline_args: tuple[str, ...]
    vit: str  # the timm ViT of the prior step

    @staticmethod
    def for_run(dry_run: bool) -> "Sizes":
        if dry_run:
            return Sizes("cpu", "32-true", "resnet18", 32, 6, 4, 4,
                         ("--quick", "--skip-memory"), "vit_tiny_patch16_224")
        return Sizes("gpu", "bf16-mixed", "resnet50", 224, 400, 128, 128, ("--gpu",),
                     "vit_small_patch16_224")


@dataclass
class Step:
    name: str
    argv: list[str]  # after `python`: ["-m", "medssl", ...] or ["bench/x.py", ...]
    timeout_s: float
    needs_flag: tuple[str, str] | None = None  # (subcommand, flag) that must exist to run
    result_file: str | None = None  # backbone.json / metrics.json to read images_seen from


@dataclass
class Outcome:
    name: str
    command: str
    status: str  # ok | failed | skipped
    rc: int | None = None
    wall_s: float | None = None
    gpu_used_peak_mib: float | None = None  # nvidia-smi, device-wide, minus the step's baseline
    torch_peak_allocated_mib: float | None = None
    torch_peak_reserved_mib: float | None = None
    images_seen: int | None = None
    run_wall_time_s: float | None = None  # as the run recorded it (startup excluded)
    reason: str = ""
    extra: dict = field(default_factory=dict)


def gpu_used_mib() -> float | None:
    """The GPU's used memory now (MiB), or None where there is no nvidia-smi (the dry run)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,"
                              "nounits", "-i", "0"], capture_output=True, text=True, timeout=10)
        return float(out.stdout.strip().splitlines()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


class MemoryPoll:
    """Highest device memory use seen while a step runs (nvidia-smi every 0.5 s, in a thread)."""

    def __init__(self):
        self.peak: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            used = gpu_used_mib()
            if used is not None:
                self.peak = used if self.peak is None else max(self.peak, used)
            self._stop.wait(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def flag_exists(subcommand: str, flag: str, env: dict) -> bool:
    """Whether `medssl SUBCOMMAND --help` lists FLAG (a later issue's feature has landed)."""
    out = subprocess.run([sys.executable, "-m", "medssl", subcommand, "--help"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    return flag in out.stdout


def run_step(step: Step, env: dict, log, deadline: float, tmp: Path) -> Outcome:
    """Run one step with its peak-memory hook; never raises for the step's own failure."""
    command = " ".join(["python"] + step.argv)
    left = deadline - time.monotonic()
    if step.needs_flag and not flag_exists(*step.needs_flag, env):
        return Outcome(step.name, command, "skipped",
                       reason=f"not landed: `medssl {step.needs_flag[0]} --help` has no "
                              f"{step.needs_flag[1]}")
    if left < 20:
        return Outcome(step.name, command, "skipped", reason=f"time budget: {left:.0f} s left")
    timeout = min(step.timeout_s, left)
    peak_file = tmp / f"peak-{step.name}.json"
    base = gpu_used_mib()
    log.write(f"\n===== {step.name}: {command}\n")
    log.flush()
    start = time.monotonic()
    with MemoryPoll() as poll:
        try:
            rc = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, str(peak_file)] + step.argv,
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                timeout=timeout).returncode
            reason = "" if rc == 0 else f"exit code {rc}"
        except subprocess.TimeoutExpired:
            rc, reason = None, f"stopped after {timeout:.0f} s (its limit)"
    out = Outcome(step.name, command, "ok" if rc == 0 else "failed", rc=rc,
                  wall_s=round(time.monotonic() - start, 1), reason=reason)
    log.write(f"===== {step.name}: {out.status} ({reason or 'exit code 0'}) in {out.wall_s} s\n")
    log.flush()
    if poll.peak is not None and base is not None:
        out.gpu_used_peak_mib = poll.peak - base
    if peak_file.is_file():
        peak = json.loads(peak_file.read_text())
        out.torch_peak_allocated_mib = round(peak["allocated"] / 2**20, 1)
        out.torch_peak_reserved_mib = round(peak["reserved"] / 2**20, 1)
    if step.result_file and Path(step.result_file).is_file():
        record = json.loads(Path(step.result_file).read_text())
        seen = record.get("images_seen", (record.get("compute") or {}).get("finetune_images_seen"))
        out.images_seen, out.run_wall_time_s = seen, record.get("wall_time_s")
    return out


def medssl(*args) -> list[str]:
    return ["-m", "medssl", *map(str, args)]


def plan(sizes: Sizes, data_root: Path, runs: Path, out: Path, vit_file: Path) -> list[Step]:
    """The steps in order of importance: if time runs out, the last ones are skipped."""
    data = ["--dataset", "chest_xray", "--data-root", data_root]
    model = ["--arch", sizes.arch, "--image-size", sizes.image_size,
             "--accelerator", sizes.accelerator, "--precision", sizes.precision]
    pre = [*data, *model, "--epochs", 2, "--batch-size", sizes.pretrain_batch, "--force"]
    simclr = runs / "ssl-simclr"
    fine = [*data, *model, "--epochs", 1, "--batch-size", sizes.finetune_batch]
    grid = [*fine, "--seeds", 0, "--ssl-epochs", 1, "--ssl-batch-size", sizes.pretrain_batch]
    return [
        Step("pipeline", ["bench/pipeline.py", *sizes.pipeline_args, "--json", str(out / "gpu.json")],
             240),
        Step("pretrain-simclr", medssl("pretrain", *pre, "--method", "simclr", "--out", simclr),
             120, result_file=str(simclr / "backbone.json")),
        Step("finetune-M2", medssl("finetune", *fine, "--model", "M2", "--ssl-checkpoint", simclr,
                                   "--out", runs / "M2", "--force"),
             120, result_file=str(runs / "M2" / "metrics.json")),
        Step("compare", medssl("compare", *grid, "--out", runs / "grid"), 180),
        Step("pretrain-byol", medssl("pretrain", *pre, "--method", "byol",
                                     "--out", runs / "ssl-byol"),
             120, result_file=str(runs / "ssl-byol" / "backbone.json")),
        Step("pretrain-dino", medssl("pretrain", *pre, "--method", "dino",
                                     "--out", runs / "ssl-dino"),
             120, result_file=str(runs / "ssl-dino" / "backbone.json")),
        Step("pretrain-compile", medssl("pretrain", *pre, "--method", "simclr", "--compile",
                                        "--out", runs / "ssl-compile"),
             240, result_file=str(runs / "ssl-compile" / "backbone.json")),
        # Later issues' features (35, 37): run once their flags exist.
        Step("prior-timm-vit-linear",
             medssl("compare", *grid, "--models", "M1", "--priors",
                    f"timm:{sizes.vit}={vit_file}", "--protocols", "finetune", "linear",
                    "--out", runs / "grid-vit"),
             180, needs_flag=("compare", "--priors")),
        Step("compare-jobs2", medssl("compare", *grid, "--jobs", 2, "--out", runs / "grid-jobs"),
             180, needs_flag=("compare", "--jobs")),
    ]


def make_vit_file(name: str, path: Path) -> str:
    """A timm ViT with random weights saved as safetensors: the prior file of the timm step
    (weights cannot be downloaded on the GPU machine). Returns why not, or ''."""
    try:
        import timm
        from safetensors.torch import save_file
    except ImportError as exc:
        return f"timm or safetensors missing ({exc})"
    save_file(timm.create_model(name, pretrained=False, num_classes=0).state_dict(), str(path))
    return ""


def nvidia_smi(out: Path, when: str) -> None:
    text = "nvidia-smi: not found (no NVIDIA GPU here)\n"
    if shutil.which("nvidia-smi"):
        done = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
        text = done.stdout + done.stderr
    with open(out / "nvidia-smi.txt", "a") as f:
        f.write(f"===== {when} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n{text}\n")


def environment() -> dict:
    """Facts about the machine, read in a child so that this process never imports torch."""
    code = ("import json, os, sys, torch, torchvision, pytorch_lightning as pl; cuda = "
            "torch.cuda.is_available(); print(json.dumps({'python': sys.version.split()[0], "
            "'torch': torch.__version__, 'torchvision': torchvision.__version__, "
            "'lightning': pl.__version__, 'cuda': torch.version.cuda, 'device': "
            "torch.cuda.get_device_name() if cuda else 'cpu', 'cpu_cores': os.cpu_count()}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    return json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-2000:]}


def summary_lines(outcomes: list[Outcome]) -> list[str]:
    rows = [f"{'step':24s} {'status':8s} {'rc':>4s} {'wall s':>7s} {'GPU MiB':>8s} "
            f"{'torch MiB':>9s}  note"]
    for o in outcomes:
        rows.append(f"{o.name:24s} {o.status:8s} {str(o.rc if o.rc is not None else '-'):>4s} "
                    f"{o.wall_s if o.wall_s is not None else '-':>7} "
                    f"{o.gpu_used_peak_mib if o.gpu_used_peak_mib is not None else '-':>8} "
                    f"{o.torch_peak_reserved_mib if o.torch_peak_reserved_mib is not None else '-':>9}"
                    f"  {o.reason}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out",
                        help="folder for the four result files (default $OUT)")
    parser.add_argument("--dry-run", action="store_true",
                        help="the CPU at tiny sizes: checks the script and its commands")
    parser.add_argument("--budget-s", type=float, default=450,
                        help="start no step after this many seconds (default 450)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    deadline = started + args.budget_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = Sizes.for_run(args.dry_run)
    results: dict = {"dry_run": args.dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "sizes": asdict(sizes), "environment": environment()}
    if not args.dry_run and results["environment"].get("device", "cpu") == "cpu":
        print("gpu_check: no CUDA device is visible; use --dry-run on a CPU", file=sys.stderr)
        return 2
    nvidia_smi(out, "before")
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp_name:
        tmp = Path(tmp_name)
        env = {**os.environ, "MEDSSL_CACHE_DIR": str(tmp / "cache"), "MEDSSL_OFFLINE": "1",
               "PYTHONUNBUFFERED": "1", "TORCH_HOME": str(tmp / "torch_home"),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        sys.path.insert(0, str(REPO))
        from medssl.data.fixtures import make_chest_xray

        data_root = make_chest_xray(tmp / "data", sizes.per_class).parent
        vit_file = tmp / "vit.safetensors"
        steps = plan(sizes, data_root, tmp / "runs", out, vit_file)
        outcomes = []
        with open(out / "gpu_check.log", "w") as log:
            for step in steps:
                if step.name.startswith("prior-timm") and not vit_file.exists():
                    why = (make_vit_file(sizes.vit, vit_file)
                           if flag_exists(*step.needs_flag, env) else "")
                    if why:
                        outcomes.append(Outcome(step.name, "", "skipped", reason=why))
                        continue
                outcome = run_step(step, env, log, deadline, tmp)
                outcomes.append(outcome)
                print(summary_lines([outcome])[1], flush=True)
    nvidia_smi(out, "after")
    results["steps"] = [asdict(o) for o in outcomes]
    results["wall_s"] = round(time.monotonic() - started, 1)
    if (out / "gpu.json").is_file():
        results["pipeline"] = json.loads((out / "gpu.json").read_text())
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2))
    print("\n".join(["", *summary_lines(outcomes), f"total {results['wall_s']} s; "
                     f"details in {out}/gpu_check.json and gpu_check.log"]))
    failed = [o.name for o in outcomes if o.status == "failed"]
    if failed:
        print(f"failed: {', '.join(failed)} (see gpu_check.log)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
