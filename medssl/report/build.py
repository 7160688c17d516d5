"""Rebuild a grid's results from its finished runs: results.csv, results.md, the curve figures."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from medssl.errors import MedsslError
from medssl.report.figures import write_figures
from medssl.report.tables import collect_runs, write_results
from medssl.records import read_run_record
from medssl.runs import SKIPPED, unfinished_reason

log = logging.getLogger("medssl")


def describe_run(run: Path) -> str:
    """`medssl report RUN` on one finished finetuning run: what it is and what it scored on
    test, without an interval (one run has none)."""
    m = read_run_record(run)
    test = m.test
    scores = ", ".join(f"{title} {test[key]:.3f}" for key, title in (
        ("acc", "accuracy"), ("balanced_acc", "balanced accuracy"), ("macro_f1", "macro-F1"),
        ("auroc", "AUROC")) if isinstance(test.get(key), (int, float)))
    return (f"{m.model} on {m.dataset}, seed {m.seed}, label fraction {m.label_fraction:g} "
            f"({run})\nselected epoch {m.selection.get('epoch')} by "
            f"{m.selection.get('metric')}; test ({test.get('n', '?')} images): {scores}.\n"
            "One run has no interval: `medssl compare` trains the seeds and compares the models "
            "(results.md).")


def build_report(base: Path, dataset: str | None = None,
                 skipped_models: dict[str, str] | None = None, images_dir: str | None = None,
                 analysis=None) -> str:
    """Rebuild results.csv, results.md and the figures from the finished runs in `base`; models
    that `compare` skipped (listed in its `skipped.json`) are named with the reason. `analysis`
    (AnalysisOptions): a primary metric or equivalence margin set now, over the grid's plan."""
    base = Path(base)
    if skipped_models is None and (base / SKIPPED).is_file():
        skipped_models = json.loads((base / SKIPPED).read_text())
    summary, md, unfinished = write_results(base, skipped_models, analysis)
    why = {run: unfinished_reason(run) or "metrics.json is not readable JSON" for run in unfinished}
    for run, reason in why.items():
        log.warning("not reported, unfinished (%s): %s", reason, run)
    if summary.empty:
        listed = "".join(f"\n  {run}: {reason}" for run, reason in list(why.items())[:20])
        raise MedsslError(f"No finished finetuning runs under {base}" +
                          (f"; {len(why)} unfinished:{listed}\n" if why else ". ") +
                          f"Fix: run `medssl compare --dataset {dataset or 'NAME'}` (with --resume "
                          "to continue interrupted runs), or `medssl finetune`, first.")
    runs, _ = collect_runs(base)
    runs = runs[runs["protocol"] == "finetune"]  # the frozen protocols have no curves
    dataset = dataset or (runs["dataset"].iloc[0] if len(runs) else None)
    for figure in write_figures(base, runs, dataset):
        if images_dir:
            Path(images_dir).mkdir(parents=True, exist_ok=True)
            shutil.copy(figure, Path(images_dir) / f"{dataset}_{figure.name}")
    return md
