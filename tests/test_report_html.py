"""report.html in a real headless Chromium: it opens with no error, its images load, the answer
shows at the top, a header click sorts numerically, and the page loads nothing from the network."""

from pathlib import Path

import pytest

from medssl.report.html import data_audit, write_html

ANSWER = "M2 has the highest mean balanced accuracy (47.2%), and no difference is supported."
RESULTS_MD = f"""## Answer

Primary endpoint: **balanced accuracy**.

{ANSWER}

## Results

| model | seeds | balanced acc % | Δ balanced accuracy vs M1 |
|---|---|---|---|
| M1 | 2 | 44.28 ± 4.55 | — |
| M2 ‡ | 2 | 102.00 ± 1.00 | +2.95 [-6.18, +12.07] |
| M3 | 2 | — | -11.50 [-20.00, -3.00] |
| M4 | 2 | 9.50 ± 6.20 | -1.95 [-9.49, +5.59] |

![training curves](curves.png)

Duplicates (--duplicates drop): 1 group(s) of copies of one picture found.
"""
SPLIT_CSV = """path,label,group,split,reason,duplicate_policy
a/1.png,nevus,p1,train,,drop
a/2.png,nevus,p1,train,,drop
a/3.png,nevus,p2,val,,drop
a/4.png,nevus,p3,test,,drop
b/1.png,melanoma,p4,train,,drop
b/2.png,melanoma,p5,test,,drop
b/3.png,melanoma,p5,excluded,copy of test image b/2.png,drop
"""


