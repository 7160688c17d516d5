import json
import os
import signal

import pytest

from medssl.cli import main


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache and no default data root from the environment."""
    monkeypatch.setenv("MEDSSL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MEDSSL_DATA_ROOT", raising=False)
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def offline_torch_home(tmp_path, monkeypatch):
    """No test downloads weights: an empty torchvision cache of its own, and MEDSSL_OFFLINE."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("MEDSSL_OFFLINE", "1")
    return tmp_path / "torch_home"


@pytest.fixture
def cli(capsys):
    """Run `medssl ARGS...` in-process; returns (exit code, stdout, stderr)."""
    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.fixture
def check_json(cli):
    """`medssl check --json` as a dict, plus its exit code."""
    def run(*args):
        code, out, err = cli("check", "--json", *args)
        assert out, err
        return code, json.loads(out)
    return run


def ctrl_c_as_usual() -> None:
    """`preexec_fn` of a child process a test sends Ctrl-C: a shell starts background jobs
    (`cmd &`, as a CI runner may) with SIGINT ignored, children inherit that, and Python then
    never raises KeyboardInterrupt: the run would go on and the test would fail for nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def own_group() -> None:
    """`preexec_fn` of a child a test signals with everything it starts (`os.killpg`), as a
    terminal's Ctrl-C or a batch system's SIGTERM reaches a run and its loader workers."""
    ctrl_c_as_usual()
    os.setpgrp()
