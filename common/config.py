"""One typed config per job: dataclasses, a TOML file, and CLI flags mapped onto both.

Every field of a job's config dataclass is declared once with `option()`: its default,
its help, and what a valid value is (`min`, `max`, `above`, `choices`, `unit`). The same
declaration checks a TOML file, the command-line flags (common/flags.py) and a config
built in Python, so a bad value stops the job with one line naming the field before any
work starts. Rules between fields live in a `validate()` method on the config (or on any
of its sections), called after every field passed its own checks.
Precedence: dataclass default < TOML file < command-line flag.

Standard library only: the Lambda image ships this module.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
Leaf = tuple[tuple[str, ...], dataclasses.Field, Any]

BYTES = "bytes"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKMGT]?i?B?)\s*$")
_SIZE_FACTORS = {"": 1, "B": 1}
for _i, _p in enumerate("KMGT", start=1):
    _SIZE_FACTORS.update({f"{_p}iB": 1024**_i, f"{_p}i": 1024**_i, f"{_p}B": 1000**_i})
    _SIZE_FACTORS.update({f"{_p.lower()}B": 1000**_i, _p: 1024**_i})


class ConfigError(ValueError):
    """A bad setting; `field` is its dotted TOML path (e.g. 'normalize.max_side')."""

    def __init__(self, field: str, problem: str, has_flag: bool = True) -> None:
        self.field, self.problem = field, problem
        flag = f" (--{field.rsplit('.', 1)[-1].replace('_', '-')})" if has_flag else ""
        super().__init__(f"{field}{flag}: {problem}" if field else problem)


def option(
    default: Any,
    help: str,  # noqa: A002 - argparse's word
    *,
    min: float | None = None,  # noqa: A002 - the natural word
    max: float | None = None,  # noqa: A002
    above: float | None = None,
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
    unit: str | None = None,
    **kwargs: Any,
) -> Any:
    """A config field: its default, its help, and what a valid value is.

    `min`/`max` bound it inclusively and `above` exclusively (each item of a list or
    tuple); `choices` lists the allowed strings (or a function returning them, for
    registries filled at import time); `unit` is shown in --help ('px', 'bytes': byte
    sizes are shown readably and also accept '64MiB', '5MB' in flags and TOML)."""
    meta = {"help": help, "min": min, "max": max, "above": above, "choices": choices}
    meta |= {"unit": unit, **kwargs}
    if isinstance(default, list | dict | set):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type) -> Any:
    """A nested config section (its own TOML table; its fields are flattened into flags)."""
    return dataclasses.field(default_factory=cls)


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None`, else (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def leaf_fields(cls: type) -> list[Leaf]:
    """(path, field, type) for every non-section field, sections flattened."""
    hints = typing.get_type_hints(cls)
    leaves = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            leaves += [((f.name, *path), sub, t) for path, sub, t in leaf_fields(tp)]
        else:
            leaves.append(((f.name,), f, tp))
    return leaves


_leaf_fields = leaf_fields  # the older private name, still used by tests


def default_of(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def choices_of(f: dataclasses.Field) -> list[str] | None:
    choices = f.metadata.get("choices")
    if callable(choices):
        choices = choices()
    return list(choices) if choices is not None else None


# --- One value: parse, type-check and bound it -------------------------------------------


def parse_size(text: str) -> int:
    """'64MiB', '5 MB', '1.5GiB', '4096' -> bytes (binary units for K/M/G alone)."""
    match = _SIZE.match(text)
    if not match or match.group(2) not in _SIZE_FACTORS:
        raise ValueError(f"expected a size such as 4096, 64MiB or 5MB, got {text!r}")
    return int(float(match.group(1)) * _SIZE_FACTORS[match.group(2)])


def format_size(n: int) -> str:
    """Bytes as the shortest exact unit: 100 MiB, 5 MB, 1234 bytes."""
    for factor, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n and n % factor == 0:
            return f"{n // factor} {name}"
    for factor, name in ((10**9, "GB"), (10**6, "MB"), (10**3, "kB")):
        if n and n % factor == 0:
            return f"{n // factor} {name}"
    return f"{n} bytes"


def _scalar(value: Any, tp: Any, unit: str | None) -> Any:
    """`value` (typed, from TOML or Python; or text, from a flag) as `tp`."""
    text = isinstance(value, str)
    if tp is bool:
        if text and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if text:
            return parse_size(value) if unit == BYTES else _int_text(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        return value
    if tp is float:
        try:
            out = float(value) if text else None
        except ValueError:
            out = None
        if not text and isinstance(value, int | float) and not isinstance(value, bool):
            out = float(value)
        if out is None or math.isnan(out):
            raise ValueError(f"expected a number, got {value!r}")
        return out
    if tp is str:
        if not text:
            raise ValueError(f"expected text, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r}")


def _int_text(text: str) -> int:
    try:
        return int(text.replace("_", ""))
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None


def coerce(value: Any, tp: Any, f: dataclasses.Field) -> Any:
    """`value` as the field's type, then checked against its bounds and choices."""
    base, optional = unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("", "none")):
        if not optional:
            raise ValueError("a value is required")
        return None
    unit = f.metadata.get("unit")
    origin = typing.get_origin(base)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(base) if a is not Ellipsis]
        if isinstance(value, str):
            value = [x.strip() for x in value.split(",") if x.strip()]
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected a list, got {value!r}")
        fixed = origin is tuple and Ellipsis not in typing.get_args(base) and len(args) > 1
        if fixed and len(value) != len(args):
            raise ValueError(f"expected {len(args)} values, got {len(value)}")
        items = [_scalar(v, args[i] if fixed else args[0], unit) for i, v in enumerate(value)]
        for item in items:
            _check_bounds(item, f)
        return tuple(items) if origin is tuple else items
    out = _scalar(value, base, unit)
    _check_bounds(out, f)
    return out


