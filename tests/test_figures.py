"""The answer as pictures (medssl.report.figures and its modules) on one small demo comparison:
every figure with its CSV, the forest plot's numbers equal to the table's, readable panels,
TensorBoard's hparams and images, and report.html in a real browser."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from medssl.cli import main
from medssl.data import fixtures as fx
from tests.test_finetune import FAST
from tests.test_report_html import network_loads, open_page

# Two priors trained, M3 asked for and skipped offline (its fix on the page), two seeds, two
# label fractions: every figure of the quick start, at a size the tests afford (about a minute;
# the learning-rate search's runs are tested below on their own).
DEMO = ["--models", "M1", "M2", "M3", "--seeds", "0", "1", "--label-fractions", "1", "0.5",
        "--epochs", "2", "--ssl-epochs", "1", "--lr", "1e-3", *FAST]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(grid folder, every matplotlib figure saved while the comparison ran)."""
    tmp = tmp_path_factory.mktemp("demo")
    drawn = []
    save = Figure.savefig

    def kept(fig, *args, **kwargs):  # the figure itself, to measure what it drew
        drawn.append(fig)
        return save(fig, *args, **kwargs)

    # The conftest's isolation, for a fixture shared by the module (its own are per test).
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDSSL_CACHE_DIR", str(tmp / "cache"))
        mp.setenv("TORCH_HOME", str(tmp / "torch_home"))
        mp.setenv("MEDSSL_OFFLINE", "1")
        mp.delenv("MEDSSL_DATA_ROOT", raising=False)
        mp.setattr(Figure, "savefig", kept)
        assert main(["compare", "--dataset", "demo", "--out", str(tmp / "grid"), *DEMO]) == 0
    return tmp / "grid", drawn


def test_the_demo_writes_every_figure_with_its_csv_and_the_page(demo):
    grid, _ = demo
    for name in ("forest", "label_efficiency", "curves", "curves_frac0.5", "confusion",
                 "confusion_frac0.5", "reliability", "gradcam"):
        assert (grid / f"{name}.png").is_file(), name
    for png in grid.glob("*.png"):  # every figure, not only those named above
        table = pd.read_csv(png.with_suffix(".csv"))
        assert len(table), png.name
    assert not list(grid.glob("roc*.png"))  # four classes: no ROC
    page = (grid / "report.html").read_text()
    assert "M3 skipped" in page and "Fix" in page  # the skipped prior with its fix
    assert 'src="forest.png"' not in page and page.count("data:image/png;base64,") >= 8


def test_the_forest_plot_holds_the_tables_differences_and_intervals(demo):
    grid, drawn = demo
    forest = pd.read_csv(grid / "forest.csv")
    results = pd.read_csv(grid / "results.csv").set_index(["label_fraction", "model"])
    primary = results["primary_metric"].iloc[0]
    assert len(forest) == 2 and set(forest["reference"]) == {"M1"}  # M2 vs M1, two fractions
    for _, row in forest.iterrows():
        table = results.loc[(row["label_fraction"], row["model"])]
        for ours, theirs in (("diff", "diff"), ("low_holm", "low_holm"),
                             ("high_holm", "high_holm"), ("p_holm", "p_holm")):
            assert row[ours] == table[f"test_{primary}_vs_{row['reference']}_{theirs}"]
    # What is drawn is the CSV: the markers sit at the differences, in the CSV's order.
    (fig,) = [f for f in drawn if "paired differences" in title(f)]
    markers = fig.axes[0].collections[-1].get_offsets()
    assert np.array_equal(np.asarray(markers)[:, 0], forest["diff"].to_numpy())


def title(fig) -> str:
    return fig._suptitle.get_text() if fig._suptitle else ""


