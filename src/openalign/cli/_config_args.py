"""Argparse flags generated from frozen config dataclasses, and the dataclasses built back: no giant parser.

One ``--field-name`` flag per field, parsed by the field's annotated type with the parser that
``key=value`` overrides use (:func:`openalign.config._parse`); bools are ``--x/--no-x``. Defaults live
only in the dataclass: a flag left out is absent from the namespace, so the field keeps its
dataclass default and the CLI cannot drift from the library. Help shows that default.

A field's ``metadata`` says how its flag looks; the caller's ``meta`` (keyed by field path, e.g.
``"train.steps"``) adds to or overrides it:

    help        help text; "(default: X)" is appended unless the text already words the default
    choices     allowed values
    flag        option string(s) instead of ``--field-name``: "--threads-sql", ("--train-steps", "--steps")
    positional  a positional argument (a tuple field takes one or more values)
    repeat      a tuple field as a repeatable flag (``--add a --add b``) instead of ``a,b``
    one_of      name of a required mutually exclusive group: exactly one of its fields is given
    metavar     the value's name in help
    prefix      a nested dataclass field: prefix for its flags (nested fields are flattened)
    title       a nested dataclass field: title of its help section

A field without a default is required. ``skip`` leaves fields out, each with the reason why.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING
from typing import Any

from openalign.config import _parse, field_types

BINDINGS = "_config_bindings"  # namespace attribute: the Binding of every config flagged on the parser


@dataclasses.dataclass(frozen=True)
class Binding:
    """Where each flagged field of ``cls`` lands in the namespace (paths like ``"dedup.max_hamming"``)."""

    cls: type
    prefix: str
    dests: dict[str, str]  # field path -> namespace attribute
    skipped: dict[str, str]  # field path -> why it has no flag


class FieldType:
    """argparse ``type=``: a flag's text parsed by the field's annotation, errors named by the flag."""

    def __init__(self, tp: Any, name: str) -> None:
        self.tp, self.name = tp, name

    def __call__(self, text: str) -> Any:
        try:
            return _parse(text, self.tp, self.name)
        except ValueError as exc:  # argparse prefixes "argument --flag:", so drop the field name
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"config field {self.name!r}: ")) from None

    def __repr__(self) -> str:
        return f"FieldType({self.tp!r})"


def add_config_flags(parser: argparse.ArgumentParser, cls: type, *, prefix: str = "",
                     skip: Mapping[str, str] | None = None, meta: Mapping[str, Mapping[str, Any]] | None = None,
                     title: str | None = None) -> Binding:
    """Add one flag per field of dataclass ``cls`` (nested dataclass fields flattened) to ``parser``.

    ``prefix`` goes before every flag and namespace name ("train-" -> ``--train-lr``, ``train_lr``);
    ``skip`` maps field paths to the reason they get no flag; ``meta`` maps field paths to metadata
    that adds to or overrides the field's own; ``title`` puts the flags in a help section.
    """
    skip, meta = dict(skip or {}), dict(meta or {})
    paths = set(_field_paths(cls))
    for key in [*skip, *meta]:
        if key not in paths:
            raise ValueError(f"{cls.__name__} has no field {key!r}; fields: {', '.join(sorted(paths))}")
    for key, reason in skip.items():
        if not reason.strip():
            raise ValueError(f"{cls.__name__}.{key}: say why it has no flag")
    binding = Binding(cls, prefix, {}, skip)
    target = parser.add_argument_group(title) if title else parser
    _add_fields(parser, target, cls, _default_instance(cls), "", prefix, binding, meta, {})
    parser.set_defaults(**{BINDINGS: (*(parser.get_default(BINDINGS) or ()), binding)})
    return binding


def config_from_args(cls: type, args: argparse.Namespace, base: Any = None, *, prefix: str = "") -> Any:
    """The ``cls`` config the flags describe: ``base`` (else the dataclass defaults) with the given flags."""
    binding = find_binding(args, cls, prefix)
    values = {path: getattr(args, dest) for path, dest in binding.dests.items() if hasattr(args, dest)}
    return _build(cls, values, base)


def find_binding(args: argparse.Namespace, cls: type, prefix: str = "") -> Binding:
    for b in getattr(args, BINDINGS, ()):
        if b.cls is cls and b.prefix == prefix:
            return b
    # a namespace made by hand: plain top-level names
    return Binding(cls, prefix, {p: prefix.replace("-", "_") + p for p in _field_paths(cls) if "." not in p}, {})


class LazyParser(argparse.ArgumentParser):
    """A subcommand parser whose flags are added on first use (parsing or help).

    Generating flags needs the config dataclasses, and the library modules holding them import
    torch, transformers, faiss...: deferring keeps ``openalign --help`` (and each command) fast.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[Callable[[argparse.ArgumentParser], None]] = []

    def defer(self, add: Callable[[argparse.ArgumentParser], None]) -> None:
        self._pending.append(add)

    def populate(self) -> LazyParser:
        while self._pending:
            self._pending.pop(0)(self)
        return self

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self.populate()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self.populate()
        return super().format_help()

    def format_usage(self) -> str:
        self.populate()
        return super().format_usage()


