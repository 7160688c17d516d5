"""The Python API (issue 36, part 5): docs/api.md's example runs as written; the functions take
the flags' names, refuse bad values with the command line's message, and return the records."""

import re
from pathlib import Path

import pytest

import medssl
from medssl.errors import MedsslError

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_the_documented_example_runs_as_written(tmp_path, capsys):
    block = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[-1]
    exec(compile(block, str(DOC), "exec"), {"WORK": str(tmp_path)})
    printed = capsys.readouterr().out
    assert "test_balanced_acc_mean" in printed and "M1 5" in printed
    assert (tmp_path / "grid" / "results.md").is_file()
    assert (tmp_path / "one" / "config.yaml").is_file()  # as the command writes it
    assert (tmp_path / "predictions.csv").is_file()


def test_a_bad_value_or_name_raises_the_command_lines_message(tmp_path):
    with pytest.raises(MedsslError, match="--epochs"):
        medssl.finetune(dataset="covid19", model="M1", epochs=0, out=tmp_path / "r")
    with pytest.raises(MedsslError, match="'epochz' is no flag .* Did you mean epochs"):
        medssl.finetune(dataset="covid19", model="M1", epochz=1)
    with pytest.raises(MedsslError, match="holds no finished run"):
        medssl.load_run(tmp_path)
    assert not (tmp_path / "r").exists()
