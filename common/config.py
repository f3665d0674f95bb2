"""One typed config per job: dataclasses, a TOML file, and CLI flags mapped onto both.

Every field of a job's config dataclass becomes a `--flag` whose help is the field's
`help` metadata, so `--help` documents every option and nothing is configured twice.
Precedence: dataclass default < TOML file < command-line flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def option(default: Any, help: str, **kwargs: Any) -> Any:  # noqa: A002 - argparse's word
    """A dataclass field with the help text its CLI flag shows."""
    if isinstance(default, list | dict | set):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs}
        )
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def section(cls: type) -> Any:
    """A nested config section (its own TOML table; its fields are flattened into flags)."""
    return dataclasses.field(default_factory=cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parser_for(tp: Any) -> typing.Callable[[str], Any]:
    tp, optional = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if origin is tuple:
        item = typing.get_args(tp)[0]
        return lambda s: tuple(item(x) for x in s.split(","))
    if origin is list:
        item = typing.get_args(tp)[0]
        return lambda s: [item(x) for x in s.split(",") if x]
    if optional:
        return lambda s: None if s.lower() in ("", "none") else tp(s)
    return tp


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _leaf_fields(cls: type) -> list[tuple[tuple[str, ...], dataclasses.Field, Any]]:
    """(path, field, type) for every non-section field, sections flattened."""
    hints = typing.get_type_hints(cls)
    leaves = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            leaves += [((f.name, *path), sub, t) for path, sub, t in _leaf_fields(tp)]
        else:
            leaves.append(((f.name,), f, tp))
    return leaves


def add_config_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add a --flag for every config field (except `skip`, e.g. positional URIs)."""
    parser.add_argument("--config", type=Path, help="TOML file with settings; flags override it")
    seen: set[str] = set()
    for path, f, tp in _leaf_fields(cls):
        name = path[-1]
        if name in skip:
            continue
        if name in seen:
            raise ValueError(f"config field {name!r} appears in two sections")
        seen.add(name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', '')} (default: {default!r})"
        base, _ = _unwrap_optional(tp)
        if base is bool:
            parser.add_argument(
                _flag(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            choices = f.metadata.get("choices")
            parser.add_argument(
                _flag(name),
                dest=name,
                type=_parser_for(tp),
                choices=choices,
                default=argparse.SUPPRESS,
                metavar=name.upper(),
                help=help_text,
            )


def add_config_command(
    commands: argparse._SubParsersAction,
    name: str,
    cls: type,
    positionals: dict[str, str],
    help: str,  # noqa: A002 - argparse's word
    description: str,
) -> argparse.ArgumentParser:
    """A subcommand whose positionals ({field: help}, e.g. the URIs) and --flags all map
    onto fields of one config dataclass."""
    command = commands.add_parser(name, help=help, description=description)
    for field, text in positionals.items():
        command.add_argument(field, metavar=field.upper(), help=text)
    add_config_args(command, cls, skip=tuple(positionals))
    return command


def _build(cls: type[T], values: dict[str, Any], overrides: dict[str, Any]) -> T:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown setting(s) for {cls.__name__}: {', '.join(sorted(unknown))}")
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, values.get(f.name, {}), overrides)
        elif f.name in overrides:
            kwargs[f.name] = overrides[f.name]
        elif f.name in values:
            value = values[f.name]
            kwargs[f.name] = (
                tuple(value) if typing.get_origin(_unwrap_optional(tp)[0]) is tuple else value
            )
    return cls(**kwargs)


def load_config(cls: type[T], file: Path | None = None, **overrides: Any) -> T:
    """Build `cls` from defaults, then the TOML `file`, then `overrides` (flat field names)."""
    values = tomllib.loads(file.read_text()) if file else {}
    return _build(cls, values, overrides)


def config_from_args(cls: type[T], args: argparse.Namespace, **extra: Any) -> T:
    """Build `cls` from parsed flags (only the flags the user gave override the file)."""
    given = {k: v for k, v in vars(args).items() if k not in ("config", "command", "func")}
    return load_config(cls, getattr(args, "config", None), **given, **extra)


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain data, for manifests and reports."""
    return dataclasses.asdict(config)
