"""The decode pass runs once per dataset (data.scan_cache): a second run on unchanged files
reuses its findings, and any changed file makes it run again."""

import importlib
import shutil


from medssl.data import fixtures as fx
from medssl.data.prepare import DataConfig, open_dataset


def test_a_second_run_reuses_the_decode_pass_and_a_changed_file_runs_it_again(tmp_path,
                                                                               monkeypatch):
    root = fx.make_covid19(tmp_path, per_class=6)
    cfg = DataConfig(dataset="covid19", data_root=str(root))
    prepare_module = importlib.import_module("medssl.data.prepare")  # the package's `prepare`
    calls = []                                                        # is a function
    real = prepare_module.inspect_images
    monkeypatch.setattr(prepare_module, "inspect_images",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    first = open_dataset(cfg, workers=1)
    assert len(calls) == 1
    again = open_dataset(cfg, workers=1)
    assert len(calls) == 1  # reused: nothing decoded
    assert again.duplicates == first.duplicates
    assert [p.as_dict() for p in again.problems] == [p.as_dict() for p in first.problems]
    assert again.samples.equals(first.samples)
    # One picture replaced by a broken file of another size: decoded again, and found broken.
    victim = root / again.samples["path"].iloc[0]
    victim.write_bytes(b"not a picture")
    broken = open_dataset(cfg, workers=1)
    assert len(calls) == 2
    assert any(p.path == again.samples["path"].iloc[0] for p in broken.problems)


def test_a_copy_of_a_file_is_a_duplicate_again_after_the_cache(tmp_path):
    """Copies found by the pass come back from its cache (a same picture added is new work)."""
    root = fx.make_covid19(tmp_path, per_class=6)
    cfg = DataConfig(dataset="covid19", data_root=str(root))
    before = open_dataset(cfg, workers=1)
    source = root / before.samples["path"].iloc[0]
    shutil.copy(source, source.with_name("copy_" + source.name))
    after = open_dataset(cfg, workers=1)
    assert len(after.duplicates) == len(before.duplicates) + 1
    assert len(open_dataset(cfg, workers=1).duplicates) == len(after.duplicates)