def _check_bounds(value: Any, f: dataclasses.Field) -> None:
    meta = f.metadata
    choices = choices_of(f)
    if choices is not None and value not in choices:
        raise ValueError(f"{value!r} is not one of: {', '.join(choices)}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if meta.get("min") is not None and value < meta["min"]:
        raise ValueError(f"must be at least {meta['min']:g}, got {value:g}")
    if meta.get("max") is not None and value > meta["max"]:
        raise ValueError(f"must be at most {meta['max']:g}, got {value:g}")
    if meta.get("above") is not None and value <= meta["above"]:
        raise ValueError(f"must be greater than {meta['above']:g}, got {value:g}")


# --- A whole config: build, validate, load ------------------------------------------------


def _build(cls: type[T], values: Any, overrides: dict[str, Any], prefix: str = "") -> T:
    if not isinstance(values, dict):
        where = prefix.rstrip(".") or cls.__name__
        raise ConfigError(where, "expected a [table] of settings", has_flag=False)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(prefix + unknown[0], "unknown setting", has_flag=False)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp, path = hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, values.get(f.name, {}), overrides, path + ".")
            continue
        if f.name in overrides:
            value = overrides[f.name]
        elif f.name in values:
            value = values[f.name]
        else:
            continue
        try:
            kwargs[f.name] = coerce(value, tp, f)
        except ValueError as exc:
            raise ConfigError(path, str(exc)) from None
    return cls(**kwargs)


def _sections(config: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, object) of every section, innermost first, then `config` itself."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            yield from _sections(value, f"{prefix}{f.name}.")
    yield prefix.rstrip("."), config


def validate(config: T) -> T:
    """Check every field of `config` (type, bounds, choices), then each section's own
    `validate()` rules between fields; raises ConfigError naming the first bad field."""
    for path, f, tp in leaf_fields(type(config)):
        owner = config
        for name in path[:-1]:
            owner = getattr(owner, name)
        try:
            coerce(getattr(owner, path[-1]), tp, f)
        except ValueError as exc:
            raise ConfigError(".".join(path), str(exc)) from None
    for path, section_config in _sections(config):
        hook = getattr(section_config, "validate", None)
        if callable(hook):
            try:
                hook()
            except ConfigError as exc:
                if path and not exc.field.startswith(path + "."):
                    raise ConfigError(f"{path}.{exc.field}", exc.problem) from None
                raise
            except ValueError as exc:  # a rule that did not say which field
                raise ConfigError(path, str(exc)) from None
    return config


def load_config(cls: type[T], file: Path | None = None, **overrides: Any) -> T:
    """Build `cls` from defaults, then the TOML `file`, then `overrides` (flat field
    names), and validate it; raises ConfigError (a ValueError) or OSError."""
    values: dict[str, Any] = {}
    if file:
        try:
            values = tomllib.loads(Path(file).read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(file), f"not valid TOML: {exc}", has_flag=False) from None
    unknown = sorted(set(overrides) - {path[-1] for path, _, _ in leaf_fields(cls)})
    if unknown:
        raise ConfigError(unknown[0], f"unknown setting for {cls.__name__}")
    return validate(_build(cls, values, overrides))


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain data, for manifests and reports."""
    return dataclasses.asdict(config)


# --- The effective settings as TOML (`--print-config`) ------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_lines(config: Any, table: str) -> list[str]:
    lines, tables = [], []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            tables.append((f"{table}.{f.name}" if table else f.name, value))
        elif value is None:
            lines.append(f"# {f.name} = (not set)")
        else:
            note = ""
            if f.metadata.get("unit") == BYTES and isinstance(value, int):
                note = f"  # {format_size(value)}"
            lines.append(f"{f.name} = {_toml_value(value)}{note}")
    out = ([f"[{table}]"] if table else []) + lines
    for name, sub in tables:
        out += ["", *_toml_lines(sub, name)]
    return out


def to_toml(config: Any) -> str:
    """`config` as a TOML file that `load_config` reads back to the same settings."""
    return "\n".join(_toml_lines(config, "")).lstrip("\n") + "\n"


def __getattr__(name: str) -> Any:
    """The flag mapping lives in common/flags.py (argparse; not shipped to Lambda); its
    names stay importable from here."""
    if name in ("add_config_args", "add_config_command", "config_from_args"):
        from common import flags

        return getattr(flags, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