def bad_panels(fig) -> list[str]:
    """What makes a figure unreadable: a panel with more than 8 lines, or a legend whose box
    overlaps a panel (and so may cover its data) or a line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # a closed figure has lost its canvas: measured on a new one
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    problems = [f"{len(ax.lines)} lines in {ax.get_title()!r}" for ax in fig.axes
                if len(ax.lines) > 8]
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            if not ax.axison:
                continue  # an empty slot of a sheet
            boxes = [ax.get_window_extent(renderer)] + [line.get_window_extent(renderer)
                                                         for line in ax.lines]
            if any(box.overlaps(other) for other in boxes):
                problems.append(f"a legend over {ax.get_title()!r}")
    return problems


def test_no_demo_figure_has_over_8_lines_in_a_panel_or_a_legend_over_its_data(demo):
    grid, drawn = demo
    assert len(drawn) == len(list(grid.glob("*.png"))) == 9  # every figure of the grid
    for fig in drawn:
        assert not bad_panels(fig), title(fig)
    # The check sees what it must: a legend drawn inside a panel of nine lines.
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    for i in range(9):
        ax.plot([0, 1], [i, i + 1], label=str(i))
    ax.legend()
    assert bad_panels(fig) == ["9 lines in ''", "a legend over ''"]
    plt.close(fig)


def fake_runs(tmp_path: Path, models: list[str]) -> pd.DataFrame:
    """collect_runs' rows for runs that only have their epoch log (what the curves read)."""
    rows = []
    for i, model in enumerate(models):
        for seed in (0, 1):
            run = tmp_path / model / f"seed{seed}"
            (run / "logs").mkdir(parents=True)
            log = pd.DataFrame({"epoch": [0, 1, 2], "train/acc": [0.3, 0.4 + i / 50, 0.5],
                                "train/loss": [1.2, 1.0, 0.9], "val/acc": [0.3, 0.35, 0.4 + seed / 10],
                                "val/loss": [1.3, 1.1, 1.0 + i / 20]})
            log.to_csv(run / "logs" / "metrics.csv", index=False)
            rows.append({"model": model, "seed": seed, "run": str(run), "selected_epoch": 2 + seed})
    return pd.DataFrame(rows)


def test_fifteen_models_go_to_panels_of_at_most_eight_with_a_band_and_their_chosen_epochs(
        tmp_path, monkeypatch):
    # A KD/DML grid draws 15 models: before, 15 lines in one panel under the legend.
    from medssl.report.curves import curves_figure

    drawn, save = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (drawn.append(fig),
                                                                  save(fig, *a, **k)))
    models = [f"M{i}" for i in range(15)]
    curves_figure(fake_runs(tmp_path, models), tmp_path / "curves.png", "fifteen")
    (fig,) = drawn
    assert not bad_panels(fig)
    assert max(len(ax.lines) for ax in fig.axes) == 8 and len(fig.axes) == 2 * 2 * 2
    table = pd.read_csv(tmp_path / "curves.csv")
    # The band is the sd over the two seeds; the selected epochs (2 and 3, counted from 1)
    # are marked once each on their model's curves.
    val = table[(table["model"] == "M0") & (table["split"] == "val") & (table["metric"] == "acc")]
    assert val["sd"].iloc[-1] == pytest.approx(np.std([0.4, 0.5], ddof=1))
    assert val.set_index("epoch")["selected_by"].to_dict() == {1: 0, 2: 1, 3: 1}


