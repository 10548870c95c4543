"""Turn a frozen config dataclass into argparse flags (``--field-name``) and back: no giant parser."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from openalign.config import apply_overrides, field_types


def add_config_flags(parser: argparse.ArgumentParser, cls: type, help_prefix: str = "") -> None:
    defaults = cls()
    for name, tp in field_types(cls).items():
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{help_prefix}(default: {default})")
        else:
            parser.add_argument(flag, type=str, default=None, metavar=_metavar(tp), help=f"{help_prefix}(default: {default})")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides")


def _metavar(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if args else tp
    return getattr(base, "__name__", "X").upper()


def config_from_args(cls: type, args: argparse.Namespace, base: Any = None) -> Any:
    cfg = base if base is not None else cls()
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    cfg = apply_overrides(cfg, overrides)
    return apply_overrides(cfg, list(args.set or []))
