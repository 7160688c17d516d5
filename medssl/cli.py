"""The `medssl` command line. Each subcommand parses flags and calls one function of the package."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import warnings
from pathlib import Path

from medssl import __version__
from medssl.errors import Interrupted, MedsslError
from medssl.options import (AnalysisOptions, DataOptions, HardwareOptions, LaunchOptions,
                            ModelOptions, RecipeOptions, SSLOptions)
from medssl.ranges import RANGES
from medssl.oserrors import describe, writable_file, writable_folder
from medssl.runs import FAILED, RUNS, finetune_finished
from medssl.config_files import dump as dump_config
from medssl.config_files import rerun_values, with_config, write_config
from medssl.names import (ACCELERATORS, ARCHS, AUGMENT_PRESETS, DUPLICATE_POLICIES, HEADS, INITS,
                          LOGGERS, PROTOCOLS,
                          LR_SCALING, LR_SCHEDULES, OPTIMIZERS, PRECISIONS, PRIMARY_CHOICES,
                          SELECT_METRICS, STRATEGIES, method_names, parse_cohort, parse_distill,
                          prior_of)
from medssl.training.distributed import is_rank_zero


def ranged(name: str):
    """An argparse type for the number `name` of the table of ranges (medssl.ranges.RANGES),
    which the configurations' check reads too: a value is refused at parse, naming it and the
    range."""
    rng = RANGES[name]

    def parse(text: str):
        try:
            return rng.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = name  # argparse names the type in some of its messages
    return parse


def devices_flag(text: str) -> int | str:
    """`--devices`: a count, a comma-separated list of device indices, or auto."""
    if text == "auto" or "," in text and all(part.strip().isdigit() for part in text.split(",")):
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a count of at least 1, a list such as 0,2, or "
                                     f"auto; got {text!r}")


def augment_override(text: str):
    from medssl.data.transforms import parse_augment_override  # lazy: transforms import torch

    try:
        return parse_augment_override(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def arch_flag(text: str) -> str:
    """`--arch`: a torchvision ResNet by name, or `timm:MODEL_NAME` (the name is checked against
    timm when the run resolves: importing timm here would slow every command's start)."""
    if text in ARCHS or (text.startswith("timm:") and len(text) > len("timm:")):
        return text
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(ARCHS)}, "
                                     "or timm:MODEL_NAME)")


