"""Reading the metadata tables that downloads ship, with the quirks they really have.

Seen in the wild: a UTF-8 byte-order mark, CRLF line endings, tab-separated `.tab` copies,
semicolon-separated spreadsheet exports, files with no extension, trailing spaces in header names,
runs of empty trailing columns, blank lines.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd

from medssl.errors import MedsslError


def read_table(path: Path, required: list[str], what: str = "",
               optional: tuple[str, ...] = ()) -> pd.DataFrame:
    """Every cell as a stripped string; `required` columns matched ignoring case and spaces; blank
    lines dropped; the index is each row's line in the file.

    The returned frame names the required columns exactly as asked (and the `optional` ones
    when the file has them), so callers need not care whether the header said `Image name`,
    `image name` or `Image name `.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    except OSError as exc:
        raise MedsslError(f"Cannot read {path}: {exc.strerror or exc}.") from None
    first_line = text.split("\n", 1)[0]
    # The header's most frequent of comma, semicolon (spreadsheets in many locales) and tab.
    sep = max((",", ";", "\t"), key=first_line.count)
    try:
        # Blank lines are kept as rows for now, so that every row knows its line in the file.
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False,
                         skip_blank_lines=False, quoting=csv.QUOTE_MINIMAL).fillna("")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise MedsslError(f"{path} is not a readable table ({exc}). Fix: restore the file "
                          f"from the download.") from None
    df.columns = [str(c).strip() for c in df.columns]
    empty = [c for c in df.columns
             if (c == "" or c.startswith("Unnamed:")) and (df[c].str.strip() == "").all()]
    df = df.drop(columns=empty)
    df = df.apply(lambda col: col.str.strip())
    df.index = df.index + 2  # the line in the file (line 1 is the header), for messages
    df.index.name = "line"
    # A row of nothing but separators (",,,,") is a blank line too.
    df = df[(df != "").any(axis=1)]

    by_key = {_key(c): c for c in df.columns}
    renames = {}
    for name in required:
        found = by_key.get(_key(name))
        if found is None:
            raise MedsslError(
                f"{path} has no column '{name}'{what} (its columns: "
                f"{', '.join(repr(c) for c in df.columns) or 'none'}). Fix: use the file as "
                f"downloaded, or name the right column.")
        renames[found] = name
    for name in optional:  # renamed when present, as the required ones are
        found = by_key.get(_key(name))
        if found is not None and found not in renames:
            renames[found] = name
    return df.rename(columns=renames)


def _key(column: str) -> str:
    return " ".join(column.lower().split())
