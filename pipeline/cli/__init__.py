"""The `adain` command: flags (and `--config` YAML files) parsed once into typed configs, then run.

    flags.py     every command's flags
    options.py   YAML option files, checked by the commands' own parsers
    commands.py  each command: typed configs from the flags, the run, what it prints
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext

from pipeline.cli.commands import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE
from pipeline.cli.console import native_logs_filtered
from pipeline.cli.flags import Parsers, build_parser, build_parsers, command_words
from pipeline.cli.options import option_values
from pipeline.errors import AdainError, ConfigError, one_line
from pipeline.storage.uri import utf8

__all__ = ["build_parser", "command", "main", "parse"]


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the flags; a --config file supplies defaults that the flags then override (a list
    flag given on the command line replaces the file's list)."""
    root, parsers = build_parsers()
    args = _parse_args(root, parsers, argv)
    if not getattr(args, "config", None):
        return args
    words = command_words(args)
    values = option_values(args.config, build_parsers(strict=True)[1][words])
    parsers[words].set_defaults(**values)
    merged = _parse_args(root, parsers, argv)
    for dest, value in vars(args).items():
        if isinstance(value, list) and dest in values:
            setattr(merged, dest, value)
    return merged


def _parse_args(root: argparse.ArgumentParser, parsers: Parsers, argv: Sequence[str] | None) -> argparse.Namespace:
    """`root.parse_args`, with flags no parser took refused by the command's own parser (its help
    names them), not by `adain`'s."""
    args, extras = root.parse_known_args(argv)
    if extras:
        parsers[command_words(args)].error(f"unrecognized arguments: {' '.join(extras)}")
    _valid_utf8(parsers[command_words(args)], args)
    return args


def _valid_utf8(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a value holding a byte that is not UTF-8 (which Python keeps as a surrogate): every storage
    layer would fail on it with a traceback, and no object store takes such a name."""
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and not utf8(text):
                name = next((flag for flag in action.option_strings if flag.startswith("--")), action.dest)
                shown = text.encode("utf-8", "backslashreplace").decode()
                raise ConfigError(f"{name}: {shown} is not valid UTF-8; paths must be valid UTF-8")


class _OneLineMessages(logging.Formatter):
    """Log messages as one line each (`one_line`: they name files); a traceback, in --verbose, as it is."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse(argv)
    except ConfigError as exc:
        print(one_line(f"adain: error: {exc}"), file=sys.stderr)
        return EXIT_USAGE
    handler = logging.StreamHandler()
    handler.setFormatter(_OneLineMessages("adain: %(message)s"))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    run: Callable[[argparse.Namespace], int] = args.run
    with nullcontext() if args.verbose else native_logs_filtered():
        try:
            return run(args)
        except AdainError as exc:
            print(one_line(f"adain: error: {exc}"), file=sys.stderr)
            # a value the configs refuse is the user's configuration, as a flag the parser refuses
            return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED
        except KeyboardInterrupt:
            print("adain: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED


def command(argv: Sequence[str] | None = None) -> int:
    """The `adain` command (and the jobs' entrypoints), as a process of its own: `main`, then a quick exit.

    Every object still alive is frozen out of the garbage collector before the interpreter exits:
    its last collections would walk the hundreds of thousands of objects torch, Ray and Arrow made,
    for about a second, to free memory the exit frees anyway. Everything the command wrote is
    closed by then, and Ray's shutdown (at exit) runs as before. Not in `main`, which tests call
    in-process.
    """
    status = main(argv)
    gc.freeze()
    return status
