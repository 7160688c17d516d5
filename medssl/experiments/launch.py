"""Run a grid's cells at the same time, each in a process of its own: `--jobs N` on this machine,
`--launcher slurm` as jobs of a cluster, `--launcher local` as the same jobs on this machine.

submitit starts every process (the engine for this; no scheduler of our own): it pickles the
cell's call, sets CUDA_VISIBLE_DEVICES, keeps the process's stdout and stderr, hands back its
result or its error, and requeues a job that is pre-empted or reaches its time limit, which then
resumes from its last checkpoint (`CellJob.checkpoint`). What runs is always `compare --cell`:
the same code as a sequential grid, so the results are the same.

- `--jobs N`: a cell starts as soon as what it needs is done and one of N slots is free; a slot
  owns `--devices-per-job` GPUs, or on the CPU its share of the cores. A cell whose process dies
  (killed, out of memory) is started once more, resuming its runs.
- `--launcher slurm|local`: the grid in waves (experiments.schedule.waves), each wave one job array
  (`map_array`) submitted when the wave before it is done, so no finetuning starts before its
  pretraining.

Either way one progress line of the whole grid, and a failed cell does not stop the others: it is
logged with the tail of its log and that log's path, written to the grid's failed.json, and marked
under the results table.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import time
from dataclasses import replace
from pathlib import Path

import submitit
import torch
from submitit.helpers import Checkpointable, DelayedSubmission

from medssl.atomic import atomic_write
from medssl.errors import MedsslError
from medssl.experiments.compare import (CompareConfig, check_grid_flags, pretraining_needed,
                                        resolve, run_cell, run_compare)
from medssl.experiments.cost import grid_cost
from medssl.experiments.grid import Cell, cell_runs, depends_on, finished
from medssl.experiments.schedule import Board, duration, waves
from medssl.options import LaunchOptions
from medssl.runs import CELLS, FAILED
from medssl.training.distributed import is_rank_zero

log = logging.getLogger("medssl")
LAUNCHERS = ("local", "slurm")
CELL_LOG = "cell.log"
RUNNING = "running.json"  # the process running a cell: its pid and host
DAYS = 60 * 24 * 30  # submitit's local time limit, in minutes: none that a grid would meet
POLL_S = 0.5


def cell_folder(base: Path, name: str) -> Path:
    """A cell's own folder (its log, submitit's files): its name with ':' and arrows made safe."""
    return Path(base) / CELLS / re.sub(r"[^A-Za-z0-9.+=-]", "_", name)


def run_grid(cfg: CompareConfig) -> tuple[Path, dict[str, str]]:
    """`compare`: the grid's cells one after another, or with --jobs / --launcher in processes of
    their own (a --cell is always one process's work)."""
    check_launch(cfg)
    launch = cfg.launch
    if cfg.cell or (launch.jobs == 1 and not launch.launcher and not launch.dry_run):
        return run_compare(cfg)
    return run_compare(cfg, runner=launch_cells)


def check_grid(cfg: CompareConfig) -> None:
    """What a grid would refuse at its start (its flags, its launch), refused now: with several
    datasets, before the first grid runs."""
    check_launch(cfg)
    resolved = resolve(cfg)
    check_grid_flags(resolved, Path(resolved.out))


# Each launch flag, the modes it means something in ("pool": --jobs on this machine); set
# elsewhere it is refused, never ignored.
APPLIES = {"devices_per_job": ("pool",), "slurm_partition": ("slurm",),
           "slurm_time": ("slurm",), "slurm_gpus_per_job": ("slurm",),
           "slurm_cpus_per_job": ("slurm",), "slurm_account": ("slurm",),
           "slurm_max_parallel": ("slurm", "local")}


def check_launch(cfg: CompareConfig) -> None:
    """What the launch asks of this machine, and flags that mean nothing where they are given,
    refused before any work."""
    launch = cfg.launch
    if launch.launcher not in (None, *LAUNCHERS):
        raise MedsslError(f"--launcher {launch.launcher}: choose local or slurm.")
    if cfg.cell and (launch.jobs > 1 or launch.launcher or launch.dry_run):
        raise MedsslError(f"--cell {cfg.cell} runs that one cell here, and --jobs, --launcher "
                          "and --dry-run are about the whole grid. Fix: drop them, or --cell.")
    if launch.launcher and launch.jobs > 1:
        raise MedsslError("--jobs sets the cells at once on this machine; with --launcher the "
                          "cluster does (--slurm-max-parallel). Fix: pass one of the two.")
    mode = launch.launcher or "pool"
    defaults = LaunchOptions()
    for name, modes in APPLIES.items():
        if getattr(launch, name) != getattr(defaults, name) and mode not in modes:
            where = " or ".join("--jobs" if m == "pool" else f"--launcher {m}" for m in modes)
            raise MedsslError(f"--{name.replace('_', '-')} applies with {where} only. Fix: drop "
                              "it, or add what it applies to.")
    if launch.launcher == "slurm" and not launch.dry_run and not shutil.which("srun"):
        raise MedsslError("--launcher slurm submits with sbatch and srun, and this machine has "
                          "no srun: it is no node of a SLURM cluster. Fix: run compare on the "
                          "cluster's login node, or --dry-run to print the plan here.")
    if launch.launcher is None and launch.jobs > 1:
        check_pool(cfg)
    if launch.launcher == "slurm" and cfg.devices not in (1, launch.slurm_gpus_per_job):
        raise MedsslError(f"--devices {cfg.devices} with --launcher slurm: each cell runs on its "
                          f"job's --slurm-gpus-per-job GPUs ({launch.slurm_gpus_per_job}). Fix: "
                          f"--slurm-gpus-per-job {cfg.devices} instead.")
    if launch.launcher == "local" and gpu_ids(cfg):
        raise MedsslError("--launcher local runs the SLURM plan on this machine without giving "
                          "each cell a GPU of its own. Fix: --jobs N here (a GPU for each of N "
                          "cells); --launcher local is for trying the plan on a CPU.")


def check_pool(cfg: CompareConfig) -> None:
    """--jobs N: enough GPUs for N × --devices-per-job, and each cell's --devices that many."""
    launch, gpus = cfg.launch, gpu_ids(cfg)
    if not gpus and launch.devices_per_job != 1:
        raise MedsslError(f"--devices-per-job {launch.devices_per_job}: no GPU is visible here, "
                          "and on the CPU the cores are shared out between the --jobs. Fix: "
                          "drop it.")
    if gpus and launch.jobs * launch.devices_per_job > len(gpus):
        raise MedsslError(f"--jobs {launch.jobs} × --devices-per-job {launch.devices_per_job} "
                          f"needs {launch.jobs * launch.devices_per_job} GPUs, and this machine "
                          f"shows {len(gpus)}. Fix: fewer --jobs.")
    if gpus and cfg.devices not in (1, launch.devices_per_job):
        raise MedsslError(f"--devices {cfg.devices} with --jobs: each cell runs on its "
                          f"--devices-per-job GPUs ({launch.devices_per_job}). Fix: "
                          f"--devices-per-job {cfg.devices} instead.")


def gpu_ids(cfg: CompareConfig) -> list[int]:
    """The GPUs the cells may use (as CUDA_VISIBLE_DEVICES names them); none on the CPU."""
    if cfg.accelerator == "cpu":
        return []
    count = torch.cuda.device_count()
    shown = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not shown:
        return list(range(count))
    try:
        return [int(x) for x in shown.split(",") if x.strip()][:count]
    except ValueError:
        raise MedsslError(f"CUDA_VISIBLE_DEVICES={shown}: --jobs hands GPUs out by number. Fix: "
                          "name them by number (e.g. 0,1,2,3).") from None


def launch_cells(cfg: CompareConfig, base: Path, cells: list[Cell], common: dict,
                 skipped: dict) -> None:
    """compare's runner: the cells that only check finished runs here, the rest in processes."""
    if cfg.launch.dry_run:
        print_plan(cfg, base, cells, skipped, Path(common["split_file"]))
        return
    todo = []
    for cell in cells:  # reuse checks take seconds: not worth a process
        quick = cell.model in skipped or finished(cfg, base, cell) or (
            cell.kind == "pretrain"
            and not pretraining_needed(cfg, base, cell_runs(cfg, base, cell)[0]))
        if quick and all(d not in todo for d in depends_on(cfg, cell)):
            run_cell(cfg, base, cell, common, skipped)
        else:
            todo.append(cell)
    if not todo:
        return
    names = [c.name for c in todo]
    board = Board({c.name: [d.name for d in depends_on(cfg, c) if d.name in names]
                   for c in todo})
    work = worker_config(cfg)
    if cfg.launch.launcher:
        run_waves(work, base, board, cfg.launch)
    else:
        run_pool(work, base, board, cfg.launch)
    by_name = {c.name: c for c in todo}
    failed = {n: {"error": board.why[n], "log": str(cell_folder(base, n) / CELL_LOG),
                  "runs": [str(r) for r in cell_runs(cfg, base, by_name[n])]}
              for n, s in board.state.items() if s == "failed"}
    if failed:  # what the report marks (until their runs finish) and compare's last message
        atomic_write(base / FAILED, lambda p: p.write_text(json.dumps(failed, indent=2)))


def worker_config(cfg: CompareConfig) -> CompareConfig:
    """What each cell's process runs: the grid's configuration as one cell's, without progress
    bars (its log is a file), on the GPUs its job gets."""
    launch = cfg.launch
    devices = cfg.devices
    if launch.launcher == "slurm":
        devices = max(1, launch.slurm_gpus_per_job)
    elif launch.jobs > 1 and gpu_ids(cfg):
        devices = launch.devices_per_job
    return replace(cfg, progress=False, devices=devices, launch=LaunchOptions())


class CellJob(Checkpointable):
    """One cell in a process of its own (a submitit job). Its log goes to the cell's folder; a
    MedsslError comes back as the cell's error; a job pre-empted or out of time is requeued by
    submitit with `checkpoint`, and resumes."""

    def __call__(self, cfg: CompareConfig, name: str, threads: int | None = None) -> dict:
        folder = cell_folder(Path(cfg.out), name)
        folder.mkdir(parents=True, exist_ok=True)
        if threads:  # this process's share of the cores
            torch.set_num_threads(threads)
        medssl_log = logging.getLogger("medssl")
        handler = cell_log(folder) if is_rank_zero() else logging.NullHandler()  # one writer
        medssl_log.addHandler(handler)
        medssl_log.setLevel(logging.INFO if is_rank_zero() else logging.WARNING)
        if is_rank_zero():
            atomic_write(folder / RUNNING, lambda p: p.write_text(json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "resume": cfg.resume})))
        try:
            log.info("cell %s starts (pid %d%s)", name, os.getpid(),
                     ", resuming its runs" if cfg.resume else "")
            run_compare(replace(cfg, cell=name))
            log.info("cell %s finished", name)
            return {"error": None}
        except MedsslError as exc:  # the input's fault, said in one message: no retry
            log.error("cell %s failed: %s", name, exc)
            return {"error": str(exc)}
        except Exception:  # a bug or a stop: its traceback in the cell's log, then submitit's
            log.exception("cell %s stopped", name)
            raise
        finally:
            medssl_log.removeHandler(handler)
            handler.close()

    def checkpoint(self, cfg: CompareConfig, name: str, threads: int | None = None):
        """Called by submitit on pre-emption or timeout: the same cell again, resuming its runs
        from their last checkpoints (saved every --checkpoint-interval seconds)."""
        return DelayedSubmission(self, replace(cfg, resume=True), name, threads)


