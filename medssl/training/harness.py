"""What every training run does around its module, pretraining and finetuning alike: open the run
folder and find the resume point, build the Trainer (loggers, last.ckpt every interval, the
sampler check, atomic checkpoint files), and fit with Ctrl-C and SIGTERM reported as what they are.
"""

from __future__ import annotations

import logging
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO

from medssl.atomic import atomic_write
from medssl.data.sampling import EpochSampler
from medssl.errors import Interrupted, MedsslError
from medssl.identity import check_same_run, write_identity
from medssl.runs import LAST, last_checkpoint, open_run_folder
from medssl.training.distributed import is_rank_zero, trainer_options
from medssl.training.run_logs import run_loggers

log = logging.getLogger("medssl")


@dataclass(frozen=True)
class RunStart:
    """A run folder opened for training: where, whether this process writes, what it resumes."""

    out: Path
    writer: bool  # in a distributed run, rank 0 alone writes files
    resume_from: Path | None  # the checkpoint --resume continues from; None when fresh
    resume_at: tuple[int, int] | None  # (epoch, global step) of that checkpoint
    started: float  # time.time() at opening: the run's wall time counts from here


def open_run(cfg, outputs: tuple[str, ...]) -> RunStart:
    """The run folder `cfg.out` checked for `--force`/`--resume` (runs.open_run_folder), and the
    point a resumed run starts from."""
    out = Path(cfg.out)
    writer = is_rank_zero()
    resume_from = open_run_folder(out, outputs, cfg.force, cfg.resume, owner=writer)
    point = resume_point(resume_from)
    if point:
        log.info("%s: resumed from its checkpoint after epoch %d", out, point[0])
    return RunStart(out, writer, resume_from, point, time.time())


def keep_identity(run: RunStart, identity: dict) -> None:
    """A resumed run goes on only as the run it was (its identity.json, medssl.identity); a fresh
    one records what it is before it trains."""
    if run.resume_from is not None:
        check_same_run(run.out, identity, "resume")
    elif run.writer:
        run.out.mkdir(parents=True, exist_ok=True)
        write_identity(run.out, identity)


def make_trainer(cfg, run: RunStart, checkpoints=(), callbacks=(), **options) -> pl.Trainer:
    """The Trainer every run uses: `checkpoints` (a finetuning's selection) before last.ckpt,
    then `callbacks`; the hardware part of `cfg` decides where and how it runs. `options` go to
    the Trainer as they are (a finetuning has no sanity validation)."""
    return pl.Trainer(
        max_epochs=cfg.epochs, max_steps=cfg.max_steps, accelerator=cfg.accelerator,
        precision=cfg.precision or default_precision(), **trainer_options(cfg),
        default_root_dir=str(run.out), deterministic=cfg.deterministic or None,
        logger=run_loggers(run.out, run.resume_at, tuple(cfg.loggers)),
        callbacks=[*checkpoints, every_epoch_checkpoint(run.out, cfg.checkpoint_interval),
                   *callbacks, SamplerEpochCheck()],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=cfg.progress, log_every_n_steps=1, enable_model_summary=False,
        **options)


def default_precision() -> str:
    """bf16 mixed precision where the GPU supports it; full precision on the CPU."""
    cuda = torch.cuda.is_available()
    return "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"


def every_epoch_checkpoint(out: Path, interval_s: float = 0.0):
    """`<out>/checkpoints/last.ckpt` for `--resume`: at the end of an epoch once `interval_s`
    seconds have passed since the last save (0: every epoch), and always after the last epoch.

    Not Lightning's `save_last`: that copies only when another checkpoint is saved (with
    `save_top_k=0`, only when training ends), so a run cut off later would repeat epochs. Saved
    at the very end of the train epoch, after validation and after `run_logs.log_now`. Not every
    epoch by default: a ResNet-50 with Adam's state is 300 MB, and saved after each of 200 short
    epochs it made the disk the bottleneck (the demo's quick start spent a third of its time in
    the kernel writing checkpoints). A resumed run replays from the saved epoch exactly as an
    uninterrupted one, so the interval bounds the work a kill loses, never the result."""
    # A resumed run finds its own checkpoints there: expected, not worth a warning.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    return IntervalCheckpoint(interval_s, dirpath=str(last_checkpoint(out).parent),
                              filename=Path(LAST).stem, save_top_k=1, enable_version_counter=False,
                              save_on_train_epoch_end=True)


