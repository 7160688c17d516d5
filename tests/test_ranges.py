"""One table of value ranges (medssl.ranges.RANGES), read by the CLI at parse and by the
configurations' check at resolve: both refuse the same values, naming the flag and the value."""

import argparse
import math
import re
from dataclasses import fields

import pytest

from medssl.cli import build_parser
from medssl.errors import MedsslError
from medssl.experiments.compare import CompareConfig
from medssl.options import AnalysisOptions, SSLOptions
from medssl.ranges import RANGES, Range, check_values, method_setting
from medssl.training.finetune import FinetuneConfig, resolve as resolve_finetune
from medssl.training.pretrain import PretrainConfig

CONFIGS = {  # where a configuration holds each field, and how to make one with a value in it
    FinetuneConfig: lambda **v: FinetuneConfig(dataset="demo", model="M1", **v),
    PretrainConfig: lambda **v: PretrainConfig(dataset="demo", **v),
    CompareConfig: lambda **v: CompareConfig(dataset="demo", **v),
    AnalysisOptions: lambda **v: CompareConfig(dataset="demo", analysis=AnalysisOptions(**v)),
}
LISTS = ("seeds", "label_fractions", "lr_grid")
FIELD_NAMES = sorted(n for n in RANGES if any(n in {f.name for f in fields(c)} for c in CONFIGS))


def numeric_actions():
    """(command, action) for every flag of every subcommand that converts its text."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, sub in commands.choices.items():
        for action in sub._actions:
            if action.type is not None:
                yield command, action


def outside(rng: Range) -> list[float]:
    """Values just outside `rng`, of the kind it takes, and one that is not finite."""
    values = [math.nan]
    if rng.low > -math.inf:
        values.append(rng.low if rng.low_open else rng.low - 1)
    if rng.high < math.inf:
        values.append(rng.high if rng.high_open else rng.high + 1)
    return values


def inside(rng: Range) -> float:
    """A value inside `rng`: its closed low end, else just above its open one."""
    return rng.low if not rng.low_open else rng.low + min(1, (rng.high - rng.low) / 2)


def test_every_number_the_cli_parses_is_ranged_by_the_table_under_its_fields_name():
    """No flag converts with a bare int or float: each reads the table entry of its own field
    (the name the configuration check uses), so the two cannot drift apart."""
    ranged = 0
    for command, action in numeric_actions():
        name = getattr(action.type, "__name__", "")
        if action.dest == "max_steps":  # hidden, for tests: -1 means "the epochs decide"
            continue
        assert action.type not in (int, float), f"{command} {action.option_strings} is unranged"
        if name in RANGES:
            ranged += 1
            assert action.dest.removeprefix("ssl_") == name, (command, action.dest, name)
    assert ranged >= 40  # the table serves every training command's numbers


@pytest.mark.parametrize("name", sorted(RANGES))
def test_the_table_refuses_just_outside_and_accepts_the_edge(name):
    rng = RANGES[name]
    for value in outside(rng):
        assert rng.problem(value), (name, value)
        with pytest.raises(ValueError, match=re.escape(str(value))):
            rng.parse(str(value))
    assert rng.problem(inside(rng)) is None
    assert rng.parse(str(int(inside(rng)) if rng.whole else inside(rng))) == inside(rng)
    if rng.whole:
        assert rng.problem(inside(rng) + 0.5) == "not a whole number"


@pytest.mark.parametrize("name", FIELD_NAMES)
def test_a_configuration_made_in_python_is_refused_as_the_flag_is(name):
    """The CLI refuses at parse; the same value in a configuration, as the Python API or
    `compare` makes it, is refused by check_values naming the same flag."""
    value = outside(RANGES[name])[-1]
    flag = "--" + name.replace("_", "-")
    make = next(m for c, m in CONFIGS.items() if name in {f.name for f in fields(c)})
    cfg = make(**{name: [value] if name in LISTS else value})
    with pytest.raises(MedsslError, match=f"^{flag} "):
        check_values(cfg)


def test_compares_pretraining_part_is_named_by_its_ssl_flag():
    with pytest.raises(MedsslError, match="^--ssl-lr -1: must be above 0"):
        check_values(CompareConfig(dataset="demo", ssl=SSLOptions(lr=-1.0)))
    with pytest.raises(MedsslError, match="^--seeds -1: .*Fix: a value such as 0 1 2"):
        check_values(CompareConfig(dataset="demo", seeds=[0, -1]))


def test_resolve_refuses_before_any_run_folder_is_made(tmp_path):
    """The Python API's resolve checks the numbers too, with nothing written."""
    out = tmp_path / "run"
    with pytest.raises(MedsslError, match="^--batch-size 1: .*BatchNorm"):
        resolve_finetune(FinetuneConfig(dataset="demo", model="M1", batch_size=1, out=str(out)))
    assert not out.exists()


@pytest.mark.parametrize("key, default, bad, good", [
    ("temperature", 0.1, 0.0, 0.5),       # a rate: above 0
    ("momentum", 0.99, 1.5, 1.0),         # a momentum: (0, 1]
    ("queue_size", 4096, 0, 1),           # a size: at least 1
    ("proj_dim", 128, 2.5, 64),           # a count: whole
    ("local_views", 6, -1, 0),            # a count: at least 0
])
def test_a_methods_setting_is_ranged_by_its_defaults_kind(key, default, bad, good):
    rng = method_setting(key, default)
    assert rng.problem(bad) and rng.problem(good) is None
    assert key in rng.why and rng.example == f"{key}={default}"