def defer(parser: argparse.ArgumentParser, add: Callable[[argparse.ArgumentParser], None]) -> None:
    """Call ``add(parser)`` on first use when ``parser`` is a :class:`LazyParser`, else now."""
    if isinstance(parser, LazyParser):
        parser.defer(add)
    else:
        add(parser)


# -- generating --------------------------------------------------------------------------------------


def _add_fields(parser: argparse.ArgumentParser, target: Any, cls: type, defaults: Any, path: str, prefix: str,
                binding: Binding, meta: Mapping[str, Mapping[str, Any]], groups: dict[str, Any]) -> None:
    types = field_types(cls)
    for f in dataclasses.fields(cls):
        key = path + f.name
        if key in binding.skipped:
            continue
        m = {**f.metadata, **meta.get(key, {})}
        default = getattr(defaults, f.name) if defaults is not None else _field_default(f)
        tp = types[f.name]
        if dataclasses.is_dataclass(tp):  # nested config: its fields become flags of their own section
            sub = parser.add_argument_group(m.get("title", f"{f.name} ({tp.__name__})"))
            _add_fields(parser, sub, tp, None if default is MISSING else default, key + ".",
                        prefix + m.get("prefix", ""), binding, meta, groups)
            continue
        dest = (prefix + f.name).replace("-", "_")
        clash = [a for a in parser._actions if a.dest == dest]
        if clash:
            raise ValueError(f"{cls.__name__}.{f.name}: flag name {dest!r} already taken by {clash[0].option_strings}; "
                             "rename it (meta flag/prefix) or skip it")
        dest_target = target
        if m.get("one_of"):
            if m["one_of"] not in groups:
                groups[m["one_of"]] = target.add_mutually_exclusive_group(required=True)
            dest_target = groups[m["one_of"]]
        _add_flag(dest_target, f.name, dest, tp, default, m)
        binding.dests[key] = dest


def _add_flag(target: Any, name: str, dest: str, tp: Any, default: Any, m: Mapping[str, Any]) -> None:
    seq = typing.get_origin(tp) in (tuple, list)
    item = _item_type(tp) if seq else tp
    shown = MISSING if m.get("one_of") else default  # "exactly one of" needs no default in help
    kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": _help(m.get("help"), shown)}
    if m.get("choices") is not None:
        kw["choices"] = tuple(m["choices"])
    required = default is MISSING
    if m.get("positional"):
        nargs = ("+" if required else "*") if seq else (None if required else "?")
        target.add_argument(dest, nargs=nargs, type=FieldType(item, name), metavar=m.get("metavar", name), **kw)
        return
    flags = m.get("flag") or "--" + dest.replace("_", "-")
    flags = (flags,) if isinstance(flags, str) else tuple(flags)
    kw.update(dest=dest, required=required and not m.get("one_of"))
    if tp is bool:
        target.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
    elif m.get("repeat"):
        target.add_argument(*flags, action="append", type=FieldType(item, name),
                            metavar=m.get("metavar", _metavar(item)), **kw)
    else:
        metavar = m.get("metavar", None if "choices" in kw else _metavar(tp))
        target.add_argument(*flags, type=FieldType(tp, name), metavar=metavar, **kw)


def _help(text: str | None, default: Any) -> str | None:
    text = (text or "").replace("%", "%%")  # argparse %-formats help
    if default is MISSING or "default" in text.lower():  # required, or the text words the default itself
        return text or None
    shown = "(default: " + _show(default).replace("%", "%%") + ")"
    return f"{text} {shown}" if text else shown


def _show(value: Any) -> str:
    """A default as one would type it on the command line."""
    if value is None or value == ():
        return "none"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if value == "":
        return "''"
    return str(value)


def _metavar(tp: Any) -> str | None:
    if typing.get_origin(tp) in (tuple, list):
        return f"{_metavar(_item_type(tp)) or 'STR'},..."
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if args else tp
    return {int: "INT", float: "FLOAT"}.get(base)  # None: argparse names it after the flag


def _item_type(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    return args[0] if args else str


# -- building back -----------------------------------------------------------------------------------


def _build(cls: type, values: Mapping[str, Any], base: Any) -> Any:
    types = field_types(cls)
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = types[f.name]
        if dataclasses.is_dataclass(tp):
            sub = {k[len(f.name) + 1:]: v for k, v in values.items() if k.startswith(f.name + ".")}
            if sub:
                sub_base = getattr(base, f.name) if base is not None else _field_default(f)
                changes[f.name] = _build(tp, sub, None if sub_base is MISSING else sub_base)
        elif f.name in values:
            v = values[f.name]
            changes[f.name] = tuple(v) if isinstance(v, list) and typing.get_origin(tp) is tuple else v
    return dataclasses.replace(base, **changes) if base is not None else cls(**changes)


def _field_paths(cls: type, path: str = "") -> list[str]:
    out = []
    for name, tp in field_types(cls).items():
        out.append(path + name)
        if dataclasses.is_dataclass(tp):
            out.extend(_field_paths(tp, path + name + "."))
    return out


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _default_instance(cls: type) -> Any:
    """``cls()`` when every field has a default, else None (defaults then come field by field)."""
    if any(_field_default(f) is MISSING for f in dataclasses.fields(cls)):
        return None
    return cls()
