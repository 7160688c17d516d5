"""Teachers for knowledge distillation: finished finetuning runs, loaded whole (backbone and head)
from their selected checkpoint, strictly and with `weights_only`, frozen.

A teacher must have been trained on the student's split: the same images in train, val and test
(so it never trained on an image the student is selected or tested on), the same classes, the
same image size. Anything else is refused by the teacher's name with the fix.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch import nn

from medssl.errors import MedsslError
from medssl.models.backbones import empty_backbone, load_strict
from medssl.models.timm_backbones import out_features
from medssl.models.checkpoints import read_state_dict
from medssl.records import RunRecord, UnreadableRecord, read_run_record
from medssl.names import member_folder
from medssl.runs import SPLIT, best_checkpoint, finetune_finished
from medssl.training.classifier import make_head


class RunClassifier(nn.Module):
    """A finished run's backbone and head, as its checkpoint holds them."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x):
        return self.head(self.backbone(x))


FIX_RUN = "Fix: pass the folder of a finished `medssl finetune` run (e.g. runs/covid19/M3/seed0)."


def teacher_record(run: str | Path, who: str = "Teacher") -> RunRecord:
    """The record (metrics.json) of a finished finetuning run, or an error naming the folder and
    the fix (`who`: how the error names the run)."""
    run = Path(run)
    if not finetune_finished(run):
        what = "does not exist" if not run.exists() else "is not a finished finetuning run " \
                                                         "(no completion marker with metrics.json)"
        raise MedsslError(f"{who} {run} {what}. {FIX_RUN}")
    try:
        return read_run_record(run)
    except UnreadableRecord:
        raise MedsslError(f"{who} {run}: its metrics.json is not readable JSON. {FIX_RUN}") \
            from None


def teacher_model(run: str | Path) -> str:
    """The model a teacher run trained (its name in the table: M3, KD(M3→M1), DML(M3+M4)/M3)."""
    return teacher_record(run).model


def load_teacher(run: str | Path, samples: pd.DataFrame, classes: list[str], dataset: str,
                 image_size: int) -> tuple[nn.Module, dict]:
    """The teacher of `run` and what it is (for metrics.json); `samples` is the student's split."""
    run = Path(run)
    record = teacher_record(run)
    config = record.config
    problems = []
    if record.dataset != dataset:
        problems.append(f"it was trained on {record.dataset}, the student on {dataset}")
    if record.classes != list(classes):
        problems.append(f"its classes are {record.classes}, the student's {list(classes)}")
    if config["image_size"] != image_size:
        problems.append(f"it saw {config['image_size']} px images, the student {image_size} px")
    problems += _split_differences(run / SPLIT, samples)
    if problems:
        raise MedsslError(f"Teacher {run} does not fit this run: " + "; ".join(problems) +
                          f". Fix: finetune the student with --split-file {run / SPLIT} "
                          "(and the teacher's dataset, classes and --image-size), or train a "
                          "teacher on the student's split.")
    teacher, checkpoint = run_classifier(run, record, "Teacher")
    return teacher, {"run": str(run), "model": record.model, "arch": config["arch"],
                     "seed": record.seed, "checkpoint": str(checkpoint),
                     "test_acc": record.test["acc"]}


def run_classifier(run: Path, record: RunRecord, who: str) -> tuple[RunClassifier, Path]:
    """A finished run's network (backbone and head) from its selected checkpoint, strictly,
    frozen and in eval mode; `who` names the run in errors (Teacher, Run)."""
    config = record.config
    checkpoint = best_checkpoint(run)
    if config.get("mutual") and "/" not in record.model:  # a cohort's folder (not a member's)
        raise MedsslError(f"{who} {run} is a mutual-learning cohort ({record.model}): its "
                          "members are runs of their own, in its folder. Fix: name one of them, "
                          f"e.g. {member_folder(run, config['mutual'][0])}.")
    if not checkpoint.is_file():
        raise MedsslError(f"{who} {run} has no selected checkpoint ({checkpoint}): a frozen "
                          f"protocol's run, or one whose checkpoint was deleted. {FIX_RUN}")
    state = read_state_dict(checkpoint, f"checkpoint of {who.lower()} {run}")
    # Built with its own random stream: initialising the (soon overwritten) weights must not move
    # the caller's RNG (a student's head would start elsewhere than without a teacher).
    with torch.random.fork_rng(devices=[]):
        backbone = empty_backbone(config["arch"], config.get("in_channels", 3),
                                  config.get("image_size"))
        net = RunClassifier(backbone, make_head(config["head"], out_features(backbone),
                                                len(record.classes)))
    wanted = {k: v for k, v in state.items() if k.startswith(("backbone.", "head."))}
    load_strict(net, wanted, str(checkpoint))
    return net.eval().requires_grad_(False), checkpoint


def _split_differences(split_file: Path, samples: pd.DataFrame) -> list[str]:
    """Where the teacher's split differs from the student's, in words (empty when it does not)."""
    if not split_file.is_file():
        return [f"it has no {split_file.name}"]
    theirs = pd.read_csv(split_file, dtype=str, keep_default_na=False).set_index("path")["split"]
    ours = samples.set_index("path")["split"]
    for path, split in ours.items():
        if theirs.get(path, "absent") != split:
            return [f"its split differs (first: {path} is {theirs.get(path, 'absent')} there, "
                    f"{split} here)"]
    extra = sorted(set(theirs.index) - set(ours.index))
    if extra:
        return [f"its split holds images this one does not (first: {extra[0]})"]
    return []