def window_flag(text: str) -> str:
    """`--window`: auto, minmax or C,W, as its canonical text."""
    from medssl.data.windowing import parse_window  # numpy only

    try:
        return str(parse_window(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--window {text.lower()!r}: ")) \
            from None


def data_options(several: bool = False) -> argparse.ArgumentParser:
    """Flags every command that reads a dataset shares (`several`: compare's grid per dataset)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", required=True, nargs="+" if several else None,
                   metavar="DATASET" if several else None,
                   help="a name from `medssl datasets`" + ("; several: a grid for each, then "
                                                           "the summary across them" if several
                                                           else ""))
    g.add_argument("--data-root", help="the unpacked download, or the folder above it "
                   "(default: $MEDSSL_DATA_ROOT or ./data)")
    g.add_argument("--split-seed", type=ranged("split_seed"), default=0,
                   help="seed of the carved val/test splits (default 0)")
    g.add_argument("--val-fraction", type=ranged("val_fraction"), default=None,
                   help="share of the training pool carved out for validation (default 0.15)")
    g.add_argument("--test-fraction", type=ranged("test_fraction"), default=None,
                   help="share carved out for test where the download has no test split (default 0.2)")
    g.add_argument("--split-file", help="reuse the split.csv of an earlier run exactly")
    g.add_argument("--duplicates", choices=DUPLICATE_POLICIES, default="drop",
                   help="copies of one picture: drop (default) keeps the official test split as "
                   "published and leaves copies of test images, extra copies and copies under "
                   "different labels out of training; keep reproduces the published, leaky "
                   "splits (the study's protocol). Either way `medssl check` lists them")
    g.add_argument("--window", type=window_flag, default="auto",
                   help="DICOM and 16-bit pictures to 8 bits: auto (default: a DICOM file's own "
                   "VOI LUT or window, else its 0.5-99.5th percentiles), minmax, or C,W (one "
                   "centre and width for all, e.g. 40,400); see docs/medical-images.md")
    g.add_argument("--csv-path-column", default="path", help="csv dataset: image path column")
    g.add_argument("--csv-label-column", default="label", help="csv dataset: label column")
    g.add_argument("--csv-split-column", default=None,
                   help="csv dataset: the train/val/test column (default: the CSV's `split` "
                   "column when it has one; `none` ignores it and carves the splits)")
    g.add_argument("--csv-group-column", default=None,
                   help="csv dataset: the patient/lesion id column for grouped splits (default: "
                   "the CSV's `group` column when it has one; `none` ignores it)")
    g.add_argument("--workers", type=ranged("workers"), default=None,
                   help="processes that decode images (default: all CPU cores)")
    return p


def data_part(args: argparse.Namespace):
    """The data part (options.DataOptions) of the flags; the csv column flags become its
    `read_options`."""
    from medssl.data import ReadOptions  # lazy: the data package imports pandas and PIL
    return DataOptions(**{**part_from_args(args, DataOptions),
                          "read_options": ReadOptions(args.csv_path_column, args.csv_label_column,
                                                      args.csv_group_column,
                                                      args.csv_split_column)})


def data_config(args: argparse.Namespace):
    """The DataConfig of the flags, made as every training run makes it (data.prepare)."""
    from medssl.data.prepare import data_config as of_part  # lazy: pandas, PIL

    return of_part(data_part(args))


def cmd_datasets(args: argparse.Namespace) -> int:
    # Lazy, as every command's own imports below: `medssl --help` loads none of them, and
    # torch only the commands that train (`medssl datasets` and `check` run without it).
    from medssl.data import all_adapters  # lazy: pandas, PIL
    from medssl.data.registry import indent  # lazy: pandas

    for a in all_adapters():
        classes = f"{len(a.classes)} classes" if a.classes else "classes from the data"
        print(f"{a.name:<11} {a.title} ({classes})")
        print(f"            download: {a.download}")
        print(f"            groups: {a.grouping}")
        same_id = " and by the picture's id in file names" if a.image_id_pattern else ""
        print(f"            copies: found by content (exact and near){same_id}; a copy's "
              "group joins its twins'")
        print(indent(a.expected_tree, " " * 12))
        print()
    return 0


def cmd_priors(args: argparse.Namespace) -> int:
    from medssl.models.foundation import PRIORS, describe  # lazy: the registry is torch-free
    from medssl.models.foundation_load import availability  # lazy: timm

    print("random          a random init (M1, M2)")
    print("imagenet        torchvision's ImageNet weights (M3, M4); --imagenet-weights")
    for entry in PRIORS.values():
        print(describe(entry))
        print(f"{'':<15} here: {availability(entry)}")
    print("timm:NAME       any timm model with timm's pretrained weights from the Hugging Face "
          "cache")
    print("timm:NAME=PATH  any timm model with the weights in PATH (safetensors or a state_dict)")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from medssl.data import open_dataset, summary  # lazy: pandas, PIL
    from medssl.data.splits import write_split_csv  # lazy: pandas

    for flag, path in (("--split-out", args.split_out), ("--preview", args.preview)):
        if path:
            writable_file(path, flag)
    table = open_dataset(data_config(args), args.workers,
                         progress=not args.json and sys.stderr.isatty())
    report = summary(table)
    if args.split_out and report["usable"]:
        write_split_csv(table.samples, args.split_out, args.duplicates)
    if args.preview:
        from medssl.data.preview import write_preview  # lazy: matplotlib

        shown = write_preview(table, args.preview)
        print(f"preview: {shown} picture(s) as medssl reads them, in {args.preview}",
              file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_check(report, args.split_out)
    return 0 if report["usable"] else 1


def print_check(report: dict, split_out: str | None) -> None:
    import pandas as pd

    print(f"dataset: {report['dataset']}   root: {report['root']}")
    print(f"images: {report['total']}   groups: {report['groups']}   classes: {len(report['classes'])}")
    # Classes as rows: class names can be long (`pigmented benign keratosis`), splits are three.
    counts = pd.DataFrame(report["splits"]).loc[report["classes"]]
    if report["excluded"]:  # left out of training by the duplicate policy
        left_out = pd.Series([r["label"] for r in report["excluded"]]).value_counts()
        counts["excluded"] = left_out.reindex(counts.index, fill_value=0)
    counts["total"] = counts.sum(axis=1)
    counts.loc["total"] = counts.sum(axis=0)
    print(counts.to_string())
    for note in report["notes"]:
        print(f"note: {note}")
    groups = report["duplicates"]
    print(f"duplicate groups: {len(groups)}" + (" (copies of one picture; policy "
                                                f"--duplicates {report['duplicate_policy']})"
                                                if groups else ""))
    reasons = {r["path"]: r["reason"] for r in report["excluded"]}
    for i, g in enumerate(groups, start=1):
        print(f"  group {i}, {g['kind']}:")
        for path, label, split in zip(g["paths"], g["labels"], g["splits"]):
            why = f" ({reasons[path]})" if path in reasons else ""
            print(f"    {split:<8} {label:<20} {path}{why}")
    if report["excluded"]:
        kinds = ", ".join(f"{n} {kind}" for kind, n in report["excluded_by_reason"].items())
        print(f"left out of train/val/SSL: {len(report['excluded'])} image(s) ({kinds})")
    for p in report["problems"]:
        print(f"{p['severity']}: {p['path']}: {p['problem']}")
    errors = sum(p["severity"] == "error" for p in report["problems"])
    if report["usable"]:
        print("usable: yes" + (f" (split written to {split_out})" if split_out else ""))
    else:
        print(f"usable: no, {errors} error(s) above" +
              (f"; split not written to {split_out}" if split_out else ""))


def training_options() -> argparse.ArgumentParser:
    """Flags every command that trains shares (unset values come from the dataset's preset)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model and hardware (unset values come from the dataset's preset)")
    g.add_argument("--arch", type=arch_flag, default=None, metavar="ARCH",
                   help=f"{', '.join(ARCHS)} (torchvision), or timm:MODEL_NAME (any timm model, "
                   "e.g. timm:vit_tiny_patch16_224; default: the preset's)")
    g.add_argument("--image-size", type=ranged("image_size"), default=None)
    g.add_argument("--epochs", type=ranged("epochs"), default=None)
    g.add_argument("--batch-size", type=ranged("batch_size"), default=None)
    g.add_argument("--lr", type=ranged("lr"), default=None)
    g.add_argument("--in-channels", type=ranged("in_channels"), choices=(1, 3), default=3,
                   help="the backbone's input channels: 3 (default, RGB), or 1 for a grey "
                   "dataset (a 1-channel stem; ImageNet's first convolution summed over RGB)")
    g.add_argument("--imagenet-weights", default=None,
                   help="for an ImageNet init: IMAGENET1K_V1 (default), IMAGENET1K_V2, or a "
                   "state_dict file")
    g.add_argument("--accelerator", choices=ACCELERATORS, default="auto",
                   help="auto (default: a GPU when there is one), cpu, gpu")
    g.add_argument("--devices", type=devices_flag, default=1,
                   help="devices per node: N, a list such as 0,2, or auto (all); more than one "
                   "(or --num-nodes above 1) runs DDP, see docs/distributed.md")
    g.add_argument("--num-nodes", type=ranged("num_nodes"), default=1)
    g.add_argument("--strategy", choices=STRATEGIES, default="auto",
                   help="auto (DDP when there are several devices) or ddp")
    g.add_argument("--lr-scaling", choices=LR_SCALING, default="auto",
                   help="how --lr follows the global batch over several processes: x world "
                   "size (linear), x its square root (sqrt), or none; auto (default): sqrt for "
                   "Adam, linear for LARS")
    g.add_argument("--precision", choices=PRECISIONS, default=None, metavar="PRECISION",
                   help="one of " + ", ".join(PRECISIONS[:6]) + " (default: bf16-mixed on a GPU, "
                   "else 32-true)")
    g.add_argument("--num-workers", type=ranged("num_workers"), default=None,
                   help="DataLoader workers (default: the CPU count, at most 8; none when "
                   "training on the CPU from the image cache, where they only slow it)")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="leave unreadable images out instead of stopping")
    g.add_argument("--no-cache", dest="cache", action="store_false",
                   help="decode the original images on every read instead of using the "
                   "preprocessed image cache ($MEDSSL_CACHE_DIR/images)")
    g.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms only: identical reruns on GPUs too, but slower")
    g.add_argument("--checkpoint-interval", type=ranged("checkpoint_interval"), default=60.0, metavar="SECONDS",
                   help="save checkpoints/last.ckpt (for --resume) at the end of an epoch once "
                   "this many seconds have passed since the last save, and after the last epoch "
                   "(default 60; 0: every epoch). A resumed run is exact either way")
    g.add_argument("--logger", dest="loggers", nargs="+", choices=list(LOGGERS),
                   default=["tensorboard", "csv"], metavar="LOGGER",
                   help="where the curves of the runs it trains go, through Lightning's "
                   "loggers: tensorboard, csv (default both; the CSV log is always written), "
                   "mlflow, wandb (each needs its package: pip install medssl[mlflow])")
    g.add_argument("--max-steps", type=int, default=-1, help=argparse.SUPPRESS)
    return p


def finetune_recipe_options() -> argparse.ArgumentParser:
    """The finetuning recipe, the same for M1-M4; shared by `finetune` and `compare`."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("finetuning recipe (the same for every model)")
    g.add_argument("--head", choices=HEADS, default="linear",
                   help="linear (default) or mlp, the study's 3-layer head")
    g.add_argument("--select", choices=list(SELECT_METRICS), default="loss",
                   help="val metric that selects the checkpoint (default loss)")
    g.add_argument("--full-val", action="store_true",
                   help="at a label fraction below 1, select on the whole val split (default: a "
                   "val split subsampled with the same fraction, stratified, at least one image "
                   "per class, as a user with that few labels would have)")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                   help="finetuning learning rate: constant (the study's) or cosine decay to 0")
    g.add_argument("--lr-grid", type=ranged("lr_grid"), nargs="+", metavar="LR",
                   help="choose each model's learning rate among these on val (compare: the mean "
                   "over all seeds; default there: the preset's grid, e.g. 1e-5 1e-4 1e-3); "
                   "--lr fixes one rate instead")
    g.add_argument("--class-weights", action="store_true",
                   help="weight the training loss by inverse class frequency")
    g.add_argument("--balanced-sampling", action="store_true",
                   help="draw every class equally often during training")
    g.add_argument("--freeze-epochs", type=ranged("freeze_epochs"), default=0,
                   help="train only the head for this many epochs first (the study's warm-up)")
    g.add_argument("--bn-eval", action="store_true",
                   help="keep the backbone's BatchNorm in eval mode throughout (the study's "
                   "setting; leaves a random backbone without normalisation)")
    g.add_argument("--kd-temperature", type=ranged("kd_temperature"), default=4.0,
                   help="knowledge distillation (--teacher, compare --distill): temperature "
                   "(default 4)")
    g.add_argument("--kd-alpha", type=ranged("kd_alpha"), default=0.9,
                   help="knowledge distillation: weight of the teachers' term, 1 - alpha on the "
                   "labels (default 0.9)")
    return p


def run_folder_flags(g, out_help: str) -> None:
    g.add_argument("--out", help=out_help)
    g.add_argument("--resume", action="store_true", help="continue from <out>/checkpoints/last.ckpt")
    g.add_argument("--force", action="store_true", help="run again into a finished folder")


def method_option(text: str) -> tuple[str, float]:
    """`--method-opt KEY=VALUE`: one setting of the method (checked against its defaults later)."""
    key, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not KEY=NUMBER") from None
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"'{text}' is not KEY=NUMBER")
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"'{text}': the value must be a finite number")
    return key.strip(), int(number) if number.is_integer() and "." not in value else number


def add_ssl_flags(g, prefix: str = "") -> None:
    """The pretraining recipe (options.SSLOptions), defined once: plain in `pretrain`, with the
    `ssl-` prefix in `compare` (where --epochs, --batch-size and --lr are finetuning's)."""
    f, what = f"--{prefix}", "pretraining " if prefix else ""
    if prefix:  # `pretrain` takes these three from the shared training flags
        g.add_argument(f"{f}epochs", type=ranged("epochs"), default=None,
                       help="pretraining epochs (default: the preset's)")
        g.add_argument(f"{f}batch-size", type=ranged("batch_size"), default=None,
                       help="pretraining batch size (default: the preset's)")
        g.add_argument(f"{f}lr", type=ranged("lr"), default=None,
                       help="pretraining learning rate (default: the preset's)")
    else:
        g.add_argument("--method", choices=method_names(), default="simclr",
                       help="the self-supervised method (default simclr, the study's; "
                       "docs/methods.md)")
    g.add_argument(f"{f}method-opt", type=method_option, action="append", default=[],
                   metavar="KEY=VALUE", dest=f"{prefix.replace('-', '_')}method_options",
                   help=f"one setting of the {what}method, e.g. temperature=0.2 (repeatable; "
                   "docs/methods.md lists each method's)")
    g.add_argument(f"{f}warmup-epochs", type=ranged("warmup_epochs"), default=None,
                   help="linear warm-up epochs (default: the preset's, at most a tenth of the run)")
    g.add_argument(f"{f}optimizer", choices=OPTIMIZERS, default=None,
                   help=f"{what}optimiser (default: Adam, the study's; simsiam: its authors' SGD, "
                   "with their lr and weight decay; docs/methods.md)")
    g.add_argument(f"{f}exclude-bn-bias", action="store_true",
                   help="no weight decay on BatchNorm parameters and biases")
    g.add_argument(f"{f}augment", choices=AUGMENT_PRESETS, default=None,
                   help=f"{what}augmentation preset (default: the dataset's)")
    g.add_argument(f"{f}min-gain", type=ranged("min_gain"), default=None, metavar="POINTS",
                   help="refuse a pretraining whose val read-outs (kNN and few-shot, balanced) "
                   "gain less than this many points over a random init of the network (default: "
                   "warn when it gains nothing, and mark its rows in results.md)")
    g.add_argument(f"{f}aug", type=augment_override, action="append", default=[],
                   metavar="KEY=VALUE", dest=f"{prefix.replace('-', '_')}augment_overrides",
                   help="override one knob of the augmentation preset, e.g. min_scale=0.3 "
                   "(lightly SimCLRTransform names; repeatable)")


def add_pretrain_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pretraining")
    add_ssl_flags(g)
    g.add_argument("--label-fraction", type=ranged("label_fraction"), default=1.0,
                   help="supcon only: learn from this seeded, stratified share of the labels")
    g.add_argument("--init", type=init_flag, default="random", metavar="INIT",
                   help="initial weights before pretraining: random (for M2), imagenet (for M4), "
                   "or a foundation prior from `medssl priors` (timm:NAME too: for F-<prior>+"
                   "<method>)")
    prior_weights_flag(g)
    g.add_argument("--seed", type=ranged("seed"), default=0, help="training seed (default 0)")
    run_folder_flags(g, "output folder (default runs/<dataset>/ssl-<init> for simclr, "
                     "ssl-<method>-<init> for the others)")


def part_from_args(args: argparse.Namespace, part, prefix: str = "") -> dict:
    """The fields of an options part (medssl.options) from the parsed flags, each read from the
    flag of its name (with `prefix`); a field without a flag keeps its default. Lists of
    KEY=VALUE flags become dicts."""
    from dataclasses import fields

    values = {}
    for f in fields(part):
        if hasattr(args, prefix + f.name):
            value = getattr(args, prefix + f.name)
            values[f.name] = dict(value) if f.name in ("method_options", "augment_overrides") \
                else value
    return values


def shared(args: argparse.Namespace) -> dict:
    """The data, hardware and model parts every training command passes on whole."""
    values = {**part_from_args(args, DataOptions), **part_from_args(args, HardwareOptions),
              **part_from_args(args, ModelOptions)}
    values["read_options"] = data_part(args).read_options
    values["progress"] = sys.stderr.isatty()
    return values


def pretrain_config(args: argparse.Namespace):
    """`medssl pretrain`'s flags as its configuration (the CLI's and the Python API's)."""
    from medssl.training.pretrain import PretrainConfig  # lazy: torch

    return PretrainConfig(label_fraction=args.label_fraction, init=args.init, seed=args.seed,
                          prior_weights=args.prior_weights,
                          out=args.out, resume=args.resume, force=args.force,
                          **part_from_args(args, SSLOptions), **shared(args))


def cmd_pretrain(args: argparse.Namespace) -> int:
    from medssl.training.pretrain import run_pretrain  # lazy: torch

    out = run_pretrain(pretrain_config(args))
    if is_rank_zero():
        # The flags as given: a pretraining resolves its length, optimiser and crops from
        # them (and from the data), and writing the results back as flags would change how.
        rerun_config(args, {}, out)
        print(f"backbone written to {out / 'backbone.pt'}")
    return 0


def rerun_config(args: argparse.Namespace, resolved: dict, folder) -> None:
    """config.yaml in the run's folder: the command's flags at the values the run resolved."""
    write_config(folder, rerun_values(command_parser(args.command), vars(args), resolved))


def checked_by(check):
    """An argparse type that keeps the text once `check(text)` accepts it: its MedsslError
    becomes argparse's message, naming the flag."""
    def flag_type(text: str) -> str:
        try:
            check(text)
        except MedsslError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text
    return flag_type


def prior_flag(text: str) -> str:
    """`--priors`: a registry name, timm:NAME or timm:NAME=PATH (models.foundation)."""
    from medssl.models.foundation import parse_prior  # lazy: the models import torch

    return checked_by(parse_prior)(text)


def init_flag(text: str) -> str:
    """`--init` of pretrain: random, imagenet, or a foundation prior's name (no '=PATH': that
    is --prior-weights)."""
    if text in INITS:
        return text
    if "=" in text:
        raise argparse.ArgumentTypeError(f"{text}: the weights file goes in --prior-weights. "
                                         f"Fix: --init {text.split('=')[0]} --prior-weights "
                                         f"{text.split('=', 1)[1]}")
    return prior_flag(text)


def prior_weights_flag(g) -> None:
    g.add_argument("--prior-weights", metavar="PATH",
                   help="a foundation prior's weights file (safetensors or a state_dict of its "
                   "timm model); default: the Hugging Face cache")


def model_flag(text: str) -> str:
    """`--model`: M1-M4, or M2-<method> / M4-<method> (names.prior_of)."""
    return checked_by(prior_of)(text)


def distill_flag(text: str) -> str:
    """`--distill`: TEACHER:STUDENT, e.g. M3:M1 or M3+M4:M1."""
    return checked_by(parse_distill)(text)


def cohort_flag(text: str) -> str:
    """`--mutual` of compare: MODEL+MODEL[+...], e.g. M3+M4."""
    return checked_by(parse_cohort)(text)


def add_finetune_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("finetuning")
    g.add_argument("--model", type=model_flag, metavar="MODEL",
                   help="M1 random, M2 random+SimCLR, M3 ImageNet, M4 ImageNet+SimCLR; "
                   "M2-<method> / M4-<method> for another SSL method (e.g. M2-byol); "
                   "F-<prior> from a foundation prior (`medssl priors`), F-<prior>+<method> "
                   "from SSL on this dataset from it")
    g.add_argument("--mutual", nargs="+", type=model_flag, metavar="MODEL",
                   help="deep mutual learning instead of --model: train these models (two or "
                   "more) together, each also learning from the others' predictions; writes each "
                   "member's run and their ensemble's")
    prior_weights_flag(g)
    g.add_argument("--ssl-checkpoint", help="backbone.pt (or its folder) for M2/M4 "
                   "(default runs/<dataset>/ssl-random or ssl-imagenet)")
    g.add_argument("--allow-other-dataset", action="store_true",
                   help="accept an SSL backbone pretrained on another dataset")
    g.add_argument("--seed", type=ranged("seed"), default=0, help="training seed (default 0)")
    g.add_argument("--label-fraction", type=ranged("label_fraction"), default=1.0,
                   help="finetune on this seeded, stratified share of the labelled train split")
    g.add_argument("--teacher", nargs="+", dest="teachers", metavar="RUN",
                   help="knowledge distillation from these finished runs of the same split (their "
                   "probabilities averaged)")
    run_folder_flags(g, "run folder (default runs/<dataset>/<model>/seed<k>; KD-M3-to-M1, "
                     "DML-M3+M4 for distillation and mutual learning)")


def finetune_config(args: argparse.Namespace):
    """`medssl finetune`'s flags as its configuration (the CLI's and the Python API's)."""
    from medssl.training.finetune import FinetuneConfig  # lazy: torch

    return FinetuneConfig(model=args.model or "", mutual=args.mutual,
                          ssl_checkpoint=args.ssl_checkpoint, prior_weights=args.prior_weights,
                          allow_other_dataset=args.allow_other_dataset, seed=args.seed,
                          label_fraction=args.label_fraction, out=args.out, resume=args.resume,
                          force=args.force, teachers=args.teachers,
                          **part_from_args(args, RecipeOptions), **shared(args))


def finetuned(args: argparse.Namespace):
    """Run `medssl finetune` (an lr search where --lr-grid asks); the run's folder."""
    from medssl.experiments.lr_search import finetune_with_lr_grid  # lazy: torch
    from medssl.training.finetune import run_finetune  # lazy: torch

    cfg = finetune_config(args)
    return finetune_with_lr_grid(cfg) if cfg.lr_grid else run_finetune(cfg)


def cmd_finetune(args: argparse.Namespace) -> int:
    out = finetuned(args)
    if is_rank_zero():
        from medssl.records import read_run_record  # lazy: the CLI starts torch-free

        config = read_run_record(out).config
        if config.get("mutual"):  # a cohort's record names its ensemble: --mutual says it
            config = {k: v for k, v in config.items() if k != "model"}
        rerun_config(args, config, out)
        print(f"metrics written to {out / 'metrics.json'}")
    return 0


def add_compare_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("the grid")
    g.add_argument("--models", nargs="+", type=model_flag, default=["M1", "M2", "M3", "M4"],
                   metavar="MODEL", help="the study's M1-M4 (default all), or M2-<method>")
    g.add_argument("--ssl-methods", nargs="+", default=None, metavar="METHOD",
                   help="pretrain with each of these methods and finetune M2 and M4 from each "
                   "(e.g. simclr byol swav: M2, M2-byol, M2-swav, ...); default simclr")
    g.add_argument("--priors", nargs="+", type=prior_flag, metavar="PRIOR",
                   help="also finetune from these foundation priors: names from `medssl priors`, "
                   "timm:MODEL_NAME, or timm:MODEL_NAME=PATH (a weights file); a row F-<prior> "
                   "each. A prior whose weights are not here is skipped, saying where to get them")
    g.add_argument("--continue-ssl", nargs="+", metavar="METHOD", choices=method_names(),
                   help="also pretrain each prior of --priors with these methods on this "
                   "dataset, then finetune: rows F-<prior>+<method> (the study's M4 for any prior)")
    g.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=["finetune"],
                   metavar="PROTOCOL",
                   help="how each prior is judged: finetune (every weight trained, default), "
                   "linear (a linear head on its frozen features, its rate chosen on val), knn "
                   "(cosine kNN on them, k chosen on val); the table compares within a protocol")
    g.add_argument("--seeds", nargs="+", type=ranged("seeds"), default=[0, 1, 2])
    g.add_argument("--label-fractions", nargs="+", type=ranged("label_fractions"), default=None,
                   help="label fractions to finetune at (default 1.0; the demo 1.0 and 0.1)")
    g.add_argument("--out", help="the grid's folder (default runs/<dataset>)")
    g.add_argument("--images-dir", help="also copy the figures here (e.g. Images/)")
    g.add_argument("--shared-ssl", action="store_true",
                   help="one pretraining (seed 0) for every finetuning seed; by default seed k "
                   "finetunes from pretraining k, so that the sd and intervals of M2/M4 include "
                   "the variance of pretraining")
    g.add_argument("--distill", nargs="+", type=distill_flag, metavar="TEACHER:STUDENT",
                   help="also distil each teacher into its student, seed by seed (e.g. M3:M1, "
                   "M4:M2, or an ensemble teacher M3+M4:M1); rows KD(M3→M1), compared with the "
                   "student trained alone")
    g.add_argument("--mutual", nargs="+", type=cohort_flag, metavar="MODEL+MODEL",
                   help="also train each cohort by deep mutual learning (e.g. M3+M4); rows "
                   "DML(M3+M4)/M3, DML(M3+M4)/M4 and the ensemble DML(M3+M4), each compared with "
                   "its members trained alone")
    g.add_argument("--resume", action="store_true",
                   help="continue interrupted runs from their last checkpoint")
    g.add_argument("--print-config", action="store_true",
                   help="print the resolved grid as YAML (a --config file) and run nothing")
    g.add_argument("--cell", metavar="NAME",
                   help="run one cell of the grid alone, as compare logs its name (e.g. "
                   "pretrain:M2:1:0, finetune:M1:0.1, extra:KD(M3→M1):1:2), once the cells it "
                   "needs are finished: for a job of a cluster")
    launch_flags(p.add_argument_group("running the cells at once (docs/distributed.md)"))
    analysis_flags(p.add_argument_group("judging the results (declared before the runs)"))
    add_ssl_flags(p.add_argument_group("pretraining in the grid (every SSL method gets these; "
                                       "--epochs, --batch-size and --lr are finetuning's)"),
                  prefix="ssl-")


def launch_flags(g) -> None:
    """How many cells of the grid run at once, and where (options.LaunchOptions)."""
    g.add_argument("--jobs", type=ranged("jobs"), default=1,
                   help="cells at once on this machine, each in its own process (default 1: one "
                   "after another); a cell starts once what it needs is finished")
    g.add_argument("--devices-per-job", type=ranged("devices_per_job"), default=1,
                   help="GPUs each of --jobs gets (default 1); on the CPU the cores are split")
    g.add_argument("--launcher", choices=("local", "slurm"),
                   help="slurm: each wave of ready cells a job array of a SLURM cluster, through "
                   "submitit; local: the same waves as processes here (to try the plan)")
    g.add_argument("--slurm-partition")
    g.add_argument("--slurm-time", type=ranged("slurm_time"), default=240, metavar="MINUTES",
                   help="a job's limit; a job that meets it is requeued and resumes (default 240)")
    g.add_argument("--slurm-gpus-per-job", type=ranged("slurm_gpus_per_job"), default=1)
    g.add_argument("--slurm-cpus-per-job", type=ranged("slurm_cpus_per_job"), default=8)
    g.add_argument("--slurm-account")
    g.add_argument("--slurm-max-parallel", type=ranged("slurm_max_parallel"), metavar="N",
                   help="jobs of an array that run at once (default: as many as SLURM allows)")
    g.add_argument("--dry-run", action="store_true",
                   help="print the plan (cells in waves, what each needs, the cost in "
                   "device-hours from measured step times) and run nothing")


def analysis_flags(g) -> None:
    """The primary endpoint and the equivalence margin: `compare` declares them before its runs
    (analysis.json); `report` may set them again, and results.md then says so."""
    g.add_argument("--primary-metric", choices=PRIMARY_CHOICES,
                   help="the metric the answer is judged by, Holm-adjusted (default: the "
                   "preset's; QWK for graded labels, AUROC for two classes, else balanced_acc)")
    g.add_argument("--equivalence-margin", type=ranged("equivalence_margin"), metavar="POINTS",
                   help="call two priors equivalent only where the adjusted interval of their "
                   "difference lies within ± this many points (default 2)")


def compare_config(args: argparse.Namespace):
    """`medssl compare`'s flags as the grid's configuration (the CLI's and the Python API's)."""
    from medssl.experiments.compare import CompareConfig  # lazy: torch

    ssl = SSLOptions(**part_from_args(args, SSLOptions, prefix="ssl_"))
    return CompareConfig(models=args.models, ssl_methods=args.ssl_methods, seeds=args.seeds,
                         label_fractions=args.label_fractions, out=args.out,
                         images_dir=args.images_dir, resume=args.resume, ssl=ssl,
                         cell=args.cell,
                         shared_ssl=args.shared_ssl, distill=args.distill,
                         priors=args.priors, continue_ssl=args.continue_ssl,
                         protocols=args.protocols,
                         mutual=args.mutual,
                         analysis=AnalysisOptions(**part_from_args(args, AnalysisOptions)),
                         recipe=RecipeOptions(**part_from_args(args, RecipeOptions)),
                         launch=LaunchOptions(**part_from_args(args, LaunchOptions)),
                         **shared(args))


def one_dataset(args: argparse.Namespace) -> list[argparse.Namespace]:
    """compare's flags once per --dataset: with several, each grid in `--out`/<dataset> (default
    runs/<dataset>), the summary across them in `--out` (default runs)."""
    datasets = list(dict.fromkeys(args.dataset))
    if len(datasets) == 1:
        return [argparse.Namespace(**{**vars(args), "dataset": datasets[0]})]
    for flag, value in (("--cell", args.cell), ("--print-config", args.print_config),
                        ("--split-file", args.split_file)):
        if value:
            raise MedsslError(f"{flag} is about one grid, and --dataset names {len(datasets)}. "
                              "Fix: one --dataset with it.")
    top = Path(args.out) if args.out else RUNS
    return [argparse.Namespace(**{**vars(args), "dataset": d, "out": str(top / d)})
            for d in datasets]


def cmd_compare(args: argparse.Namespace) -> int:
    run_comparisons(args, print)
    return 0


def run_comparisons(args: argparse.Namespace, say) -> list[Path]:
    """compare (the CLI's and the API's): each --dataset's grid run (or its --cell, or its plan
    with --dry-run), its config.yaml and report written; with several, the summary across them.
    `say` gets what the console shows. Cells that failed are the error, said last."""
    from medssl.experiments.compare import resolve as resolve_grid  # lazy: torch
    from medssl.experiments.launch import check_grid, run_grid  # lazy: torch, submitit

    grids, each = [], [(one, compare_config(one)) for one in one_dataset(args)]
    if len(each) > 1:  # a flag one dataset refuses, refused before the first grid runs
        for _, cfg in each:
            check_grid(cfg)
    for one, cfg in each:
        if args.print_config:  # the grid as it would run, nothing run
            say(dump_config(rerun_values(command_parser("compare"), vars(one),
                                         grid_fields(resolve_grid(cfg)))), end="")
            return []
        base, skipped = run_grid(cfg)
        if is_rank_zero() and not args.dry_run:
            rerun_config(one, grid_fields(resolve_grid(cfg)), base)
        grids.append(base)
        if cfg.cell:  # one job of many: the report is built once the grid is whole
            if is_rank_zero():
                say(f"cell {cfg.cell} finished in {base}; once every cell is, `medssl report "
                    f"{base}` (or the same compare without --cell) builds the report")
        elif is_rank_zero() and not args.dry_run:  # one report, from rank 0 of a distributed run
            from medssl.report.build import build_report  # lazy: matplotlib, Lightning

            say(build_report(base, cfg.dataset, skipped, cfg.images_dir, cfg.analysis))
            say(f"results: {base / 'report.html'} (the answer, tables and figures on one page), "
                f"{base / 'results.md'}, {base / 'results.csv'}; `tensorboard --logdir {base}`")
    if len(grids) > 1 and not args.dry_run and is_rank_zero():
        from medssl.report.summary import write_summary  # lazy: matplotlib, Lightning

        top = Path(args.out) if args.out else RUNS
        say(write_summary(grids, top, AnalysisOptions(**part_from_args(args, AnalysisOptions))))
        say(f"summary: {top / 'report.html'}, {top / 'summary.md'}, {top / 'summary.csv'}")
    if not args.cell and not args.dry_run:  # this call's failures: failed.json of its grids
        check_no_failed_cells(grids)
    return grids


def check_no_failed_cells(grids: list) -> None:
    """The cells that failed in this call (their grids' failed.json), said last, as the error."""
    failed = {}
    for base in grids:
        path = Path(base) / FAILED
        if path.is_file():
            failed.update({f"{base}: {name}": why for name, why in
                           json.loads(path.read_text()).items()})
    if failed:
        listed = "".join(f"\n  {name}: {why['error']} (log: {why['log']})"
                         for name, why in list(failed.items())[:10])
        raise MedsslError(f"{len(failed)} cell(s) failed; the others finished and are in the "
                          f"report:{listed}\nFix: what the log says, then the same compare with "
                          "--resume runs what is missing.")


def grid_fields(cfg) -> dict:
    """A resolved grid's values under its flags' names (`--ssl-` for the pretraining part).
    `models` is left as given: resolved, it holds the models the others need (KD's teachers,
    M2 per method), which the flags add again."""
    from dataclasses import asdict

    values = {**asdict(cfg), **{f"ssl_{k}": v for k, v in asdict(cfg.ssl).items()},
              **asdict(cfg.recipe), **asdict(cfg.analysis), **asdict(cfg.launch)}
    del values["models"]
    return values


def command_parser(name: str) -> argparse.ArgumentParser:
    return next(a for a in build_parser()._actions
                if isinstance(a, argparse._SubParsersAction)).choices[name]


def cmd_report(args: argparse.Namespace) -> int:
    from medssl.report.build import build_report  # lazy: matplotlib, Lightning

    grids = [Path(r) for r in args.runs]
    if len(grids) == 1 and not args.out and finetune_finished(grids[0]):  # one run, not a grid
        from medssl.report.build import describe_run  # lazy: matplotlib, Lightning

        print(describe_run(grids[0]))
        return 0
    for runs in grids:
        if not runs.is_dir():
            what = "is a file, not a grid folder" if runs.exists() else "does not exist"
            raise MedsslError(f"{runs} {what}. Fix: pass the folder `medssl compare` wrote (its "
                              "--out, by default runs/<dataset>).")
        writable_folder(runs, "the grid folder", "report from a copy of the grid in a folder you "
                        "can write to (results.csv, results.md and the figures are written there)")
    if args.images_dir:
        writable_folder(args.images_dir, "--images-dir")
    analysis = AnalysisOptions(**part_from_args(args, AnalysisOptions))
    if len(grids) == 1 and not args.out:
        print(build_report(grids[0], images_dir=args.images_dir, analysis=analysis))
        return 0
    if not args.out:
        raise MedsslError(f"{len(grids)} grids: a summary across datasets needs --out DIR for "
                          "summary.md, summary.csv and its figure.")
    if args.images_dir:
        raise MedsslError("--images-dir copies one grid's figures: report each grid alone for it.")
    from medssl.report.summary import write_summary  # lazy: matplotlib, Lightning

    writable_folder(args.out, "--out")
    print(write_summary(grids, Path(args.out), analysis))
    print(f"summary: {Path(args.out) / 'report.html'}, {Path(args.out) / 'summary.md'}, "
          f"{Path(args.out) / 'summary.csv'}")
    return 0


def picture_flags(p, default_out: str) -> None:
    """The pictures `predict`, `embed` and `explain` take, and how they run."""
    p.add_argument("files", nargs="*", help="pictures (or --data-root, --csv)")
    p.add_argument("--data-root", help="every picture under this folder")
    p.add_argument("--csv", help="the pictures of this CSV's `path` column (relative to its "
                   "folder)")
    p.add_argument("--out", default=default_out, help=f"default {default_out}")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="go on with the readable pictures, listing the others (default: stop)")
    p.add_argument("--batch-size", type=ranged("batch_size"), default=64)
    p.add_argument("--num-workers", type=ranged("num_workers"), default=0)
    p.add_argument("--accelerator", choices=ACCELERATORS, default="auto")


