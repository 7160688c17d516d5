"""Configuration files: `--config FILE.yaml` on every command, and the `config.yaml` a run writes
that reruns it. Top layer, beside the CLI: a file's keys are the command's flag names (dashes or
underscores), turned into the flags they stand for and parsed by the same argparse parser, with
the same checks; flags given on the command line come after, so they win. PyYAML reads and
writes the files (safe_load / safe_dump).
"""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path

from medssl.atomic import atomic_write
from medssl.errors import MedsslError

# Read by main itself, never from a file.
NOT_IN_FILES = {"help", "config", "verbose", "version"}


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest not in NOT_IN_FILES}


def read_yaml(path: str | Path) -> dict:
    import yaml  # lazy: only where a file is given

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise MedsslError(f"--config {path} does not exist. Fix: the path of a YAML file.") \
            from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MedsslError(f"--config {path} is not readable YAML ({detail}). Fix: a file of "
                          "`flag-name: value` lines.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MedsslError(f"--config {path} holds a {type(data).__name__}, not `flag-name: "
                          "value` lines. Fix: one key per flag, e.g. `epochs: 30`.")
    return data


def _tokens(flag: str, action: argparse.Action, value, where: str) -> list[str]:
    """One key's command-line tokens."""
    if value is None:
        return []
    if action.nargs == 0:  # a switch: its flag where the value is the one the flag sets
        if not isinstance(value, bool):
            raise MedsslError(f"{where}: {action.dest.replace('_', '-')} is a switch: true or "
                              f"false, not {value!r}.")
        return [flag] if value == action.const else []
    if isinstance(value, dict):  # KEY=VALUE flags (--aug, --method-opt)
        return [t for k, v in value.items() for t in (flag, f"{k}={v}")]
    values = value if isinstance(value, list) else [value]
    if isinstance(action, argparse._AppendAction):
        return [t for v in values for t in (flag, str(v))]
    return [flag, *map(str, values)]


def tokens_from_yaml(path: str | Path, parser: argparse.ArgumentParser) -> list[str]:
    """The flags a YAML file sets, as command-line tokens for `parser` (one command's)."""
    return tokens_from_mapping(read_yaml(path), parser, f"--config {path}")


def tokens_from_mapping(values: dict, parser: argparse.ArgumentParser, where: str) -> list[str]:
    """Flag name -> value (a config file's, or the Python API's keyword arguments) as
    command-line tokens for `parser`; an unknown name is refused with the closest ones."""
    options = _options(parser)
    tokens = []
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        if dest not in options:
            close = difflib.get_close_matches(dest, list(options), n=2)
            hint = f" Did you mean {' or '.join(c.replace('_', '-') for c in close)}?" if close \
                else ""
            raise MedsslError(f"{where}: {key!r} is no flag of `medssl {parser.prog.split()[-1]}`."
                              f"{hint} Fix: keys are the command's flag names (`--help`).")
        action = options[dest]
        flag = max(action.option_strings, key=len)
        tokens += _tokens(flag, action, value, where)
    return tokens


def with_config(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """argv with `--config FILE` replaced by the flags the file sets, placed before the others
    (so that a flag given on the command line wins)."""
    if "--config" not in argv or not argv:
        return argv
    i = argv.index("--config")
    if i + 1 >= len(argv):
        raise MedsslError("--config needs a file. Fix: --config FILE.yaml.")
    path, rest = argv[i + 1], argv[:i] + argv[i + 2:]
    command = rest[0]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if command not in sub.choices:
        return argv  # argparse names the unknown command
    return [command, *tokens_from_yaml(path, sub.choices[command]), *rest[1:]]


def plain(value):
    """A value YAML writes and the flags read back: paths as text, tuples as lists."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def rerun_values(parser: argparse.ArgumentParser, given: dict, resolved: dict) -> dict:
    """The command's flags with the values a run resolved (where its record has the flag's
    field) or as given: what config.yaml holds, keys as flags are spelt."""
    out = {}
    for dest in _options(parser):
        value = resolved.get(dest, given.get(dest))
        if value is not None and value != [] and value != {}:
            out[dest.replace("_", "-")] = plain(value)
    return out


def write_config(folder: str | Path, values: dict) -> Path:
    """config.yaml in `folder`: `medssl <command> --config config.yaml` reruns it."""
    import yaml

    path = Path(folder) / "config.yaml"
    atomic_write(path, lambda p: p.write_text(yaml.safe_dump(values, sort_keys=False)))
    return path


def dump(values: dict) -> str:
    import yaml

    return yaml.safe_dump(values, sort_keys=False)