def figure(path: Path, values: list[float]) -> Path:
    """A small PNG with its same-stem CSV, as the report's figures come."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot(values)
    fig.savefig(path, dpi=50)
    plt.close(fig)
    rows = "".join(f"{i},{v}\n" for i, v in enumerate(values))
    path.with_suffix(".csv").write_text("x,y\n" + rows)
    return path


@pytest.fixture
def report(tmp_path) -> Path:
    """A report folder: two figures (one shown in the Markdown), a split.csv, and report.html."""
    out = tmp_path / "grid"
    out.mkdir()
    figures = [figure(out / "curves.png", [1, 3, 2]), figure(out / "reliability.png", [2, 1, 3])]
    (out / "split.csv").write_text(SPLIT_CSV)
    return write_html(out / "report.html", "demo: M1 vs M2", RESULTS_MD, figures,
                      data_audit(out / "split.csv"))


def watch(page) -> dict:
    """Records what the page asks for and reports, from before it is opened."""
    seen = {"requests": [], "errors": [], "page_errors": []}
    page.on("request", lambda request: seen["requests"].append(request.url))
    page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: seen["page_errors"].append(str(error)))
    return seen


def network_loads(seen: dict, page_url: str) -> list[str]:
    """Every load beyond the page itself and data: URIs: requests made, and loads the page's
    Content-Security-Policy refused (Chromium blocks those before any request event and says
    so in a console error), so a load is caught whether or not the CSP stopped it."""
    made = [u for u in seen["requests"] if u != page_url and not u.startswith("data:")]
    refused = [t for t in seen["errors"] if "Content Security Policy" in t or "net::" in t]
    return made + refused


def open_page(browser, path: Path):
    page = browser.new_page()
    seen = watch(page)
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, seen


def column(page, table: str, index: int) -> list[str]:
    return page.evaluate("([table, i]) => Array.from(document.querySelector(table).tBodies[0].rows)"
                         ".map(r => r.cells[i].textContent.trim())", [table, index])


def test_report_opens_offline_with_answer_images_and_sorting(browser, report):
    page, seen = open_page(browser, report)
    try:
        assert seen["errors"] == [] and seen["page_errors"] == []
        assert network_loads(seen, report.as_uri()) == []
        images = page.evaluate("() => Array.from(document.images).map(i => [i.getAttribute("
                               "'src').slice(0, 22), i.complete && i.naturalWidth > 0])")
        # curves.png from the Markdown, reliability.png appended: each once, inlined, loaded
        assert images == [["data:image/png;base64,", True]] * 2
        captions = page.locator("#figures figcaption").all_inner_texts()
        assert captions == ["reliability.png · data: reliability.csv"]
        href = page.locator("#figures figcaption a").get_attribute("href")
        assert (report.parent / href).is_file()
        answer = page.locator("#answer")
        assert answer.is_visible() and ANSWER in answer.inner_text()
        assert answer.bounding_box()["y"] < page.viewport_size["height"] / 2

        assert column(page, "#results table", 2)[0] == "44.28 ± 4.55"
        # numeric, not text order ("102..." < "44..." < "9..."), and "—" last both ways
        ascending = ["9.50 ± 6.20", "44.28 ± 4.55", "102.00 ± 1.00"]
        page.locator("#results th", has_text="balanced acc %").click()
        assert column(page, "#results table", 2) == [*ascending, "—"]
        page.locator("#results th", has_text="balanced acc %").click()
        assert column(page, "#results table", 2) == [*ascending[::-1], "—"]
        page.locator("#results th", has_text="Δ balanced").click()
        assert column(page, "#results table", 3) == [
            "-11.50 [-20.00, -3.00]", "-1.95 [-9.49, +5.59]", "+2.95 [-6.18, +12.07]", "—"]

        audit = page.locator("#data-audit")
        assert audit.is_visible()
        assert column(page, "#data-audit table", 0) == ["melanoma", "nevus", "total"]
        page.locator("#data-audit th", has_text="train").click()  # the total row stays last
        assert column(page, "#data-audit table", 0) == ["melanoma", "nevus", "total"]
        assert seen["errors"] == [] and seen["page_errors"] == []
    finally:
        page.close()


def test_network_check_catches_a_remote_image(browser, tmp_path):
    remote = "http://127.0.0.1:9/x.png"  # the discard port: nothing answers
    path = write_html(tmp_path / "report.html", "remote",
                      RESULTS_MD + f"\n![remote]({remote})\n", [])
    text = path.read_text()
    # A remote image in the Markdown is not loaded: a note says so instead.
    assert f'src="{remote}"' not in text and f"[remote image {remote} not shown" in text
    # The check itself: the same page with the image put back (as a bug would) is caught...
    hostile = tmp_path / "hostile.html"
    hostile.write_text(text.replace("</body>", f'<img src="{remote}" alt="x"></body>'))
    page, seen = open_page(browser, hostile)
    page.close()
    assert any(remote in load for load in network_loads(seen, hostile.as_uri()))
    # ...and without the CSP the image is requested: the same check sees the request itself.
    bare = tmp_path / "no_csp.html"
    bare.write_text("\n".join(line for line in hostile.read_text().splitlines()
                              if "Content-Security-Policy" not in line))
    page, seen = open_page(browser, bare)
    page.close()
    assert remote in seen["requests"]
    assert remote in network_loads(seen, bare.as_uri())


def test_markup_in_a_report_shows_as_written_and_never_runs(browser, tmp_path):
    # Reports quote error messages (`<urlopen error ...>`), paths and names a user chose: they
    # must show as written, and a name like a script tag must not run.
    said = "M3 skipped: the weights are not available offline (<urlopen error [Errno -2]>)."
    hostile = "| F-x<script>window.pwned = 1</script> | 2 | 1.00 | — |"
    md = RESULTS_MD.replace("| M4 | 2 |", hostile + "\n| M4 | 2 |") + f"\n{said}\n"
    path = write_html(tmp_path / "report.html", "<b>title</b>", md, [])
    page, seen = open_page(browser, path)
    try:
        body = page.locator("body").inner_text()
        assert "(<urlopen error [Errno -2]>)" in body and "<b>title</b>" in body
        assert "F-x<script>window.pwned = 1</script>" in body
        assert page.evaluate("window.pwned === undefined")
        # The page's own script still runs (its hash is in the CSP): sorting works.
        assert page.locator("#results th").first.get_attribute("title") == "Sort by this column"
        assert seen["errors"] == [] and seen["page_errors"] == []
    finally:
        page.close()


def test_data_audit_counts(tmp_path):
    split = tmp_path / "split.csv"
    assert data_audit(split) == ""
    split.write_text(SPLIT_CSV)
    audit = data_audit(split)
    assert "| melanoma | 1 | 0 | 1 | 1 | 3 |" in audit  # train val test excluded total
    assert "| total | 3 | 1 | 2 | 1 | 7 |" in audit
    assert "train 2, val 1, test 2" in audit and "No group is in more than one split" in audit
    assert "1 copies of test images" in audit and "`--duplicates drop`" in audit


def test_local_images_inlined_and_missing_figure_noted(tmp_path):
    figure(tmp_path / "curves.png", [1, 2])
    text = write_html(tmp_path / "r.html", "t", "![a](curves.png)\n\n![b](gone.png)\n",
                      [tmp_path / "curves.png"]).read_text()
    assert 'src="data:image/png;base64,' in text and 'src="curves.png"' not in text
    assert 'id="figures"' not in text  # curves.png is shown once, in the Markdown
    assert "[figure gone.png is missing]" in text
    assert list(tmp_path.glob(".*.tmp")) == []


def test_figures_given_relative_to_the_working_folder_are_found(tmp_path, monkeypatch):
    # `medssl compare` writes into runs/<dataset> by default: the page and its figures are then
    # relative paths, taken from the working folder (not twice under the page's folder).
    monkeypatch.chdir(tmp_path)
    grid = Path("runs") / "demo"
    grid.mkdir(parents=True)
    shown = figure(grid / "curves.png", [1, 2])
    page = write_html(grid / "report.html", "relative", "## Answer\n\nM1.\n", [shown])
    assert page.read_text().count("data:image/png;base64,") == 1
