"""report.html: one comparison's (or the cross-dataset summary's) Markdown report, its figures
and its data audit as a single self-contained page that loads nothing from anywhere."""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import os
import re
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import jinja2
import markdown
import pandas as pd
from markdown.extensions import Extension
from markdown.extensions.toc import slugify, unique
from markdown.treeprocessors import Treeprocessor
from markupsafe import Markup

from medssl.atomic import atomic_write
from medssl.data.splits import EXCLUDED, REASON_KINDS
from medssl.errors import MedsslError

# Ids the page itself uses; a Markdown section named like one of them gets a suffix instead.
OWN_IDS = ("contents", "figures", "data-audit")
SPLIT_ORDER = ("train", "val", "test", EXCLUDED)

# The page. Variables are autoescaped; only the HTML the markdown package made (from our own
# results.md) is passed in marked safe. CSS and script are inline because the CSP below forbids
# loading anything: the report must open the same offline, on any machine, years later.
TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; \
style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>{% raw %}
body { font: 15px/1.5 system-ui, sans-serif; margin: 1.5em auto; max-width: 80em; padding: 0 1em;
       color: #1b1b1b; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
nav { font-size: 0.9em; margin-bottom: 1em; }
nav a { margin-right: 1em; }
#answer { background: #f3f7fb; border-left: 4px solid #2a6cb0; padding: 0.2em 1em; }
section { margin-bottom: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.88em; display: block;
        overflow-x: auto; }
th, td { border: 1px solid #c9c9c9; padding: 0.25em 0.5em; text-align: left; white-space: nowrap; }
th { background: #eef0f2; cursor: pointer; user-select: none; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
tbody tr:nth-child(even) { background: #fafafa; }
img { max-width: 100%; height: auto; }
figure { margin: 1em 0 2em; }
figcaption { font-size: 0.9em; color: #444; }
.missing { color: #a00; }
{% endraw %}</style>
</head>
<body>
<h1>{{ title }}</h1>
<nav id="contents">{% for id, name in toc %}<a href="#{{ id }}">{{ name }}</a>{% endfor %}</nav>
{% for id, body in sections %}
<section{% if id %} id="{{ id }}"{% endif %}>
{{ body }}
</section>
{% endfor %}
{% if figures %}
<section id="figures">
<h2>Figures</h2>
{% for f in figures %}
<figure>
<img src="{{ f.uri }}" alt="{{ f.name }}">
<figcaption>{{ f.name }}{% if f.csv %} · data: <a href="{{ f.csv }}">{{ f.csv_name }}</a>\
{% else %} · no CSV of its data beside it{% endif %}</figcaption>
</figure>
{% endfor %}
</section>
{% endif %}
{% if audit %}
<section id="data-audit">
<h2>Data audit</h2>
{{ audit }}
</section>
{% endif %}
<script>{% raw %}
// Hand-written on purpose: the page's Content-Security-Policy forbids every network load (and a
// report must open offline), so no sorting library can be loaded. Clicking a header sorts its
// table by that column; clicking again reverses. A cell sorts by its first number
// ("+2.95 [-6.18, +12.07]" by 2.95, "44.28 ± 4.55" by 44.28, "3,864" by 3864), cells with no
// number after those with one, by text; an empty cell or "—" (nothing to show) always last,
// and a row named "total" below all.
(function () {
  "use strict";
  function key(cell) {
    var text = cell.textContent.trim();
    if (text === "" || text === "\u2014") return { last: true };
    var plain = text.replace(/(\\d),(?=\\d{3}(?!\\d))/g, "$1").replace(/\u2212/g, "-");
    var m = plain.match(/[-+]?(?:\\d+\\.?\\d*|\\.\\d+)(?:e[-+]?\\d+)?/i);
    return m ? { num: parseFloat(m[0]), text: text } : { text: text };
  }
  function compare(a, b) {
    var an = a.num !== undefined, bn = b.num !== undefined;
    if (an && bn && a.num !== b.num) return a.num - b.num;
    if (an !== bn) return an ? -1 : 1;
    return a.text.localeCompare(b.text, undefined, { numeric: true });
  }
  function sortBy(table, th) {
    var column = th.cellIndex, body = table.tBodies[0];
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    var rows = Array.prototype.slice.call(body.rows).map(function (row) {
      // A "total" row (the data audit's) stays at the bottom, whatever the order.
      var total = row.cells[0] && row.cells[0].textContent.trim() === "total";
      return { row: row, total: total, key: key(row.cells[column] || row) };
    });
    rows.sort(function (x, y) {  // stable: equal keys keep the report's order
      if (x.total || y.total) return (x.total ? 1 : 0) - (y.total ? 1 : 0);
      if (x.key.last || y.key.last) return (x.key.last ? 1 : 0) - (y.key.last ? 1 : 0);
      return ascending ? compare(x.key, y.key) : compare(y.key, x.key);
    });
    rows.forEach(function (r) { body.appendChild(r.row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) {
      c.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }
  Array.prototype.forEach.call(document.querySelectorAll("table"), function (table) {
    if (!table.tHead || !table.tBodies.length) return;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      th.tabIndex = 0;
      th.title = "Sort by this column";
      th.addEventListener("click", function () { sortBy(table, th); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, th); }
      });
    });
  });
})();
{% endraw %}</script>
</body>
</html>
"""


def write_html(path: Path, title: str, markdown_text: str, figures: list[Path],
               audit: str = "") -> Path:
    """Write `path`: `markdown_text` as HTML (each `## ` section in a <section> whose id is its
    heading's slug: `## Answer` -> id="answer"), local images inlined as data: URIs, every file
    of `figures` the Markdown does not show appended under "Figures" with a link to its
    same-stem CSV, and `audit` (Markdown, see data_audit) in its own section. Relative paths in
    `figures` are taken from the working folder, as any path given to Python."""
    path = Path(path)
    base = path.parent
    shown: set[Path] = set()
    ids: set[str] = set(OWN_IDS)
    sections, toc = [], []
    for heading, text in split_sections(markdown_text):
        id_ = unique(slugify(heading, "-") or "section", ids) if heading else ""
        if heading:
            toc.append((id_, heading))
        sections.append((id_, Markup(to_html(text, base, shown))))
    # The figures are paths as Python takes them (relative to the working folder: a grid's
    # default is runs/<dataset>); the Markdown's images are relative to the page.
    extra = [figure_entry(Path(f).resolve(), base) for f in figures
             if Path(f).resolve() not in shown]
    if extra:
        toc.append(("figures", "Figures"))
    if audit:
        toc.append(("data-audit", "Data audit"))
    page = jinja2.Environment(autoescape=True).from_string(TEMPLATE).render(
        title=title, toc=toc, sections=sections, figures=extra,
        audit=Markup(to_html(audit, base, shown)) if audit else "")
    page = with_script_hash(page)
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return path


def split_sections(markdown_text: str) -> list[tuple[str, str]]:
    """(heading, Markdown) per `## ` section, the text before the first one with heading "".
    Split on the Markdown, not on the HTML, so one element holds a heading and its text (the
    whole Answer, not its heading alone, carries id="answer"). results.md and summary.md have
    no code blocks, where a line starting `## ` would not be a heading."""
    out = []
    for part in re.split(r"^(?=## )", markdown_text, flags=re.M):
        if not part.strip():
            continue
        first = part.splitlines()[0]
        out.append((first[3:].strip().strip("#").strip() if first.startswith("## ") else "", part))
    return out


def to_html(text: str, base: Path, shown: set[Path]) -> str:
    """Markdown -> HTML with the markdown package: tables, and local images inlined. Raw HTML in
    the text is escaped, never passed through: the reports quote error messages
    (`<urlopen error ...>`), paths and class names, which must show as written and must not
    become markup or script."""
    md = markdown.Markdown(extensions=["tables", "sane_lists", InlineImages(base, shown)])
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    return md.convert(text)


def with_script_hash(page: str) -> str:
    """The page's Content-Security-Policy allowing its own script alone (by its SHA-256), no
    form submission and no <base>: nothing but the page's own code runs, whatever a report
    quotes."""
    start = page.rindex("<script>") + len("<script>")
    script = page[start:page.index("</script>", start)]
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return page.replace("script-src 'unsafe-inline'",
                        f"script-src 'sha256-{digest}'; form-action 'none'; base-uri 'none'", 1)


class InlineImages(Extension):
    """Registers InlineImagesProcessor; `shown` collects the files inlined."""

    def __init__(self, base: Path, shown: set[Path]):
        super().__init__()
        self.base, self.shown = base, shown

    def extendMarkdown(self, md):
        # After "inline" (20), which turns ![alt](src) into <img> elements.
        md.treeprocessors.register(InlineImagesProcessor(md, self.base, self.shown),
                                   "inline_images", 5)


class InlineImagesProcessor(Treeprocessor):
    """Each <img> whose src is a file beside the page gets that file's bytes as a data: URI, so
    the page needs no other file (and the CSP would refuse to load one). A remote src and a
    local one that does not exist become a visible note, not a load or a broken image."""

    def __init__(self, md, base: Path, shown: set[Path]):
        super().__init__(md)
        self.base, self.shown = base, shown

    def run(self, root):
        for img in list(root.iter("img")):
            src = img.get("src", "")
            parts = urlsplit(src)
            if parts.scheme == "data":
                continue
            if parts.scheme or parts.netloc or not parts.path:  # http:, //host/...: not loaded
                img.tag, img.text = "span", f"[remote image {src} not shown: the page loads nothing]"
                img.attrib.clear()
                img.set("class", "missing")
                continue
            file = resolve(unquote(parts.path), self.base)
            if file.is_file():
                img.set("src", data_uri(file))
                self.shown.add(file)
            else:
                img.tag, img.text = "span", f"[figure {src} is missing]"
                img.attrib.clear()
                img.set("class", "missing")


def resolve(file, base: Path) -> Path:
    """A figure as an absolute path: as given when absolute, else relative to the page's folder."""
    file = Path(file)
    return (file if file.is_absolute() else base / file).resolve()


def data_uri(file: Path) -> str:
    kind = mimetypes.guess_type(file.name)[0] or "image/png"
    return f"data:{kind};base64,{base64.b64encode(file.read_bytes()).decode('ascii')}"


def figure_entry(figure, base: Path) -> dict:
    """One appended figure: its image inlined, caption, and a relative link to its CSV (a link is
    followed only when clicked, so the page still loads nothing)."""
    file = resolve(figure, base)
    if not file.is_file():
        raise MedsslError(f"Figure {file} for {base / 'report.html'} does not exist. Fix: draw "
                          "the figures before the page (`medssl report` draws them), or leave "
                          "that file out of the figure list.")
    csv = file.with_suffix(".csv")
    link = Path(os.path.relpath(csv, base)).as_posix() if csv.is_file() else ""
    return {"name": file.name, "uri": data_uri(file), "csv": quote(link), "csv_name": csv.name}


def data_audit(split_csv: Path) -> str:
    """The page's data audit, as Markdown, from a grid's split.csv: images per class and split,
    groups per split (and any group found in two), images left out by reason, the duplicate
    policy. "" when the file is missing (a grid from before split.csv was written)."""
    split_csv = Path(split_csv)
    if not split_csv.is_file():
        return ""
    try:
        frame = pd.read_csv(split_csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise MedsslError(f"{split_csv} is not a readable split table ({exc}). Fix: restore the "
                          "split.csv the run wrote, or delete it to leave the audit out.") from exc
    missing = [c for c in ("path", "label", "group", "split") if c not in frame]
    if missing:
        raise MedsslError(f"{split_csv} has no column {', '.join(missing)} (it has "
                          f"{', '.join(frame.columns)}). Fix: pass the split.csv a run wrote "
                          "(path,label,group,split,reason,duplicate_policy).")
    for column in ("reason", "duplicate_policy"):  # older split files have neither
        if column not in frame:
            frame[column] = ""
    return "\n\n".join([f"From `{split_csv.name}` ({len(frame)} images).",
                        "**Images per class and split**\n\n" + counts_table(frame),
                        groups_line(frame), left_out_line(frame),
                        policy_line(frame)]) + "\n"


def counts_table(frame: pd.DataFrame) -> str:
    counts = pd.crosstab(frame["label"], frame["split"], margins=True, margins_name="total")
    splits = [s for s in SPLIT_ORDER if s in counts] + sorted(
        s for s in counts if s not in SPLIT_ORDER and s != "total")
    counts = counts[[*splits, "total"]]
    return markdown_table(["class", *counts.columns],
                          [[label, *(str(n) for n in row)] for label, row in counts.iterrows()])


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    # By hand: pandas' to_markdown needs the tabulate package, which the project does not install.
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def groups_line(frame: pd.DataFrame) -> str:
    """Groups per split, and those met in two splits: their images are not independent of each
    other, so one in train and test would leak (excluded rows are left out of that check)."""
    kept = frame[frame["split"] != EXCLUDED]
    per_split = kept.groupby("split")["group"].nunique()
    order = ([s for s in SPLIT_ORDER if s in per_split]
             + sorted(set(per_split.index) - set(SPLIT_ORDER)))
    text = ("**Groups** (patients, lesions or copies of one picture) per split: "
            + ", ".join(f"{s} {per_split[s]}" for s in order) + ".")
    spread = kept.groupby("group")["split"].nunique()
    shared = sorted(spread[spread > 1].index)
    if shared:
        return text + (f" **{len(shared)} group(s) are in more than one split** (e.g. "
                       f"{', '.join(shared[:3])}): their images are not independent across splits.")
    return text + " No group is in more than one split."


def left_out_line(frame: pd.DataFrame) -> str:
    reasons = frame.loc[frame["reason"].str.strip() != "", "reason"]
    if reasons.empty:
        return "**Left out of training:** none."
    # The kinds run records and reports count (medssl.data.splits), the reason itself if new.
    kinds = reasons.map(lambda r: next((k for p, k in REASON_KINDS.items() if r.startswith(p)), r))
    return "**Left out of training:** " + ", ".join(
        f"{n} {kind}" for kind, n in kinds.value_counts().sort_index().items()) + "."


def policy_line(frame: pd.DataFrame) -> str:
    policies = sorted(set(frame["duplicate_policy"]) - {""})
    if not policies:
        return "**Duplicate policy:** not recorded in this split file."
    return f"**Duplicate policy:** `--duplicates {', '.join(policies)}`."
