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

# Read by main itself, never from a file; and what a written config.yaml leaves out: where the
# run was written and how it was started (`--out` new, or the default, for a rerun).
NOT_IN_FILES = {"help", "config", "verbose", "version", "print_config"}
NOT_RERUN = {"out", "resume", "force", "cell", "images_dir", "dry_run"}


def _key(name: str) -> str:
    return name.lstrip("-").replace("-", "_")


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Each option by its flag's name (--no-cache: no_cache, --aug: aug) and by its dest."""
    out = {}
    for a in parser._actions:
        if a.option_strings and a.dest not in NOT_IN_FILES:
            out.setdefault(a.dest, a)
            out.update({_key(o): a for o in a.option_strings if o.startswith("--")})
    return out


def flag_name(action: argparse.Action) -> str:
    """How a config file spells an option: its longest flag without the dashes."""
    return max(action.option_strings, key=len).lstrip("-")


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


def _tokens(flag: str, action: argparse.Action, value, where: str, by_flag: bool) -> list[str]:
    """One key's command-line tokens (`by_flag`: the key is the flag's name, not its dest)."""
    name = flag.lstrip("-")
    if value is None:
        return []
    if action.nargs == 0:  # a switch: `no-cache: true` sets --no-cache, as does `cache: false`
        if not isinstance(value, bool):
            raise MedsslError(f"{where}: {name} is a switch: true or false, not {value!r}.")
        return [flag] if value == (True if by_flag else action.const) else []
    if isinstance(value, list) and action.nargs is None and not isinstance(
            action, argparse._AppendAction):
        raise MedsslError(f"{where}: {name} takes one value, not a list ({value!r}).")
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
        dest = _key(str(key))
        if dest not in options:
            close = difflib.get_close_matches(dest, list(options), n=2)
            hint = f" Did you mean {' or '.join(c.replace('_', '-') for c in close)}?" if close \
                else ""
            raise MedsslError(f"{where}: {key!r} is no flag of `medssl {parser.prog.split()[-1]}`."
                              f"{hint} Fix: keys are the command's flag names (`--help`).")
        action = options[dest]
        flag = max(action.option_strings, key=len)
        tokens += _tokens(flag, action, value, where, by_flag=dest != action.dest)
    return tokens


def with_config(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """argv with `--config FILE` replaced by the flags the file sets, placed before the others
    (so that a flag given on the command line wins)."""
    i = next((i for i, a in enumerate(argv) if a == "--config" or a.startswith("--config=")),
             None)
    if i is None:
        return argv
    if argv[i] == "--config":
        if i + 1 >= len(argv):
            raise MedsslError("--config needs a file. Fix: --config FILE.yaml.")
        path, rest = argv[i + 1], argv[:i] + argv[i + 2:]
    else:
        path, rest = argv[i].split("=", 1)[1], argv[:i] + argv[i + 1:]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if not rest or rest[0] not in sub.choices:
        raise MedsslError("--config names no command to configure. Fix: medssl COMMAND "
                          f"--config {path} (commands: {', '.join(sub.choices)}).")
    return [rest[0], *tokens_from_yaml(path, sub.choices[rest[0]]), *rest[1:]]


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
    field) or as given: what config.yaml holds, keys as the flags are spelt (a switch as
    `name: true` where it is set; KEY=VALUE flags as a mapping). Places and run control left
    out (NOT_RERUN)."""
    out = {}
    for dest, action in _options(parser).items():
        if dest != action.dest or dest in NOT_RERUN:
            continue  # each option once, by its dest
        value = resolved.get(dest, given.get(dest))
        if action.nargs == 0:
            if value == action.const:
                out[flag_name(action)] = True
            continue
        if isinstance(value, list) and value and all(
                isinstance(v, tuple) and len(v) == 2 for v in value):
            value = dict(value)  # KEY=VALUE flags as given: pairs
        if value is not None and value != [] and value != {}:
            out[flag_name(action)] = plain(value)
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
