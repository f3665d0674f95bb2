"""Command-line flags mapped onto a job's typed config (common/config.py).

Every config field becomes a `--flag` in an argument group named after its section; the
flag parses and checks its value with the field's own declaration, so a bad flag and a
bad TOML value fail alike: exit status 2 and one line naming the field, before any work.
`--help` shows one line per option (its first words, unit, choices and default);
`--help-all` the full descriptions; `--print-config` the effective settings as TOML.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from common import logs
from common.config import (
    BYTES,
    ConfigError,
    choices_of,
    coerce,
    default_of,
    format_size,
    leaf_fields,
    load_config,
    to_toml,
    unwrap_optional,
)

T = TypeVar("T")
EXIT_BAD_CONFIG = 2
SHORT_HELP = 64  # characters of a description shown by --help
MAX_METAVAR = 30
# Namespace entries that are not config fields.
RESERVED = ("config", "command", "func", "print_config", "verbose", "help_all")


class ConfigParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (not the 70-option usage) and exit 2."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("argument --"):  # a flag's value: say so like a TOML one's
            message = "bad setting " + message.removeprefix("argument ")
        self.exit(EXIT_BAD_CONFIG, f"error: {message} (see {self.prog} --help)\n")


class OneLineFormatter(argparse.HelpFormatter):
    """One line per option: help texts are kept short, so they are never wrapped."""

    def __init__(self, prog: str) -> None:
        width = max(shutil.get_terminal_size().columns, 120)
        super().__init__(prog, max_help_position=54, width=width)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return [text]


class _HelpAll(argparse.Action):
    """--help-all: the full description of every option, wrapped."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        for action in parser._actions:
            action.help = getattr(action, "full_help", action.help)
        parser.formatter_class = argparse.HelpFormatter
        parser.print_help()
        parser.exit()


def _escaped(text: str) -> str:
    """argparse %-formats help texts: a literal percent sign must be doubled."""
    return text.replace("%", "%%")


def _summary(text: str) -> str:
    """The first words of a description: its first sentence without parentheses, at
    most SHORT_HELP characters, cut at a word."""
    text = re.sub(r"\s*\([^()]*\)", "", text)
    text = re.split(r"(?<!e\.g)(?<!i\.e)[.;] ", text, maxsplit=1)[0]
    if len(text) > SHORT_HELP:
        text = text[: SHORT_HELP - 1].rsplit(" ", 1)[0] + "…"
    return text


def _readable(value: Any, unit: str | None) -> str:
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "none"
    if unit == BYTES and isinstance(value, int):
        return format_size(value)
    if isinstance(value, int) and abs(value) >= 100_000:
        value = f"{value:,}"
    if not unit:
        return str(value)
    return f"{value}{unit}" if unit.startswith("°") else f"{value} {unit}"


def _bounds(f: dataclasses.Field) -> str:
    meta = f.metadata
    lo, hi, above = meta.get("min"), meta.get("max"), meta.get("above")
    if lo is not None and hi is not None:
        return f"{lo:g}..{hi:g}"
    if above is not None:
        return f"> {above:g}" + (f", <= {hi:g}" if hi is not None else "")
    if lo is not None:
        return f">= {lo:g}"
    return f"<= {hi:g}" if hi is not None else ""


def _metavar(f: dataclasses.Field, tp: Any) -> str:
    choices = choices_of(f)
    base, _ = unwrap_optional(tp)
    origin = typing.get_origin(base)
    if choices is not None:
        shown = "{" + ",".join(choices) + "}" + (",..." if origin is list else "")
        # A long list of choices goes into the help line instead (one line per option).
        return shown if len(shown) <= MAX_METAVAR else ("NAME,..." if origin is list else "NAME")
    if origin in (list, tuple):
        return "A,B,..."
    unit = f.metadata.get("unit")
    if unit == BYTES:
        return "SIZE"
    return {int: "N", float: "X", str: "TEXT"}.get(base, "VALUE")


def _flag_type(f: dataclasses.Field, tp: Any, path: str) -> Any:
    def parse(text: str) -> Any:
        try:
            return coerce(text, tp, f)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = path  # argparse names the type in some messages
    return parse


def _group_title(path: tuple[str, ...], cls: type) -> tuple[str, str | None]:
    if len(path) == 1:
        return "job", None
    owner: Any = cls
    for name in path[:-1]:
        owner = typing.get_type_hints(owner)[name]
    doc = (owner.__doc__ or "").strip().splitlines()
    # A dataclass without a docstring gets its signature as __doc__: not worth showing.
    describe = doc[0] if doc and not doc[0].startswith(owner.__name__ + "(") else None
    return ".".join(path[:-1]), describe