class IntervalCheckpoint(pl.callbacks.ModelCheckpoint):
    """A ModelCheckpoint that skips epoch ends until `interval_s` seconds have passed since its
    last save (or the run's start), except the last epoch's."""

    def __init__(self, interval_s: float, **kwargs):
        super().__init__(**kwargs)
        self.interval_s = interval_s
        self._saved_at = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._saved_at = time.monotonic()
        super().on_train_start(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        last = (trainer.current_epoch + 1 >= (trainer.max_epochs or 0) or trainer.should_stop
                or 0 < trainer.max_steps <= trainer.global_step)
        if not last and time.monotonic() - self._saved_at < self.interval_s:
            return
        super().on_train_epoch_end(trainer, pl_module)
        self._saved_at = time.monotonic()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written beside their final name, then renamed. (Lightning stages them in the
    system temp folder; where that is another disk, the final copy can be cut off half-way.)"""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))


def resume_point(checkpoint: Path | None) -> tuple[int, int] | None:
    """(epoch, global step) at which a run resumed from this Lightning checkpoint starts; None
    when fresh. The epoch is its fit loop's `current.processed` count: what Lightning hands to
    `set_epoch`."""
    if checkpoint is None:
        return None
    try:
        # weights_only: a planted or corrupt checkpoint is refused here, its pickle never run.
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise MedsslError(f"{checkpoint} is not a checkpoint this run can resume from: it does not "
                          f"load with weights_only=True ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]}). Fix: delete it and run again "
                          "without --resume.") from None
    try:
        epoch = int(state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except KeyError:
        epoch = int(state["epoch"]) + 1  # written by another Lightning version: epoch-end saves
    return epoch, int(state["global_step"])


class SamplerEpochCheck(pl.Callback):
    """Stops a run whose first batch of an epoch came from another epoch's order.

    Lightning creates the train iterator of a resumed run before it calls `set_epoch`, and with
    loader workers that iterator fetches its first batches at once: without `start_epoch` the
    resumed epoch would replay epoch 0's images and augmentations. This check makes any such
    mismatch (for example after a Lightning upgrade) an error instead of a silent difference.
    """

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        sampler = getattr(trainer.train_dataloader, "sampler", None)
        if batch_idx == 0 and isinstance(sampler, EpochSampler) \
                and sampler.served_epoch != trainer.current_epoch:
            raise RuntimeError(f"epoch {trainer.current_epoch} is training on the image order of "
                               f"epoch {sampler.served_epoch}: a resumed run would not match an "
                               "uninterrupted one. Please report this with your Lightning version.")


def ignore_signal(signum, frame) -> None:
    """A handler that does nothing (see quiet_workers_on_sigterm)."""


def quiet_workers_on_sigterm():
    """On SIGTERM, before Lightning's own handler (which keeps this one, and runs it): torch's
    SIGCHLD handler off. A SIGTERM sent to the process group kills the loader workers too, and
    that handler raises "DataLoader worker ... is killed" wherever the main process is, once
    inside a weakref callback, which Python prints as a traceback ("Exception ignored in ...")
    beside the clean stop message (seen once in `.ci/run`, 2026-12-07). The run stops either
    way; this keeps the screen to the one message. CPython handles a pending SIGTERM (15)
    before a pending SIGCHLD (17). Returns a function that puts the earlier handler back."""
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        # A Python no-op, not SIG_DFL: a SIGCHLD already pending when the handler changes to
        # SIG_DFL makes CPython raise "OSError: Signal 17 ignored due to race condition" in the
        # main thread, printed as a traceback (2 of 3 runs of the SIGTERM test, 2026-12-07).
        signal.signal(signal.SIGCHLD, ignore_signal)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL and signal.getsignal(signal.SIGTERM) is handler:
            # Lightning's handler (which stops the run after the batch) is not in place yet:
            # end the process, as SIGTERM did before this handler.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: signals are the main thread's
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, previous) if previous is not None else None


def fit(trainer, out: Path, *args, **kwargs) -> None:
    """`trainer.fit`, with Ctrl-C and SIGTERM reported as what they are. Lightning catches the KeyboardInterrupt,
    tears the run down, ignores further Ctrl-C and calls `sys.exit(1)`: without this, the user
    would get exit status 1 and no word of what was saved. Here it becomes `Interrupted` (exit
    130), which names the checkpoint to `--resume` from, if the run got as far as one."""
    restore = quiet_workers_on_sigterm()
    try:
        trainer.fit(*args, **kwargs)
    except BaseException as exc:
        # SIGTERM (a batch system's time limit, `kill`, `timeout`): Lightning stops after the
        # batch, or the signal reaches the loader's workers first and their death surfaces as
        # an error; either way it is a stop, not a bug, and the saved epoch can be resumed.
        sigterm = trainer.received_sigterm and not isinstance(exc, KeyboardInterrupt)
        # Lightning's sys.exit(1) after a Ctrl-C, raised while handling the KeyboardInterrupt;
        # any other exit (submitit requeueing a pre-empted job) goes on as it is.
        ctrl_c = isinstance(exc, SystemExit) and isinstance(exc.__context__, KeyboardInterrupt)
        if not sigterm and not (ctrl_c and trainer.interrupted):
            raise
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning set it to ignore
        # The run is over: torch's SIGCHLD handler would otherwise report the workers the
        # signal killed with a traceback while Python exits.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        what = "stopped (SIGTERM)" if sigterm else "interrupted (Ctrl-C)"
        last = last_checkpoint(out)
        if last.is_file():
            saved = resume_point(last)[0]
            raise Interrupted(f"{what} in epoch {trainer.current_epoch + 1}. The run is saved "
                              f"as of the end of epoch {saved} in {last}. Fix: run the same "
                              "command again with --resume to continue from there.") from None
        raise Interrupted(f"{what} before the first epoch ended: there is nothing to "
                          "resume. Run the same command again to start anew.") from None
    finally:
        restore()