def picture_options(args: argparse.Namespace):
    from medssl.training.predict import PredictOptions  # lazy: torch

    return PredictOptions(run=args.run, data_root=args.data_root, csv=args.csv,
                          files=args.files or None, out=args.out, tta=getattr(args, "tta", False),
                          skip_bad_images=args.skip_bad_images, batch_size=args.batch_size,
                          num_workers=args.num_workers, accelerator=args.accelerator,
                          progress=sys.stderr.isatty())


def cmd_predict(args: argparse.Namespace) -> int:
    from medssl.training.predict import predict  # lazy: torch

    print(f"predictions written to {predict(picture_options(args))}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from medssl.training.export import export  # lazy: torch

    print(f"classifier written to {export(args.run, args.format, args.out)}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from medssl.training.predict import embed  # lazy: torch

    print(f"features written to {embed(picture_options(args))}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from medssl.report.gradcam import explain  # lazy: torch, matplotlib

    sheet = explain(picture_options(args))
    print(f"Grad-CAM sheet written to {sheet} (its numbers: {sheet.with_suffix('.csv')})")
    return 0


def picture_commands(sub) -> None:
    """The commands that apply a finished run to pictures: predict, embed, explain, export."""
    p = sub.add_parser("predict", help="apply a finished finetuning run to new pictures: one "
                       "row per picture with each class's probability and the predicted class")
    p.add_argument("run", help="the run's folder, e.g. runs/covid19/M3/seed0")
    picture_flags(p, "predictions.csv")
    p.add_argument("--tta", action="store_true",
                   help="average the predictions over the flips the run trained with")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("embed", help="write each picture's backbone features (a run's, or a "
                       "backbone.pt's) with its path")
    p.add_argument("run", metavar="RUN_OR_BACKBONE", help="a finished finetuning run's folder, "
                   "or a backbone.pt (or its pretraining folder)")
    picture_flags(p, "features.npz")
    p.set_defaults(func=cmd_embed)
    p = sub.add_parser("explain", help="draw where a finished finetuning run looks: each "
                       "picture with its Grad-CAM map for the predicted class (a PNG, and a CSV "
                       "of the maps' values beside it)")
    p.add_argument("run", help="the run's folder, e.g. runs/covid19/M3/seed0")
    picture_flags(p, "gradcam.png")
    p.set_defaults(func=cmd_explain)
    p = sub.add_parser("export", help="write a finished run's classifier as one ONNX, "
                       "TorchScript or safetensors file, with classifier.json beside it")
    p.add_argument("run", help="the run's folder, e.g. runs/covid19/M3/seed0")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript", "safetensors"))
    p.add_argument("--out", required=True, help="the folder to write into")
    p.set_defaults(func=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medssl", description="SSL vs ImageNet vs random prior weights on your medical images.")
    parser.add_argument("--version", action="version", version=f"medssl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("datasets", help="list the datasets with download pages and expected trees")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("priors", help="list the starting weights medssl knows: random, ImageNet, "
                       "foundation models (their source, license, size, and whether their "
                       "weights are on this machine)")
    p.set_defaults(func=cmd_priors)

    p = sub.add_parser("check", parents=[data_options()],
                       help="count images per split and class, and list every problem")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--split-out", help="write the split as CSV (path,label,group,split)")
    p.add_argument("--preview", metavar="FILE.png",
                   help="write a contact sheet: a few pictures per class and split as medssl "
                   "reads them (decoded, windowed), each with its file name")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("pretrain", parents=[data_options(), training_options()],
                       help="self-supervised pretraining (--method, default SimCLR) on the dataset's train split")
    add_pretrain_args(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune", parents=[data_options(), training_options(),
                                            finetune_recipe_options()],
                       help="train one classifier (M1-M4); select on val, test once")
    add_finetune_args(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("compare", parents=[data_options(several=True), training_options(),
                                           finetune_recipe_options()],
                       help="run what is missing of the M1-M4 grid and print the results table")
    add_compare_args(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="rebuild results and figures from finished runs; with "
                       "several grids, a summary across datasets")
    p.add_argument("runs", nargs="+", help="a grid folder, e.g. runs/demo; or several, one per "
                   "dataset, with --out")
    p.add_argument("--out", help="with several grids: the folder for summary.md, summary.csv "
                   "and summary_accuracy.png")
    p.add_argument("--images-dir", help="also copy the figures here (e.g. Images/)")
    analysis_flags(p.add_argument_group("judging the results (default: what each grid declared "
                                        "before its runs)"))
    p.set_defaults(func=cmd_report)
    picture_commands(sub)
    for command in sub.choices.values():  # read by main, before the command runs
        command.add_argument("--verbose", action="store_true",
                             help="also show the libraries' banners, tips and warnings")
        command.add_argument("--config", metavar="FILE.yaml",
                             help="flags from a YAML file (keys: flag names, dashes or "
                             "underscores); flags given here win. A run's config.yaml reruns it")
    return parser


# The libraries whose informational lines (Lightning's "GPU available" banners, its tips, its
# "`Trainer.fit` stopped" line) would bury medssl's own: shown with --verbose only.
CHATTY = ("pytorch_lightning", "lightning", "lightning_fabric")  # names and their children


def library_info(record: logging.LogRecord) -> bool:
    """A logging filter: False for the libraries' lines below WARNING."""
    return record.levelno >= logging.WARNING or not record.name.startswith(CHATTY)


def quiet_console(verbose: bool) -> None:
    """medssl's own lines and warnings always; the libraries' banners, tips and warnings
    (deprecations, torchmetrics' notes on a batch) only with --verbose. Their errors still
    reach medssl, which words them."""
    if verbose:
        return
    # On the console's handler, not the libraries' loggers: Lightning sets its own level when
    # it is imported (after this). Their warnings and errors still show.
    for handler in logging.getLogger().handlers:
        if library_info not in handler.filters:  # once, however often main runs in a process
            handler.addFilter(library_info)
    warnings.filterwarnings("ignore")  # every library's warnings.warn ...
    warnings.filterwarnings("default", module=r"medssl(\.|$)")  # ... but medssl's own


def main(argv: list[str] | None = None) -> int:
    """Run one command. Whatever goes wrong ends in one message and an exit status, never a
    traceback: 2 for bad input (MedsslError, a refused write), 130 for Ctrl-C, 1 for a bug in
    medssl itself, whose traceback goes to a file (MEDSSL_DEBUG=1 shows it here instead)."""
    parser = build_parser()
    try:  # --config FILE: its flags first, the command line's after (they win)
        argv = with_config(list(sys.argv[1:] if argv is None else argv), parser)
    except MedsslError as exc:
        print(f"medssl: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="medssl: %(message)s")
    # Progress lines, whatever the root level; from one process of a distributed run only.
    logging.getLogger("medssl").setLevel(logging.INFO if is_rank_zero() else logging.WARNING)
    quiet_console(args.verbose)
    try:
        return args.func(args)
    except MedsslError as exc:
        print(f"medssl: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a write the operating system refused, met after the checks
        print(f"medssl: error: {describe(exc)}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"medssl: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("medssl: interrupted (Ctrl-C) before training started; nothing was saved to "
              "resume from. Run the same command again to start anew.", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("MEDSSL_DEBUG"):
            raise
        return internal_error(exc)


def internal_error(exc: Exception) -> int:
    """A bug in medssl, not in the input: one line, and the traceback in a file for the report."""
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="medssl-crash-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(f"medssl {__version__}\n{' '.join(sys.argv)}\n\n")
        f.write("".join(traceback.format_exception(exc)))
    print(f"medssl: internal error ({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}). "
          f"This is a bug in medssl, not in your input: please report it with the traceback "
          f"saved in {path} (MEDSSL_DEBUG=1 prints it here).", file=sys.stderr)
    return 1
