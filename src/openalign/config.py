"""Frozen dataclass configs: ``key=value`` overrides, resolved dumps, and loading back.

Configs are plain frozen dataclasses. Overrides are strings parsed by the field's annotated type,
so a CLI (or a sweep script) can say ``lr=3e-4 steps=200`` without a giant argument parser.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from openalign.io import atomic_write_text

C = TypeVar("C")


def _parse(value: str, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        if value.lower() in ("none", "null", "") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _parse(value, inner[0], name)
    if tp is bool:
        low = value.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"config field {name!r}: {value!r} is not a boolean (use true/false)")
    if tp in (int, float, str):
        try:
            return tp(float(value)) if tp is int and ("e" in value.lower() or "." in value) else tp(value)
        except ValueError:
            raise ValueError(f"config field {name!r}: {value!r} is not a valid {tp.__name__}") from None
    if origin in (tuple, list):
        items = [v for v in value.split(",") if v != ""]
        return origin(_parse(v, args[0] if args else str, name) for v in items)
    return value


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def apply_overrides(cfg: C, overrides: dict[str, Any] | list[str]) -> C:
    """Return a copy of ``cfg`` with overrides applied.

    ``overrides`` is a dict (values already typed, or strings to parse) or a list of ``key=value``.
    Unknown keys raise with the list of known fields.
    """
    if isinstance(overrides, list):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} is not key=value")
            k, v = item.split("=", 1)
            pairs[k.strip().replace("-", "_")] = v.strip()
        overrides = pairs
    types = field_types(type(cfg))
    changes = {}
    for key, value in overrides.items():
        if key not in types:
            raise ValueError(
                f"unknown config field {key!r} for {type(cfg).__name__}; known: {', '.join(sorted(types))}"
            )
        changes[key] = _parse(value, types[key], key) if isinstance(value, str) and types[key] is not str else value
    return dataclasses.replace(cfg, **changes)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
    types = field_types(cls)
    kwargs = {}
    for k, v in data.items():
        if k not in types:
            continue  # tolerate fields from newer versions
        if isinstance(v, list) and typing.get_origin(types[k]) is tuple:
            v = tuple(v)
        kwargs[k] = v
    return cls(**kwargs)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON via a temp file and rename, so readers never see half a file."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
