"""The run records (medssl.records): metrics.json and backbone.json as typed contracts, written
as before with `schema` first, read back whole, old files accepted, newer or foreign ones refused
by name. Tiny hand-made records: no training."""

import json
import re

import pytest
from torch import nn

from medssl.errors import MedsslError
from medssl.experiments.lr_search import adopt
from medssl.models.checkpoints import read_meta, save_backbone
from medssl.records import (SCHEMA, BackboneRecord, RunRecord, UnreadableRecord,
                            backbone_record_path, read_backbone_dict, read_backbone_record,
                            read_run_record, write_backbone_record, write_run_record)
from medssl.runs import FINETUNE_OUTPUTS, finetune_finished, mark_finished


def run_dict() -> dict:
    """A metrics.json as training.finetune writes it (its keys in its order), values tiny."""
    metric = {"acc": 0.5, "balanced_acc": 0.5, "macro_f1": 0.4, "auroc": float("nan"),
              "loss": 0.7, "n": 4}
    return {"dataset": "demo", "model": "M1", "protocol": "finetune", "seed": 0,
            "label_fraction": 1.0,
            "labelled_train_images": 8,
            "selection": {"metric": "val/loss", "mode": "min", "epoch": 2, "value": 0.6},
            "epochs_trained": 2, "classes": ["a", "b"], "world_size": 1, "lr": 1e-3,
            "lr_used": 1e-3, "lr_scaling": "sqrt", "lr_schedule": "constant",
            "train": metric, "val": metric, "test": metric, "test_last": metric,
            "objective": {"name": "plain"}, "lr_selected": None, "lr_grid": None,
            "overfitting": {}, "compute": {"finetune_images_seen": 16},
            "prior": {"model": "M1", "init": "random", "arch": "resnet18"},
            "split_file": "split.csv", "data": {"duplicates": {"policy": "drop"}},
            "medssl_version": "0.1.0", "wall_time_s": 1.5,
            "config": {"model": "M1", "lr": 1e-3, "out": "runs/demo/M1/seed0"}}


def backbone_dict() -> dict:
    """A backbone.json as training.pretrain writes it: every field, in its order."""
    return {f: i for i, f in enumerate(BackboneRecord.__dataclass_fields__) if f != "schema"}


def test_a_run_record_is_written_as_before_with_schema_first_and_read_back(tmp_path):
    # The writer's file must stay byte for byte what it was (plus "schema"), and reading it
    # back must give the same record.
    record = RunRecord(**run_dict())
    path = write_run_record(tmp_path, record)
    assert path.read_text() == json.dumps({"schema": SCHEMA, **run_dict()}, indent=2)
    back = read_run_record(tmp_path)
    assert back.to_dict().keys() == record.to_dict().keys() and back.model == "M1"
    assert back.test["loss"] == 0.7 and back.base_models is None and back.lr_search is None
    # base_models and lr_search appear only where a run has them, in the writer's place.
    both = RunRecord(**run_dict(), base_models=["M1"], lr_search={"seeds": [0]})
    keys = list(both.to_dict())
    assert keys.index("base_models") == keys.index("objective") + 1
    assert keys.index("lr_search") == keys.index("lr_grid") + 1


def test_a_backbone_record_round_trips_and_a_partial_dict_keeps_its_keys(tmp_path):
    # pretrain writes every field (default=str, as before); models.checkpoints still takes the
    # partial dicts tests and tools hand it, and gives back just what they wrote.
    record = BackboneRecord(**backbone_dict())
    write_backbone_record(tmp_path / "backbone.pt", record)
    path = backbone_record_path(tmp_path / "backbone.pt")
    assert path.name == "backbone.json"
    assert path.read_text() == json.dumps({"schema": SCHEMA, **backbone_dict()}, indent=2)
    assert read_backbone_record(tmp_path / "backbone.pt") == record
    save_backbone(nn.Linear(1, 1), tmp_path / "small" / "backbone.pt", {"arch": "resnet18"})
    small = tmp_path / "small" / "backbone.json"
    assert json.loads(small.read_text()) == {"schema": SCHEMA, "arch": "resnet18"}
    assert read_meta(small) == {"arch": "resnet18"}
    assert read_backbone_record(small).method == "simclr"  # the default of older backbones


