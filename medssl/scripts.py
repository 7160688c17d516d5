"""What the per-dataset entry points in Pretraining/ and Finetuning/ call: one line each."""

from __future__ import annotations

import sys

from medssl.cli import main


def pretrain(dataset: str) -> None:
    """`python Pretraining/SSL_<name>.py [flags]` == `medssl pretrain --dataset <name> [flags]`."""
    raise SystemExit(main(["pretrain", "--dataset", dataset, *sys.argv[1:]]))


def finetune(dataset: str) -> None:
    """`python Finetuning/Finetune_<name>.py --model M2 [flags]` == `medssl finetune --dataset <name> ...`."""
    raise SystemExit(main(["finetune", "--dataset", dataset, *sys.argv[1:]]))
