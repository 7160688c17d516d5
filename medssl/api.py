"""The Python API, for notebooks: the commands as functions that take the flags' names as
keyword arguments (underscores for dashes) and return what the run wrote.

    import medssl
    table = medssl.compare(dataset="demo", models=["M1", "M2"], seeds=[0, 1])
    run = medssl.finetune(dataset="covid19", data_root="~/data", model="M3", seed=1)
    predictions = medssl.predict("runs/covid19/M3/seed0", data_root="~/new")
    maps = medssl.explain("runs/covid19/M3/seed0", files=["a.png"], out="sheet.png")
    record = medssl.load_run("runs/covid19/M3/seed0")

Each call goes through the command line's own parser (the same checks, the same ranges) and the
same configuration builders; an error is a MedsslError with the command line's message, never a
`SystemExit`. docs/api.md has the whole of it.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pandas as pd

from medssl import cli
from medssl.config_files import rerun_values, tokens_from_mapping
from medssl.errors import MedsslError
from medssl.records import (BackboneRecord, RunRecord, UnreadableRecord, read_backbone_record,
                            read_run_record)
from medssl.runs import BACKBONE


def parsed(command: str, flags: dict, positional: tuple = ()):
    """The flags of `command` parsed as its command line would be; MedsslError otherwise."""
    parser = cli.command_parser(command)
    tokens = tokens_from_mapping(flags, parser, f"medssl.{command}()")
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            args = cli.build_parser().parse_args([command, *map(str, positional), *tokens])
    except SystemExit:  # argparse's refusal: its last line names the flag and the problem
        lines = [line for line in said.getvalue().splitlines() if line.strip()]
        raise MedsslError(lines[-1].split(": error: ", 1)[-1] if lines else
                          f"medssl.{command}(): the arguments were refused") from None
    return args


def pretrain(**flags) -> BackboneRecord:
    """`medssl pretrain`: its backbone.json as a record (the backbone is beside it)."""
    from medssl.training.pretrain import run_pretrain  # lazy: torch

    args = parsed("pretrain", flags)
    out = run_pretrain(cli.pretrain_config(args))
    cli.rerun_config(args, {}, out)
    return read_backbone_record(Path(out) / BACKBONE)


def finetune(**flags) -> RunRecord:
    """`medssl finetune`: the run's metrics.json as a record."""
    args = parsed("finetune", flags)
    out = cli.finetuned(args)
    record = read_run_record(out)
    cli.rerun_config(args, record.config, out)
    return record


def compare(**flags) -> pd.DataFrame | dict:
    """`medssl compare`: the grid's results table (results.csv; with several datasets, theirs one
    after another), the report and config.yaml written beside it; with `print_config=True`, the
    resolved grid as a dict, nothing run."""
    from medssl.experiments.compare import resolve  # lazy: torch

    args = parsed("compare", flags)
    if args.print_config:
        one = cli.one_dataset(args)[0]
        return rerun_values(cli.command_parser("compare"), vars(one),
                            cli.grid_fields(resolve(cli.compare_config(one))))
    grids = cli.run_comparisons(args, lambda *a, **k: None)  # the report is in its files
    tables = [pd.read_csv(Path(b) / "results.csv") for b in grids
              if (Path(b) / "results.csv").is_file() and not args.cell]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def predict(run, **flags) -> pd.DataFrame:
    """`medssl predict RUN`: the predictions (also written to `out`, default predictions.csv)."""
    from medssl.training.predict import predict as write  # lazy: torch

    files = flags.pop("files", None) or []  # positional on the command line
    args = parsed("predict", flags, (run, *([files] if isinstance(files, (str, Path)) else files)))
    return pd.read_csv(write(cli.picture_options(args)))


def explain(run, **flags) -> pd.DataFrame:
    """`medssl explain RUN`: where the run looks, as the CSV of its sheet (each picture's map,
    cell by cell); the sheet is written to `out` (default gradcam.png), the CSV beside it."""
    from medssl.report.gradcam import explain as draw  # lazy: torch, matplotlib

    files = flags.pop("files", None) or []  # positional on the command line
    args = parsed("explain", flags, (run, *([files] if isinstance(files, (str, Path)) else files)))
    return pd.read_csv(draw(cli.picture_options(args)).with_suffix(".csv"))


def load_run(path) -> RunRecord | BackboneRecord:
    """The record of a finished run: a finetuning's metrics.json, or a pretraining's
    backbone.json (its folder or the backbone.pt)."""
    path = Path(path).expanduser()
    backbone = path / BACKBONE if path.is_dir() else path
    if backbone.suffix == ".pt" and backbone.with_suffix(".json").is_file():
        return read_backbone_record(backbone)
    try:
        return read_run_record(path)
    except UnreadableRecord as exc:
        raise MedsslError(f"{path} holds no finished run's record ({exc}). Fix: a run's folder "
                          "(metrics.json) or a pretraining's backbone.pt.") from None