def test_every_run_logs_the_same_scalars_and_its_hparams_and_the_grid_its_figures(demo):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    grid, _ = demo
    runs = sorted(p.parent for p in grid.rglob("metrics.json") if "ssl-" not in str(p))
    assert len(runs) == 8  # M1 and M2, two seeds, two fractions
    tags = set()
    for run in runs:
        curves = EventAccumulator(str(run / "tensorboard"))
        curves.Reload()
        tags.add(tuple(sorted(curves.Tags()["scalars"])))
        events = EventAccumulator(str(run / "tensorboard" / "hparams"))
        events.Reload()
        start = plugin_data_pb2.HParamsPluginData.FromString(
            events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
        hparams = start.session_start_info.hparams
        record = json.loads((run / "metrics.json").read_text())
        assert hparams["prior"].string_value == record["model"]
        assert hparams["lr"].number_value == record["lr"]
        assert hparams["seed"].number_value == record["seed"]
        assert hparams["label_fraction"].number_value == record["label_fraction"]
        assert hparams["lr_role"].string_value == "given"  # one rate, no search
        # The final metrics the HParams tab shows are the run's own.
        final = events.Scalars("hparams/test_balanced_acc")[-1].value
        assert final == pytest.approx(record["test"]["balanced_acc"], abs=1e-6)
        assert "hparams/val_loss" in events.Tags()["scalars"]
    assert len(tags) == 1 and "val/loss" in next(iter(tags))  # every run: the same curves
    figures = EventAccumulator(str(grid / "tensorboard"), size_guidance={"images": 0})
    figures.Reload()
    assert {"figures/forest", "figures/gradcam", "figures/curves"} <= set(figures.Tags()["images"])


def hparams_of(run: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(run / "tensorboard" / "hparams"))
    events.Reload()
    sessions = [k for k in events.PluginTagToContent("hparams") if k.endswith("start_info")]
    assert sessions == ["_hparams_/session_start_info"]  # one line of the tab per run
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")[sessions[0]])
    return dict(start.session_start_info.hparams)


def test_a_searchs_rates_are_candidates_and_the_chosen_runs_line_says_so(tmp_path, cli,
                                                                         monkeypatch):
    # Each rate trains under lr-search/ and the chosen one is copied out: its HParams line must
    # be rewritten, or the table's run would call itself a candidate (and the candidates'
    # test scores look like choices).
    root = fx.make_covid19(tmp_path, per_class=8)
    monkeypatch.chdir(tmp_path)  # the search runs go under runs/covid19/
    code, _, err = cli("finetune", "--dataset", "covid19", "--data-root", root, "--model", "M1",
                       "--lr-grid", "1e-3", "1e-2", "--epochs", "1", *FAST,
                       "--out", tmp_path / "chosen")
    assert code == 0, err
    chosen = hparams_of(tmp_path / "chosen")
    record = json.loads((tmp_path / "chosen" / "metrics.json").read_text())
    assert chosen["lr_role"].string_value == "chosen on val"
    assert chosen["lr"].number_value == record["lr_selected"]
    candidates = sorted(p.parent for p in (tmp_path / "runs").rglob("metrics.json"))
    assert len(candidates) == 2 and {hparams_of(c)["lr_role"].string_value for c in candidates} \
        == {"candidate of a learning-rate search"}


def test_the_demos_page_opens_offline_with_its_images_and_answer(demo, browser):
    grid, _ = demo
    page, seen = open_page(browser, grid / "report.html")
    assert not seen["errors"] and not seen["page_errors"]
    assert not network_loads(seen, page.url)
    loaded = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth)")
    assert len(loaded) >= 8 and all(loaded)
    answer = page.locator("#answer")
    assert answer.is_visible() and "has the highest mean balanced accuracy" in answer.inner_text()
    page.close()


def binary_runs(tmp_path: Path) -> pd.DataFrame:
    """Two seeds of one model's test predictions on a binary task, with their thresholds."""
    rng = np.random.default_rng(0)
    rows = []
    for seed, threshold in ((0, 0.5), (1, 0.7)):
        run = tmp_path / f"seed{seed}"
        run.mkdir()
        labels = np.array(["NORMAL", "PNEUMONIA"] * 10)
        p = np.clip(rng.normal(0.4 + 0.3 * (labels == "PNEUMONIA"), 0.2), 0, 1)
        pd.DataFrame({"path": [f"{i:02d}.png" for i in range(20)], "label": labels,
                      "prob_NORMAL": 1 - p, "prob_PNEUMONIA": p}).to_csv(
            run / "test_predictions.csv", index=False)
        rows.append({"model": "M1", "seed": seed, "run": str(run), "threshold": threshold})
    return pd.DataFrame(rows)


def test_operating_points_and_confusion_pool_the_seeds(tmp_path):
    from sklearn.metrics import confusion_matrix, roc_auc_score

    from medssl.report.confusion import confusion_table, operating_table

    runs = binary_runs(tmp_path)
    table = operating_table(runs, positive=1)
    frames = [pd.read_csv(Path(r) / "test_predictions.csv") for r in runs["run"]]
    for (_, run), frame in zip(runs.iterrows(), frames):  # each seed's point at its threshold
        truth = frame["label"] == "PNEUMONIA"
        said = frame["prob_PNEUMONIA"] >= run["threshold"]
        tn, fp, fn, tp = confusion_matrix(truth, said).ravel()
        point = table[(table["curve"] == "roc_operating_point") & (table["seed"] == run["seed"])]
        assert (point["x"].item(), point["y"].item()) == pytest.approx((fp / (fp + tn),
                                                                         tp / (tp + fn)))
    pooled = pd.concat(frames)
    roc = table[table["curve"] == "roc"]
    assert np.trapezoid(roc["y"], roc["x"]) == pytest.approx(
        roc_auc_score(pooled["label"] == "PNEUMONIA", pooled["prob_PNEUMONIA"]))
    confusion = confusion_table(runs)
    expected = confusion_matrix(pooled["label"], np.where(pooled["prob_PNEUMONIA"] > 0.5,
                                                          "PNEUMONIA", "NORMAL"))
    assert confusion["count"].tolist() == expected.ravel().tolist()
    assert confusion.groupby("true")["share"].sum().tolist() == pytest.approx([1, 1])


