"""`medssl check --preview FILE.png`: a contact sheet of what the model sees. A few pictures of
each class in each split, decoded and windowed exactly as training reads them (`images.load_rgb`
with the run's `--window`), before resizing and augmentation, each under its file name."""

from __future__ import annotations

from pathlib import Path

from medssl.atomic import atomic_write
from medssl.data.images import load_rgb
from medssl.data.registry import SPLITS, SampleTable

PER_CELL = 3  # pictures of each class in each split


def chosen(table: SampleTable, per_cell: int = PER_CELL) -> list[tuple[str, str, list[str]]]:
    """(class, split, the first `per_cell` usable paths of it in path order) for every class and
    split: the same pictures every time. Broken files (errors of the check) are left out."""
    broken = {p.path for p in table.errors}
    rows = table.samples[~table.samples["path"].isin(broken)]
    out = []
    for label in table.classes:
        for split in SPLITS:
            paths = rows[(rows["label"] == label) & (rows["split"] == split)]["path"]
            out.append((label, split, sorted(paths)[:per_cell]))
    return out


def _short(name: str, width: int = 22) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def write_preview(table: SampleTable, out: Path | str, per_cell: int = PER_CELL) -> int:
    """Draw the sheet to `out` (PNG, written whole or not at all); returns how many pictures it
    shows. Rows: classes; columns: `per_cell` pictures of train, then val, then test."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = chosen(table, per_cell)
    n_rows, n_cols = len(table.classes), len(SPLITS) * per_cell
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.6 * n_cols, 1.9 * n_rows + 0.6),
                             squeeze=False)
    shown = 0
    for (label, split, paths), k in zip(cells, range(len(cells))):
        r, c0 = divmod(k, len(SPLITS))
        for j in range(per_cell):
            ax = axes[r][c0 * per_cell + j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=9)
            if r == 0 and j == 0:
                ax.set_title(split, fontsize=10, loc="left", fontweight="bold", pad=14)
            if j >= len(paths):
                if j:
                    ax.axis("off")
                else:  # no picture of this class in this split: said, not left blank
                    ax.set_facecolor("0.95")
                    ax.text(0.5, 0.5, "none", ha="center", va="center", fontsize=8,
                            color="0.4", transform=ax.transAxes)
                continue
            ax.imshow(load_rgb(table.root / paths[j], window=table.window))
            ax.set_xlabel(_short(Path(paths[j]).name), fontsize=6)
            shown += 1
    fig.suptitle(f"{table.dataset}: {table.root.name}, as medssl reads it (--window "
                 f"{table.window}; before resizing)", fontsize=10)
    fig.tight_layout()
    atomic_write(Path(out), lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return shown
