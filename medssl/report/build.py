"""Rebuild a grid's results from its finished runs: results.csv, results.md, the figures with
their CSVs, and report.html, the one page that holds them all."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from medssl.errors import MedsslError
from medssl.report.figures import write_figures
from medssl.report.html import data_audit, write_html
from medssl.report.tables import collect_runs, write_results
from medssl.records import read_run_record
from medssl.runs import SKIPPED, SPLIT, unfinished_reason

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
    dataset = dataset or runs["dataset"].iloc[0]
    runs = runs[runs["protocol"] == summary["protocol"].iloc[0]]  # the answer's protocol
    answered = summary[summary["protocol"] == summary["protocol"].iloc[0]]  # the answer's table
    figures = [f.resolve() for f in write_figures(base, runs, answered, dataset)]
    for figure in figures:
        if images_dir:
            Path(images_dir).mkdir(parents=True, exist_ok=True)
            shutil.copy(figure, Path(images_dir) / f"{dataset}_{figure.name}")
    write_html(base / "report.html", f"medssl: which prior for {dataset}?",
               with_answer_figures(md, figures), figures, data_audit(base / SPLIT))
    return md


ANSWER_FIGURES = {"forest.png": "Paired differences on the primary endpoint",
                  "label_efficiency.png": "The primary endpoint against the label fraction"}


def with_answer_figures(md: str, figures: list[Path]) -> str:
    """results.md for the page, with the pictures of the answer right under it (before the
    first table)."""
    stem = {name: name.rsplit(".", 1)[0] for name in ANSWER_FIGURES}
    shown = "".join(f"![{title}]({name})\n\n*{title}; its numbers: [{stem[name]}.csv]"
                    f"({stem[name]}.csv)*\n\n" for name, title in ANSWER_FIGURES.items()
                    if any(f.name == name for f in figures))
    at = md.find("\n## Results")
    return md if at < 0 or not shown else md[:at] + "\n" + shown + md[at:]