def test_frozen_protocols_get_the_prediction_figures_and_no_curves(tmp_path):
    # A grid of linear probes alone trains no network: no curves, the rest from its predictions.
    from medssl.report.figures import fraction_figures

    runs = binary_runs(tmp_path).assign(protocol="linear", label_fraction=1.0, n_classes=2,
                                        positive_index=1.0)
    written = fraction_figures(tmp_path, runs, "chest_xray")
    assert sorted(p.name for p in written) == ["confusion.png", "reliability.png", "roc.png"]
    assert all(p.with_suffix(".csv").is_file() for p in written)


def test_the_forest_plot_draws_own_base_comparisons_in_a_panel_of_their_own():
    from medssl.report.forest import forest_table

    def row(model, base, m1, own, frac=1.0):
        cells = {"model": model, "label_fraction": frac, "seeds": 3, "base": base,
                 "primary_metric": "balanced_acc", "equivalence_margin": 0.02,
                 "vs_M1_seeds": 3, "vs_base_seeds": 2}
        for ref, diff in (("M1", m1), ("M3", np.nan), ("base", own)):
            cells.update({f"test_balanced_acc_vs_{ref}_{k}": v for k, v in (
                ("diff", diff), ("low_holm", diff - 0.1), ("high_holm", diff + 0.1),
                ("p_holm", 0.5))})
        return cells

    summary = pd.DataFrame([row("M1", None, np.nan, np.nan),
                            row("KD(M2→M1)", "M1", 0.01, 0.01),  # its base is M1: drawn there
                            row("DML(M1+M2)", "M1+M2 ensemble", 0.05, -0.02),
                            row("F-x+simclr", "F-x", 0.08, 0.03)])
    table = forest_table(summary)
    own = table[table["reference"] == "base"]
    assert list(own["model"]) == ["F-x+simclr", "DML(M1+M2)"]  # ordered by estimate
    assert list(own["against"]) == ["F-x", "M1+M2 ensemble"] and set(own["seeds"]) == {2}
    assert list(table.loc[table["reference"] == "M1", "model"]) == [
        "F-x+simclr", "DML(M1+M2)", "KD(M2→M1)"]


def test_a_rebuilt_report_removes_stale_figures_and_survives_a_failing_gradcam(demo, monkeypatch,
                                                                              caplog):
    # A figure an earlier report drew and this one does not must not look current; and the
    # Grad-CAM maps are one figure: their failure is a warning, the page is still written.
    from medssl.report import figures
    from medssl.report.build import build_report

    grid, _ = demo
    for name in ("curves_frac0.3", "forest"):  # a fraction gone, and a figure about to be redrawn
        (grid / f"{name}.png").write_bytes(b"old")
        (grid / f"{name}.csv").write_text("old\n")
    (grid / "notes.png").write_bytes(b"mine")  # not one of medssl's figures: left alone
    (grid / "report.html").unlink()

    def broken(runs, path):
        raise RuntimeError("no memory left")

    monkeypatch.setattr(figures, "gradcam_figure", broken)
    build_report(grid)
    assert not (grid / "curves_frac0.3.png").exists() and not (grid / "curves_frac0.3.csv").exists()
    assert (grid / "forest.png").read_bytes() != b"old" and (grid / "notes.png").exists()
    assert not (grid / "gradcam.png").exists() and (grid / "report.html").is_file()
    assert "gradcam.png not drawn (RuntimeError: no memory left)" in caplog.text


def test_names_are_drawn_as_written_not_as_maths(tmp_path):
    # A `$` in a model name or a path would otherwise turn into mathtext, and the label would
    # no longer read as the CSV does.
    from medssl.report.forest import forest_figure

    drawn, save = [], Figure.savefig
    summary = pd.DataFrame([{"model": "F-$x$", "label_fraction": 1.0, "seeds": 2, "base": None,
                             "primary_metric": "balanced_acc", "equivalence_margin": 0.02,
                             "vs_M1_seeds": 2, **{f"test_balanced_acc_vs_M1_{k}": v for k, v in (
                                 ("diff", 0.1), ("low_holm", 0.0), ("high_holm", 0.2),
                                 ("p_holm", 0.05))}}])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Figure, "savefig", lambda fig, *a, **k: (drawn.append(fig), save(fig, *a, **k)))
        forest_figure(summary, tmp_path / "forest.png", "names")
    (label,) = drawn[0].axes[0].get_yticklabels()
    assert label.get_text() == "F-$x$, 100% labels"
    assert label._preprocess_math(label.get_text())[1] is False  # plain text, no maths