def test_files_written_before_the_schema_are_read_as_schema_1(tmp_path):
    # Every run and backbone made before records.py has no "schema" and may lack later keys.
    old = {k: v for k, v in run_dict().items()
           if k not in ("lr", "lr_used", "lr_scaling", "overfitting", "compute")}
    (tmp_path / "metrics.json").write_text(json.dumps(old))
    record = read_run_record(tmp_path)
    assert record.schema == 1 and record.compute == {} and record.lr_used is None
    assert record.lr == 1e-3  # before `lr` was recorded: the config's
    (tmp_path / "backbone.json").write_text(json.dumps({"arch": "resnet18", "init": "random"}))
    meta = read_backbone_record(tmp_path / "backbone.pt")
    assert meta.schema == 1 and meta.method == "simclr" and meta.label_fraction == 1.0
    assert read_backbone_dict(tmp_path / "backbone.json") == {"arch": "resnet18",
                                                              "init": "random"}


def test_a_newer_schema_is_refused_by_name(tmp_path):
    # A file a newer medssl wrote may mean something else: say so, never misread it.
    (tmp_path / "metrics.json").write_text(json.dumps({**run_dict(), "schema": SCHEMA + 1}))
    named = re.escape(str(tmp_path / "metrics.json"))
    with pytest.raises(MedsslError, match=named + ".*newer.*Fix: upgrade"):
        read_run_record(tmp_path)
    (tmp_path / "backbone.json").write_text(json.dumps({"schema": SCHEMA + 1, "new": 1}))
    with pytest.raises(MedsslError, match=re.escape(str(tmp_path / "backbone.json")) + ".*newer"):
        read_backbone_record(tmp_path / "backbone.pt")


def test_a_file_that_is_not_an_object_is_refused_by_name(tmp_path):
    # A list or a cut-short file is no record: UnreadableRecord (the report skips such runs).
    named = re.escape(str(tmp_path / "metrics.json"))
    for text in ("[1, 2]", "{", '"metrics"'):
        (tmp_path / "metrics.json").write_text(text)
        with pytest.raises(UnreadableRecord, match=named + ".*Fix:"):
            read_run_record(tmp_path)
    (tmp_path / "backbone.json").write_text("[]")
    with pytest.raises(UnreadableRecord, match="holds a JSON list.*Fix:"):
        read_backbone_record(tmp_path / "backbone.pt")


def test_an_unknown_key_is_ignored_with_a_warning(tmp_path, caplog):
    # A note added by hand was read past before records existed: still read, and said.
    (tmp_path / "metrics.json").write_text(json.dumps({**run_dict(), "accuracy": 1.0}))
    record = read_run_record(tmp_path)
    assert record.model == run_dict()["model"] and not hasattr(record, "accuracy")
    assert "'accuracy'" in caplog.text and "ignored" in caplog.text


def test_adopt_keeps_the_schema_and_records_the_choice(tmp_path):
    # lr_search.adopt rewrites metrics.json: it must stay a schema-1 record, told the search.
    search = tmp_path / "lr-search" / "M1" / "lr0.001" / "seed0"
    write_run_record(search, RunRecord(**run_dict()))
    for name in FINETUNE_OUTPUTS[1:]:
        (search / name).write_text("path,label\n")
    mark_finished(search, FINETUNE_OUTPUTS)
    out = adopt(search, tmp_path / "M1" / "seed0", [1e-3, 1e-2], 1e-3, {"seeds": [0]})
    assert finetune_finished(out)
    text = json.loads((out / "metrics.json").read_text())
    assert list(text)[0] == "schema" and text["schema"] == SCHEMA
    record = read_run_record(out)
    assert record.lr_selected == 1e-3 and record.lr_grid == [1e-3, 1e-2]
    assert record.lr_search == {"seeds": [0]} and record.config["out"] == str(out)
    assert read_run_record(search).lr_search is None  # the search run is left as it was