def add_config_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add a --flag for every config field (except `skip`, e.g. positional URIs), in one
    argument group per section, and --config / --print-config / --verbose / --help-all."""
    general = parser.add_argument_group("general")
    general.add_argument("--config", type=Path, help="TOML file with settings; flags override it")
    general.add_argument(
        "--print-config", action="store_true", help="print the effective settings as TOML, exit"
    )
    general.add_argument(
        "-v", "--verbose", action="store_true", help="show Ray's and libraries' INFO logs"
    )
    general.add_argument("--help-all", action=_HelpAll, help="show the full option descriptions")
    parser.formatter_class = OneLineFormatter
    groups: dict[str, argparse._ArgumentGroup] = {}
    seen: set[str] = set()
    for path, f, tp in leaf_fields(cls):
        name = path[-1]
        if name in skip:
            continue
        if name in seen:
            raise ValueError(f"config field {name!r} appears in two sections")
        seen.add(name)
        title, describe = _group_title(path, cls)
        if title not in groups:
            groups[title] = parser.add_argument_group(title, describe)
        group, unit = groups[title], f.metadata.get("unit")
        full = f.metadata.get("help", "")
        notes = [f"default {_readable(default_of(f), unit)}"]
        if choices_of(f) is not None and _metavar(f, tp).startswith("NAME"):
            notes.insert(0, "of " + ",".join(choices_of(f)))
        if _bounds(f):
            notes.append(_bounds(f))
        suffix = f"  [{'; '.join(notes)}]"
        base, _ = unwrap_optional(tp)
        if base is bool:
            action = group.add_argument(
                "--" + name.replace("_", "-"),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=_escaped(_summary(full) + suffix),
            )
        else:
            action = group.add_argument(
                "--" + name.replace("_", "-"),
                dest=name,
                type=_flag_type(f, tp, ".".join(path)),
                default=argparse.SUPPRESS,
                metavar=_metavar(f, tp),
                help=_escaped(_summary(full) + suffix),
            )
        action.full_help = _escaped(full + suffix)


def add_config_command(
    commands: argparse._SubParsersAction,
    name: str,
    cls: type,
    positionals: dict[str, str],
    help: str,  # noqa: A002 - argparse's word
    description: str,
    run: Callable[[Any], int] | None = None,
) -> argparse.ArgumentParser:
    """A subcommand whose positionals ({field: help}, e.g. the URIs) and --flags all map
    onto fields of one config dataclass. The positionals may also come from the TOML
    file; one missing from both is an error (except with --print-config). `run(config)`
    is what `run_command` calls with the validated config; it returns the exit status."""
    usage = "%(prog)s [options] " + " ".join(p.upper() for p in positionals)
    command = commands.add_parser(name, help=help, description=description, usage=usage)
    for field, text in positionals.items():
        command.add_argument(field, metavar=field.upper(), nargs="?", default=argparse.SUPPRESS)
        command._actions[-1].help = text
    add_config_args(command, cls, skip=tuple(positionals))
    command.set_defaults(_required=tuple(positionals), _config=cls, _run=run)
    return command


def config_from_args(cls: type[T], args: argparse.Namespace, **extra: Any) -> T:
    """Build and validate `cls` from parsed flags (only the flags given override the
    file); raises ConfigError (one line naming the field) or OSError."""
    given = {k: v for k, v in vars(args).items() if k not in RESERVED and not k.startswith("_")}
    cfg = load_config(cls, getattr(args, "config", None), **given, **extra)
    if not getattr(args, "print_config", False):
        for name in getattr(args, "_required", ()):
            if not getattr(cfg, name):
                raise ConfigError(name, "required (an argument or a top-level TOML key)")
    return cfg


def config_or_status(cls: type[T], args: argparse.Namespace, **extra: Any) -> T | int:
    """`config_from_args` with the CLI's handling: the config to run, or the exit status
    to return without running: 2 after a one-line error naming the bad setting, 0 after
    --print-config printed the effective settings as TOML."""
    try:
        cfg = config_from_args(cls, args, **extra)
    except ConfigError as exc:
        print(f"error: bad setting {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except OSError as exc:
        print(f"error: cannot read the config file: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if getattr(args, "print_config", False):
        print(to_toml(cfg), end="")
        return 0
    return cfg


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse `argv`, set up logging (--verbose), build and validate the command's config
    (exit 2 on a bad setting, before any work), then run it; returns the exit status."""
    args = parser.parse_args(argv)
    logs.configure(args.verbose)
    cfg = config_or_status(args._config, args)
    if isinstance(cfg, int):
        return cfg
    return args._run(cfg)


def reference_markdown(cls: type) -> str:
    """A Markdown table of every setting of `cls`, section by section (for the docs)."""
    rows = ["| TOML key | flag | default | valid values | description |", "|---|---|---|---|---|"]
    for path, f, _ in leaf_fields(cls):
        valid = ", ".join(choices_of(f) or []) or _bounds(f) or ""
        default = _readable(default_of(f), f.metadata.get("unit"))
        flag = "--" + path[-1].replace("_", "-")
        text = f.metadata.get("help", "").replace("|", "\\|")
        rows.append(f"| `{'.'.join(path)}` | `{flag}` | {default} | {valid} | {text} |")
    return "\n".join(rows) + "\n"