def cell_log(folder: Path) -> logging.Handler:
    handler = logging.FileHandler(folder / CELL_LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    return handler


def cpu_share(at_once: int) -> int:
    """Threads of each of `at_once` processes on the CPU: a share of what this process would
    use alone (all cores, or OMP_NUM_THREADS), so that the processes do not fight over cores.
    A cell's numbers can depend on its thread count (the order of a sum), so a grid run
    sequentially with the same threads per process gives the same results."""
    return max(1, torch.get_num_threads() // at_once)


def outcome(job) -> tuple[str, str]:
    """("done" | "error" | "crashed", what went wrong) of a finished job."""
    try:
        result = job.result()
    except Exception as exc:  # the process died, or raised what is not a MedsslError
        # submitit's message: its first line says what happened (no result: the process was
        # killed), then the process's error stream
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "no result"
        return "crashed", f"{first} (its error stream: {job.paths.stderr})"
    if isinstance(result, dict) and result.get("error"):
        return "error", result["error"]
    return "done", ""


def run_pool(cfg: CompareConfig, base: Path, board: Board, launch: LaunchOptions) -> None:
    """--jobs: each ready cell in a free slot's process; a crashed one once more, resuming."""
    gpus = gpu_ids(cfg)
    per = launch.devices_per_job
    slots = [tuple(gpus[i * per:(i + 1) * per]) if gpus else () for i in range(launch.jobs)]
    threads = cpu_share(launch.jobs)  # the loaders' and the CPU side's share on GPUs too
    free, running, tries = list(slots), {}, {}
    log.info("%d cells to run, %d at once (%s each)", len(board.state), launch.jobs,
             f"{per} GPU(s)" if gpus else f"{threads} CPU thread(s)")
    try:
        while not board.over:
            for name in board.ready()[:len(free)]:
                slot = free.pop(0)
                resume = cfg.resume or tries.get(name, 0) > 0
                running[name] = (submit_local(cfg, base, name, slot, threads, resume), slot)
                board.start(name)
                log.info("%s", board.line(launch.jobs))
            for name, (job, slot) in list(running.items()):
                if not job.done():
                    continue
                free.append(slot)
                del running[name]
                state, why = outcome(job)
                if state == "crashed" and tries.get(name, 0) == 0:
                    tries[name] = 1
                    board.state[name] = "waiting"  # started again at once, resuming its runs
                    log.warning("cell %s stopped (%s): starting it again, resuming its runs",
                                name, why or "its process died")
                    continue
                settle(board, base, name, state, why)
                log.info("%s", board.line(launch.jobs))
            time.sleep(POLL_S)
    finally:
        for job, _ in running.values():  # Ctrl-C or an error here: no orphan processes
            job.cancel()


def submit_local(cfg: CompareConfig, base: Path, name: str, gpus: tuple, threads: int | None,
                 resume: bool):
    folder = cell_folder(base, name)
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=DAYS, gpus_per_node=len(gpus), visible_gpus=gpus)
    return executor.submit(CellJob(), replace(cfg, resume=resume), name, threads)


def settle(board: Board, base: Path, name: str, state: str, why: str) -> None:
    """A finished job's cell marked done, or failed with its log's tail and path (and the cells
    that needed it with it)."""
    if state == "done":
        board.finish(name)
        return
    blocked = board.fail(name, why or "its process died")
    path = cell_folder(base, name) / CELL_LOG
    tail = path.read_text(errors="replace").splitlines()[-15:] if path.is_file() else []
    log.error("cell %s failed: %s\n  %s\n  whole log: %s%s", name, board.why[name],
              "\n  ".join(tail), path,
              f"\n  not started, they need it: {', '.join(blocked)}" if blocked else "")


def slurm_parameters(launch: LaunchOptions, local: bool = False) -> dict:
    """The submitit (AutoExecutor) parameters of every job of the grid's arrays."""
    # One task per GPU, as Lightning expects under SLURM (docs/distributed.md): a cell of two
    # GPUs is a two-process DDP run, each process a task.
    params = dict(timeout_min=DAYS if local else launch.slurm_time, nodes=1,
                  tasks_per_node=max(1, launch.slurm_gpus_per_job),
                  gpus_per_node=launch.slurm_gpus_per_job, cpus_per_task=launch.slurm_cpus_per_job,
                  name="medssl-cell")
    if local:  # this machine's CPU (check_launch): a cluster's options mean nothing here
        return {**params, "gpus_per_node": 0, "tasks_per_node": 1}
    # USR2 two minutes before the limit: submitit requeues the job, which resumes from its last
    # checkpoint (saved every --checkpoint-interval, 60 s by default).
    params["slurm_signal_delay_s"] = 120
    for key, value in (("slurm_partition", launch.slurm_partition),
                       ("slurm_account", launch.slurm_account),
                       ("slurm_array_parallelism", launch.slurm_max_parallel)):
        if value is not None:
            params[key] = value
    return params


def make_executor(base: Path, launch: LaunchOptions):
    """submitit's executor for the grid's arrays; its own files (sbatch scripts, job logs) under
    the grid's cells/ folder, one per job."""
    try:
        executor = submitit.AutoExecutor(folder=Path(base) / CELLS / "%j", cluster=launch.launcher)
    except RuntimeError as exc:  # no srun here
        raise MedsslError(f"--launcher slurm: {exc}. Fix: run compare on a node of the cluster "
                          "(a login node), or --launcher local to try the plan here.") from None
    executor.update_parameters(**slurm_parameters(launch, launch.launcher == "local"))
    return executor


def run_waves(cfg: CompareConfig, base: Path, board: Board, launch: LaunchOptions) -> None:
    """--launcher: a job array per wave, each once the wave before it is done. A job that ends
    without a result (a pre-emption submitit could not requeue, a lost node) is submitted once
    more, resuming its runs."""
    executor = make_executor(base, launch)
    for k, wave in enumerate(waves(list(board.state), board.needs)):
        todo = [n for n in wave if board.state[n] == "waiting"]  # not those a failure blocked
        # --launcher local: this machine's cores, at most --slurm-max-parallel cells at once
        size = (launch.slurm_max_parallel or len(todo)) if launch.launcher == "local" \
            else len(todo)
        for start in range(0, len(todo), max(1, size)):
            part = todo[start:start + max(1, size)]
            threads = cpu_share(len(part)) if launch.launcher == "local" else None
            crashed = run_array(executor, cfg, base, board, part, threads, k + 1)
            if crashed:
                log.warning("%s stopped without a result: submitting again, resuming their runs",
                            ", ".join(crashed))
                run_array(executor, replace(cfg, resume=True), base, board, crashed, threads,
                          k + 1, last_try=True)


def run_array(executor, cfg: CompareConfig, base: Path, board: Board, names: list[str],
              threads: int | None, wave: int, last_try: bool = False) -> list[str]:
    """One job array of `names`, waited for; returns the cells that crashed (a first time)."""
    jobs = executor.map_array(CellJob(), [cfg] * len(names), names, [threads] * len(names))
    log.info("wave %d: %d cell(s) submitted as job array %s", wave, len(names),
             jobs[0].job_id.split("_")[0])
    for name in names:
        board.start(name)
    running, crashed = dict(zip(names, jobs)), []
    try:
        while running:
            for name, job in list(running.items()):
                if job.done():
                    del running[name]
                    state, why = outcome(job)
                    if state == "crashed" and not last_try:
                        board.state[name] = "waiting"
                        crashed.append(name)
                        continue
                    settle(board, base, name, state, why)
                    log.info("%s", board.line(len(names)))
            time.sleep(POLL_S)
    except BaseException:
        for job in running.values():
            job.cancel()
        raise
    return crashed


def print_plan(cfg: CompareConfig, base: Path, cells: list[Cell], skipped: dict,
               split_file: Path) -> None:
    """--dry-run: the cells in their waves with what each needs, the cost, and (--launcher slurm)
    what every job asks of the cluster. Nothing is submitted."""
    todo = [c for c in cells if c.model not in skipped and not finished(cfg, base, c)]
    names = [c.name for c in todo]
    needs = {c.name: [d.name for d in depends_on(cfg, c) if d.name in names] for c in todo}
    images, rate, how = grid_cost(cfg, base, split_file, todo)
    print(f"plan of {base}: {len(todo)} cell(s) to run ({len(cells) - len(todo)} finished or "
          "skipped)")
    for k, wave in enumerate(waves(names, needs)):
        print(f"wave {k + 1}: {len(wave)} cell(s)" + (" (a job array)" if cfg.launch.launcher
                                                       else ""))
        for name in wave:
            after = f"  after {', '.join(needs[name])}" if needs[name] else ""
            print(f"  {name}  ~{duration(images[name] / rate)}{after}")
    hours = sum(images.values()) / rate / 3600
    print(f"cost: {sum(images.values()):.3g} training images at {rate:.1f} images/s ({how}): "
          f"about {hours:.2f} device-hours in all (a pretraining image counted twice, two "
          "views; a frozen protocol's pass as a third)")
    if cfg.launch.launcher == "slurm":
        params = slurm_parameters(cfg.launch)
        print("each job (submitit AutoExecutor): " + ", ".join(f"{k}={v}" for k, v in
                                                              params.items()))
