"""How every figure of a report is drawn and written: matplotlib without a screen, at most
eight lines in a panel, the legend outside the data, and beside each `NAME.png` a `NAME.csv`
holding exactly the numbers plotted, so that a figure can be redrawn or checked."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medssl.atomic import atomic_write

MAX_LINES = 8  # more lines than this in one panel cannot be told apart: more panels instead
DPI = 110


def pyplot():
    """matplotlib.pyplot on the Agg backend (no screen needed)."""
    import matplotlib

    matplotlib.use("Agg")
    # Names and paths are drawn as written: a `$` in a model name or a file name is no maths.
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def chunks(items: list, size: int = MAX_LINES) -> list[list]:
    """`items` in groups of at most `size`, in order: one panel each."""
    items = list(items)
    return [items[i:i + size] for i in range(0, len(items), size)] or [[]]


def legend_outside(fig, handles, labels, title: str | None = None) -> None:
    """One legend for the figure, right of every panel, so it never covers data; saving with
    a tight bounding box (save_figure) keeps it inside the picture."""
    fig.tight_layout()
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
                   title=title, frameon=False)


def save_figure(fig, path: Path, data: pd.DataFrame) -> Path:
    """`path` (PNG) and, beside it, `data` as the CSV of the same stem; both written whole or
    not at all. Closes the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path.with_suffix(".csv"), lambda p: data.to_csv(p, index=False))
    # The format named, since the temporary file's name does not end in it; "tight" keeps a
    # legend outside the panels inside the picture.
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format=path.suffix[1:],
                                               bbox_inches="tight"))
    pyplot().close(fig)
    return path
