"""Where each model looks, drawn: Grad-CAM maps (training.explain) over the pictures as the
networks saw them.

- `explain`: the sheet of `medssl explain RUN`: every picture asked for, with its map for the
  predicted class and that class's probability;
- `gradcam_figure`: compare's `gradcam.png`: the same test images for every model (a few most
  models got right, a few most got wrong), one column per model.

Each map is drawn as its grid of block averages (at most 32 x 32 cells, bilinear between cell
centres) over the picture, on a fixed 0-1 colour scale, so the CSV beside the PNG holds exactly
the values drawn (figure_io.save_figure).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from medssl.errors import MedsslError
from medssl.records import read_run_record
from medssl.report.comparisons import test_predictions
from medssl.report.figure_io import pyplot, save_figure
from medssl.training.explain import Explanation, explain_pictures
from medssl.training.predict import PredictOptions, open_source, pictures, readable

log = logging.getLogger("medssl")

MAP_STYLE = dict(alpha=0.45, cmap="jet", interpolation="bilinear", vmin=0.0, vmax=1.0)
FORMATS = (".png", ".pdf", ".svg")  # what matplotlib writes (the CSV takes the same stem)
SHEET_COLUMNS = 4


def draw(ax, e: Explanation | None, picture: np.ndarray, title: str) -> None:
    """`picture` on `ax`, with the map of `e` over it (None: the picture alone)."""
    height, width = picture.shape[:2]
    extent = (0, width, height, 0)  # the grid stretched over the whole picture
    ax.imshow(picture, extent=extent, interpolation="nearest")
    if e is not None:
        ax.imshow(e.grid, extent=extent, **MAP_STYLE)
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def cells(e: Explanation, **columns) -> pd.DataFrame:
    """The grid of `e` in long format (row, col, value) after the given columns."""
    rows, cols = np.indices(e.grid.shape)
    return pd.DataFrame({**{k: [v] * e.grid.size for k, v in columns.items()},
                         "row": rows.ravel(), "col": cols.ravel(), "value": e.grid.ravel()})


def short(path: str, width: int = 30) -> str:
    """A picture's path for a panel's title: whole when short, else its end (the file name)."""
    return path if len(path) <= width else "…" + path[-(width - 1):]


def check_out(out: Path) -> Path:
    if out.suffix.lower() not in FORMATS:
        raise MedsslError(f"--out {out}: the sheet is a picture. Fix: a name ending in "
                          f"{', '.join(FORMATS)} (its numbers go to the .csv of the same stem).")
    return out


def explain(opts: PredictOptions, limit: int = 64) -> Path:
    """Write the Grad-CAM sheet of run `opts.run` for the pictures asked for (and its CSV);
    return the sheet's path."""
    out = check_out(Path(opts.out))
    source = open_source(opts.run)
    if source.head is None:
        raise MedsslError(f"{opts.run} is a backbone: it has no classifier head, so no class to "
                          "map. Fix: a finished finetuning run's folder (e.g. "
                          "runs/covid19/M3/seed0).")
    root, rel = pictures(opts)
    if len(rel) > limit:
        raise MedsslError(f"{len(rel)} pictures asked for; a sheet shows at most {limit}. Fix: "
                          f"pass fewer (at most {limit} files, or a --csv of that many rows).")
    rel = readable(root, rel, source.cfg.window, opts.skip_bad_images)
    if not rel:
        raise MedsslError("None of the pictures can be read. Fix: pass readable pictures.")
    maps = explain_pictures(source, opts, root, rel)
    plt = pyplot()
    ncols = min(SHEET_COLUMNS, len(maps))
    nrows = math.ceil(len(maps) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 3.3 * nrows), squeeze=False)
    frames = []
    for ax, e in zip(axes.ravel(), maps):
        predicted, p = source.classes[e.predicted], float(e.probs[e.predicted])
        draw(ax, e, e.picture, f"{short(e.path)}\npredicted {predicted} (p={p:.2f})")
        frames.append(cells(e, path=e.path, predicted=predicted, probability=p,
                            target=source.classes[e.target], layer=e.layer))
    for ax in axes.ravel()[len(maps):]:
        ax.set_axis_off()
    fig.suptitle(f"Grad-CAM of {source.model or source.name} at {maps[0].layer}: where it looks "
                 "for the class it predicts", fontsize=10)
    fig.tight_layout()
    log.info("%d picture(s) explained by %s", len(maps), source.name)
    return save_figure(fig, out, pd.concat(frames, ignore_index=True))


def pictures_root(run: Path) -> Path:
    """The folder a run's split paths are relative to: the dataset root it recorded."""
    record = read_run_record(run)
    root = (record.data or {}).get("root") or record.config.get("data_root")
    if not root:
        raise MedsslError(f"{run}: its metrics.json names no data root. Fix: rerun it with "
                          "this medssl, or draw its maps with `medssl explain RUN --data-root`.")
    return Path(root)


