import json
import os
import shutil
import signal
from pathlib import Path

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


# The browser of the report.html tests (tests/test_report_html.py, tests/test_figures.py).
INSTALL = ("Fix: `apt-get install chromium` (Debian; .ci/run does it) and `pip install -r "
           "requirements.txt` (playwright).")


def unavailable(why: str):
    """Skip where the browser is missing; under CI fail instead, as CI must run this test."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{why} (CI is set, so this test must run). {INSTALL}")
    pytest.skip(f"{why}. {INSTALL}")


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module: a launch takes about a second."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed")
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).is_file():
        unavailable("No chromium found")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()
