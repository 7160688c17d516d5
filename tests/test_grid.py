"""The grid as cells (experiments.grid): named so that a cell can be run alone by name, in an
order that respects their dependencies, and one builder of their run configs."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from medssl.data import fixtures as fx
from medssl.errors import MedsslError
from medssl.experiments.grid import Cell, depends_on, finetune_config, plan, pretraining_dir
from medssl.options import RecipeOptions
from medssl.records import RunRecord, write_run_record
from medssl.runs import finetune_dir, last_checkpoint

FAST = ["--arch", "resnet18", "--image-size", "32", "--num-workers", "0", "--batch-size", "8"]


def grid(**kw):
    """A grid's configuration, as compare.resolve leaves it (only what the cells read)."""
    values = dict(label_fractions=[1.0, 0.1], seeds=[0, 1], shared_ssl=False, distill=["M3:M1"],
                  mutual=["M2+M4"], recipe=RecipeOptions(lr=1e-3), resume=False,
                  imagenet_weights=None, ssl=None, protocols=["finetune"], priors=None)
    return SimpleNamespace(**{**values, **kw})


def test_every_cell_is_made_again_from_its_name_and_runs_after_what_it_needs(tmp_path):
    cfg = grid()
    cells = plan(cfg, tmp_path, ["M1", "M2", "M3", "M4"])
    # A name is all another process needs: it parses back to the very cell.
    assert all(Cell.parse(c.name) == c for c in cells)
    assert len({c.name for c in cells}) == len(cells)
    # Pretrainings first (one per folder: per seed here), then models alone, then KD/DML.
    kinds = [c.kind for c in cells]
    assert kinds == sorted(kinds, key=["pretrain", "finetune", "extra"].index)
    assert sum(k == "pretrain" for k in kinds) == 2 * 2  # (M2, M4) x seeds 0, 1
    position = {c.name: i for i, c in enumerate(cells)}
    for cell in cells:
        for needed in depends_on(cfg, cell):
            assert position[needed.name] < position[cell.name], (needed.name, cell.name)
    kd = Cell.parse("extra:KD(M3→M1):0.1:1")
    assert {c.name for c in depends_on(cfg, kd)} == {"finetune:M3:0.1", "finetune:M1:0.1"}
    # Shared pretraining: one cell for every seed.
    shared = plan(grid(shared_ssl=True), tmp_path, ["M2"])
    assert [c.name for c in shared if c.kind == "pretrain"] == ["pretrain:M2:1:0"]
    # Frozen protocols: one cell per model and fraction, after the pretrainings it needs.
    frozen = plan(grid(protocols=["linear", "knn"], distill=None, mutual=None), tmp_path, ["M2"])
    assert [c.kind for c in frozen] == ["pretrain", "pretrain", "frozen", "frozen"]
    assert all(Cell.parse(c.name) == c for c in frozen)


@pytest.mark.parametrize("name", ["train:M1:1", "finetune:M1", "finetune:M1:1:0",
                                  "pretrain:M2:x:0", "extra:KD(M3→M1):1"])
def test_a_name_that_is_no_cell_is_refused_with_the_fix(name):
    with pytest.raises(MedsslError, match="Fix"):
        Cell.parse(name)


def test_one_builder_gives_a_student_this_seeds_teachers_at_its_chosen_rate(tmp_path):
    cfg = grid(recipe=RecipeOptions(lr_grid=[1e-4, 1e-3]))
    common = {"dataset": "covid19", "arch": "resnet18"}
    # M1 alone was searched and chose 1e-3 (its first seed's record says so).
    record = {"values": {"0.001": 0.5}, "seeds": [0, 1]}
    write_run_record(finetune_dir(tmp_path, "M1", 0, 0.1),
                     RunRecord(model="M1", lr=1e-3, lr_selected=1e-3, lr_grid=[1e-4, 1e-3],
                               lr_search=record))
    kd = finetune_config(cfg, tmp_path, Cell.parse("extra:KD(M3→M1):0.1:1"), 1, common)
    assert kd.model == "M1" and kd.seed == 1 and kd.label_fraction == 0.1
    assert kd.teachers == [str(finetune_dir(tmp_path, "M3", 1, 0.1))]
    assert kd.lr == 1e-3 and kd.lr_grid is None and kd.assigned.lr_choice["lr_search"] == record
    m2 = finetune_config(cfg, tmp_path, Cell("finetune", "M2", 1.0), 1, common)
    assert m2.ssl_checkpoint == str(pretraining_dir(tmp_path, "M2", 1.0, 1, per_seed=True))
    assert m2.out == str(finetune_dir(tmp_path, "M2", 1, 1.0)) and m2.lr_grid == [1e-4, 1e-3]


def test_a_cell_runs_alone_by_name_in_another_process(tmp_path):
    """What a cluster job does: `compare --cell NAME` in a process of its own runs that cell
    and nothing else, and refuses one whose dependencies are not finished."""
    root = fx.make_covid19(tmp_path, per_class=6)
    out = tmp_path / "grid"
    args = [sys.executable, "-m", "medssl", "compare", "--dataset", "covid19", "--data-root",
            str(root), "--models", "M1", "M2", "--seeds", "0", "--epochs", "1", "--ssl-epochs",
            "1", "--lr", "1e-3", "--out", str(out), *FAST]

    def cell(name):
        return subprocess.run([*args, "--cell", name], capture_output=True, text=True,
                              )  # the cache and offline settings of this test: inherited

    early = cell("finetune:M2:1")
    assert early.returncode == 2 and "needs pretrain:M2:1:0 finished first" in early.stderr
    # Another job's cell, running now: a checkpoint and no completion marker. A cell looks at
    # its own runs only, so it does not take that one for an interrupted run of its own.
    running = last_checkpoint(out / "M1" / "seed0")
    running.parent.mkdir(parents=True)
    running.write_bytes(b"")
    done = cell("pretrain:M2:1:0")
    assert done.returncode == 0, done.stderr
    assert (out / "ssl-random" / "seed0" / "backbone.pt").is_file()
    assert not (out / "M2").exists()  # that cell alone
    done = cell("finetune:M2:1")
    assert done.returncode == 0, done.stderr
    assert (out / "M2" / "seed0" / "metrics.json").is_file()
    assert sorted(p.name for p in (out / "M1").rglob("*") if p.is_file()) == ["last.ckpt"]
    assert Path(out / "split.csv").is_file()