def first_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model (in the frame's order), its lowest seed's run at the largest label fraction."""
    top = runs[runs["label_fraction"] == runs["label_fraction"].max()].reset_index(drop=True)
    return top.loc[top.groupby("model", sort=False)["seed"].idxmin()]


def networks(chosen: pd.DataFrame) -> list[tuple[pd.Series, object]]:
    """(row, Source) of each model whose run holds one network; the others logged."""
    out = []
    for _, row in chosen.iterrows():
        try:  # a cohort's ensemble (DML(...)) has no network of its own: open_source says so
            out.append((row, open_source(row["run"])))
        except (MedsslError, OSError) as exc:
            log.info("gradcam.png: %s left out: %s", row["model"], str(exc).splitlines()[0])
    return out


def chosen_images(preds: list, per_kind: int = 3) -> list[tuple[str, int]]:
    """(path, label) of the test images all `preds` (Predictions) share: up to `per_kind` that
    most got right (most right first), then up to `per_kind` that most got wrong; ties by path,
    the classes taking turns within each kind."""
    common = set.intersection(*(set(p.paths) for p in preds))
    first = preds[0]
    label = {path: int(y) for path, y in zip(first.paths, first.labels) if path in common}
    right = dict.fromkeys(label, 0)
    for p in preds:
        for path, y, probs in zip(p.paths, p.labels, p.probs):
            if path in right:
                right[path] += int(probs.argmax() == y)
    wrong = {path: len(preds) - n for path, n in right.items()}
    good = sorted((p for p in right if right[p] >= wrong[p] and right[p]),
                  key=lambda p: (-right[p], p))
    bad = sorted((p for p in wrong if wrong[p] > right[p]), key=lambda p: (-wrong[p], p))
    return [(p, label[p]) for p in spread(good, label, per_kind) + spread(bad, label, per_kind)]


def spread(paths: list[str], label: dict[str, int], n: int) -> list[str]:
    """Up to `n` of `paths` (in their order), the classes taking turns: a few pictures of one
    class would show one class only."""
    by_class: dict[int, list[str]] = {}
    for path in paths:
        by_class.setdefault(label[path], []).append(path)
    out: list[str] = []
    while len(out) < n and any(by_class.values()):
        for c in sorted(by_class):
            if by_class[c] and len(out) < n:
                out.append(by_class[c].pop(0))
    return out


def model_maps(drawn: list, images: list[tuple[str, int]]) -> dict[str, tuple]:
    """model -> (Source, its Explanation of each image in order); a model whose pictures
    cannot be read is logged and left out."""
    out = {}
    for row, source in drawn:
        try:
            run = Path(row["run"])
            root, rel = pictures_root(run), [p for p, _ in images]
            opts = PredictOptions(run=str(run), progress=False)
            readable(root, rel, source.cfg.window, skip=False)
            out[row["model"]] = (source, explain_pictures(source, opts, root, rel))
        except (MedsslError, OSError) as exc:
            log.info("gradcam.png: %s left out: %s", row["model"], str(exc).splitlines()[0])
    return out


def gradcam_figure(runs: pd.DataFrame, path: Path, per_kind: int = 3) -> Path | None:
    """compare's `gradcam.png` from its finetuning runs (collect_runs' frame, protocol
    finetune): rows are test images, columns the picture then each model's map for its
    predicted class. None (nothing written) when no model can be drawn."""
    if runs.empty:
        return None
    drawn = networks(first_runs(runs))
    if not drawn:
        log.info("gradcam.png: no model with a network of its own: not drawn")
        return None
    preds = [next(iter(test_predictions(row.to_frame().T).values())) for row, _ in drawn]
    images = chosen_images(preds, per_kind)
    maps = model_maps(drawn, images) if images else {}
    if not maps:
        log.info("gradcam.png: no model's maps could be made: not drawn")
        return None
    return draw_comparison(maps, images, path)


def draw_comparison(maps: dict[str, tuple], images: list[tuple[str, int]], path: Path) -> Path:
    """The grid of gradcam.png and its CSV (model, path, label, predicted, right, cells)."""
    plt = pyplot()
    models = list(maps)
    classes = maps[models[0]][0].classes
    fig, axes = plt.subplots(len(images), 1 + len(models), squeeze=False,
                             figsize=(2.4 * (1 + len(models)), 2.5 * len(images)))
    frames = []
    for i, (image, label) in enumerate(images):
        truth = classes[label]
        seen = maps[models[0]][1][i].picture
        draw(axes[i, 0], None, seen, f"{short(image)}\ntrue: {truth}")
        for j, model in enumerate(models, start=1):
            source, explained = maps[model]
            e = explained[i]
            predicted = source.classes[e.predicted]
            right = predicted == truth
            draw(axes[i, j], e, e.picture, f"{model} ({e.layer}): predicted {predicted} "
                 f"{'✓' if right else '✗'}")
            frames.append(cells(e, model=model, path=image, label=truth, predicted=predicted,
                                right=right, layer=e.layer))
    fig.suptitle("Grad-CAM: where each model looks for the class it predicts (test images)",
                 fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, pd.concat(frames, ignore_index=True))
