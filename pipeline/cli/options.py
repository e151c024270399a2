"""YAML option files (`--config`): keys are the flag names, values what the flags take.

Each key is turned into the flag it names and parsed by the command's own (strict) parser, so
a YAML value means exactly what the flag means: the same types, choices and checks. A value is
a scalar (text, a number, true/false, a date); a list of scalars is the flag repeated where the
flag repeats (`style: [a, b]`), or its items joined by commas where the flag takes a
comma-separated list (`extensions: [jpg, png]`, as `--extensions jpg,png`); anything else
(a mapping, nested lists, a list for a flag of one value) is refused.
"""

from __future__ import annotations

import argparse
import datetime
from typing import Any

import yaml

from pipeline.cli.flags import COMMA_LISTS
from pipeline.errors import ConfigError


def read_options(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:  # bytes: YAML reads UTF-8 (or UTF-16 with a BOM), whatever the locale
            options = yaml.safe_load(handle) or {}
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror}") from None
    except yaml.reader.ReaderError as exc:
        if exc.encoding == "unicode":  # decoded, but holding a control character
            raise ConfigError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        raise ConfigError(
            f"--config {path}: not UTF-8 (byte {exc.character:#04x} at offset {exc.position}); save it as UTF-8"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(options, dict):
        raise ConfigError(f"--config {path}: expected a mapping of option: value")
    return options


def _parsed(parser: argparse.ArgumentParser, tokens: list[str], where: str) -> tuple[dict[str, Any], list[str]]:
    """What `tokens` set, as {dest: value} of the values that differ from the parser's defaults,
    and the tokens the parser did not take."""
    try:
        namespace, extras = parser.parse_known_args(tokens, argparse.Namespace())
    except argparse.ArgumentError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None
    defaults = vars(parser.parse_known_args([], argparse.Namespace())[0])
    return {k: v for k, v in vars(namespace).items() if defaults.get(k) != v}, extras


def _scalar(value: Any) -> bool:
    """A YAML value a flag can take as text: a string, a number, a date (`true`/`false` are ints to Python)."""
    return isinstance(value, (str, int, float, datetime.date))


def _kind(value: Any) -> str:
    """What a YAML value is, in YAML's words, for a message."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return "null" if value is None else f"a {type(value).__name__}"


def check_value(value: Any, where: str) -> None:
    """A scalar, or a list of scalars, checked before anything is made text: `str` of nested lists
    would expand YAML's aliases (a few hundred bytes of them name billions of items)."""
    if isinstance(value, list):
        odd = [item for item in value if not _scalar(item)]  # isinstance only: nothing is expanded
        if odd:
            raise ConfigError(f"{where}: expected a value or a list of values, not a list holding {_kind(odd[0])}")
    elif not _scalar(value):
        raise ConfigError(f"{where}: expected a value, not {_kind(value)}")


def option_values(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The options in the YAML file at `path`, as {dest: value}, checked by `parser` (a strict
    parser of the command, from `flags.build_parsers(strict=True)`)."""
    values: dict[str, Any] = {}
    for key, value in read_options(path).items():
        flag, where = "--" + str(key).replace("_", "-"), f"--config {path}: {key}"
        if key == "config" or value is None or value == []:
            continue
        action = parser._option_string_actions.get(flag)  # argparse's table of its flags, names whole
        if action is None or action.dest == "help":
            raise ConfigError(f"--config {path}: unknown option '{key}'; options are the flag names, e.g. content_size")
        check_value(value, where)
        if isinstance(value, bool):
            tokens = [flag]
        elif isinstance(value, list) and action.dest in COMMA_LISTS:
            tokens = [flag, ",".join(str(item) for item in value)]
        elif isinstance(value, list):  # the flag repeated, if it repeats
            tokens = [token for item in value for token in (flag, str(item))]
        else:
            tokens = [flag, str(value)]
        try:
            given, extras = _parsed(parser, tokens, where)
        except ConfigError:
            if isinstance(value, bool):
                raise ConfigError(f"{where}: expected a value, not {value!r}") from None
            raise
        if extras:  # a flag that takes no value (true or false) was given one
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        if isinstance(value, list) and action.dest not in COMMA_LISTS and not isinstance(given.get(action.dest), list):
            raise ConfigError(f"{where}: takes one value, not a list")
        if isinstance(value, bool) and not value:
            given = {dest: False for dest in given}
        values.update(given)
    return values
