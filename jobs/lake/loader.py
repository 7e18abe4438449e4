"""The strict YAML loader every config section goes through: unknown keys rejected, types
checked against the dataclass fields, errors naming the file and the field.

Standard library and PyYAML only (the DAG files import it at parse time).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

# The top-level sections of a dataset config; each is owned by one stage's dataclass.
SECTIONS = ("dataset", "source", "ingest", "prepare", "model", "train", "evaluate",
            "recommend", "publish", "candidates", "mf", "ease", "sasrec", "als",
            "validate")

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file is missing, malformed, or has a bad value; the message says where."""


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of sections {SECTIONS}, got {loaded!r}")
    unknown = sorted(set(loaded) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; known: {list(SECTIONS)}")
    if not isinstance(loaded.get("dataset"), str) or not loaded["dataset"]:
        raise ConfigError(f"{path}: 'dataset' must be a non-empty name such as 'ml-100k'")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", loaded["dataset"]):
        raise ConfigError(f"{path}: 'dataset' {loaded['dataset']!r} must be letters, digits, "
                          "'-', '_' or '.' (it names lake folders and a DAG id)")
    return loaded


# A number with an exponent but no dot (1e-5, 2E3): YAML 1.2 and JSON read a float,
# PyYAML's YAML 1.1 resolver a string. Float fields take it as the number it reads as.
_EXPONENT_FLOAT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+")


def _coerce(value: Any, hint: Any, where: str) -> Any:  # noqa: PLR0911 (one return per type)
    """Check `value` against a dataclass field's type hint, converting lists to tuples."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is dict:
        if not isinstance(value, Mapping) or not value:
            raise ConfigError(f"{where}: expected a non-empty mapping, got {value!r}")
        key_hint, value_hint = typing.get_args(hint)
        return {_coerce(k, key_hint, where): _coerce(v, value_hint, f"{where}.{k}")
                for k, v in value.items()}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return build_section(hint, value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_hint, *_rest) = typing.get_args(hint)
        return tuple(_coerce(v, item_hint, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value):
            return float(value)  # YAML 1.2's 1e-5, a string to PyYAML's YAML 1.1 resolver
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {hint!r}")


def build_section(cls: type[T], mapping: Mapping[str, Any] | None, where: str) -> T:
    """Build the frozen dataclass `cls` from a YAML mapping; unknown keys are errors."""
    mapping = {} if mapping is None else mapping
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {mapping!r}")
    assert dataclasses.is_dataclass(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}")
              for name, value in mapping.items()}
    missing = [name for name, f in fields.items() if name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {missing}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc}") from exc


def check_field(condition: bool, field: str, message: str) -> None:
    """Raise ConfigError naming `field` unless `condition` (the sections' __post_init__)."""
    if not condition:
        raise ConfigError(f"{field}: {message}")


def load_sections(cls: type[T], path: str | Path, **fields: Any) -> T:
    """`cls` (DataConfig, NCFConfig) from the YAML at `path`: `dataset`, and each field whose
    type is a section dataclass built from the section of that name; `fields` fill the rest."""
    raw = read_yaml(path)
    hints = typing.get_type_hints(cls)
    sections = {field.name: build_section(hints[field.name], raw.get(field.name),
                                          f"{path}: {field.name}")
                for field in dataclasses.fields(cls)  # type: ignore[arg-type]
                if dataclasses.is_dataclass(hints[field.name])}
    return cls(dataset=raw["dataset"], **sections, **fields)  # type: ignore[call-arg]
