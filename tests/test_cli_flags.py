"""Every ``openalign`` subcommand's flags come from config dataclasses: unset flags mean the dataclass
defaults, every field has a flag (or a reason it has none), values arrive typed, bad values fail clearly."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import subprocess
import sys
import typing
from dataclasses import dataclass, field
from typing import Any

import pytest

from openalign.cli._config_args import BINDINGS, LazyParser, add_config_flags, config_from_args
from openalign.cli.main import build_parser


def _leaves(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield words, parser
        return
    for name, sub in subs[0].choices.items():
        yield from _leaves(sub, (*words, name))


COMMANDS = [" ".join(words) for words, _ in _leaves(build_parser())]


def _command(name: str) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """(the whole ``openalign`` parser, the subcommand's parser with its flags added)."""
    top = build_parser()
    sub = {" ".join(w): p for w, p in _leaves(top)}[name]
    return top, sub.populate() if isinstance(sub, LazyParser) else sub


def _sample(action: argparse.Action) -> str:
    if action.choices:
        return str(next(iter(action.choices)))
    return "1" if getattr(action.type, "tp", None) in (int, float) else "x"


def _minimal_argv(parser: argparse.ArgumentParser) -> tuple[list[str], set[str]]:
    """The arguments a subcommand requires, with sample values; and the namespace names they set."""
    argv: list[str] = []
    given: set[str] = set()
    chosen = [g._group_actions[0] for g in parser._mutually_exclusive_groups if g.required]
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction) or not (a.required or a in chosen or not a.option_strings):
            continue
        argv += [_sample(a)] if not a.option_strings else [a.option_strings[0], _sample(a)]
        given.add(a.dest)
    return argv, given


def _defaults(cls: type) -> dict[str, Any]:
    """Field -> default, read straight off the dataclass (fields without a default left out)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _leaf_paths(cls: type, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield prefix + f.name  # a nested config: skipped whole, or its fields flagged one by one
            yield from _leaf_paths(hints[f.name], prefix + f.name + ".")
        else:
            yield prefix + f.name


def test_every_subcommand_is_walked() -> None:
    assert {"train", "demo", "search", "serve", "data synth", "data extract", "data filter", "data download",
            "data dedup", "data build", "tokenizer train", "eval retrieval", "eval zeroshot", "eval linear-probe",
            "eval knn", "eval all", "index build", "index add"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_unset_flags_mean_dataclass_defaults(command: str) -> None:
    top, sub = _command(command)
    argv, given = _minimal_argv(sub)
    args = top.parse_args([*command.split(), *argv])
    bindings = getattr(args, BINDINGS, ())
    assert bindings, f"{command}: no flags generated from a config dataclass"
    for b in bindings:
        cfg = config_from_args(b.cls, args, prefix=b.prefix)
        assert isinstance(cfg, b.cls)
        for name, default in _defaults(b.cls).items():
            if b.dests.get(name) in given:
                continue  # a required-group flag the minimal command line sets
            assert getattr(cfg, name) == default, f"{command}: {b.cls.__name__}.{name} differs from its default"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_field_has_a_flag_and_no_flag_has_its_own_default(command: str) -> None:
    top, sub = _command(command)
    args = top.parse_args([*command.split(), *_minimal_argv(sub)[0]])
    dests = {a.dest: a for a in sub._actions}
    for b in getattr(args, BINDINGS):
        for path in _leaf_paths(b.cls):
            if path in b.skipped or any(path.startswith(s + ".") for s in b.skipped):
                assert b.skipped.get(path, "x").strip(), f"{command}: {b.cls.__name__}.{path} skipped without a reason"
            elif path in b.dests:
                assert b.dests[path] in dests, f"{command}: {b.cls.__name__}.{path} has no flag in the parser"
            else:
                assert any(p.startswith(path + ".") for p in b.dests), f"{command}: {b.cls.__name__}.{path} has no flag"
    for a in sub._actions:  # defaults live only in the dataclasses
        if not isinstance(a, argparse._HelpAction):
            assert a.default in (None, argparse.SUPPRESS), f"{command} {a.option_strings or a.dest}: own default"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_works_and_lists_every_flag(command: str, capsys) -> None:
    top, sub = _command(command)
    with pytest.raises(SystemExit) as exit_:
        top.parse_args([*command.split(), "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith(f"usage: openalign {command}")
    for a in sub._actions:
        assert all(s in out for s in a.option_strings), f"{command}: {a.option_strings} not in --help"


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def test_typed_overrides_arrive_typed() -> None:
    from openalign.apps.demo import DemoConfig
    from openalign.corpus.build import BuildConfig
    from openalign.corpus.filter import FilterOptions, TextFilterConfig
    from openalign.evals.base import EvalContext
    from openalign.evals.classification import LinearProbeConfig
    from openalign.search.build import SourceOptions
    from openalign.search.index import IndexParams
    from openalign.search.query import SearchOptions
    from openalign.train.config import TrainConfig

    t = config_from_args(TrainConfig, _parse(["train", "--batch-size", "7", "--lr", "3e-4", "--no-channels-last",
                                              "--grad-clip", "none", "--optimizer", "adamw"]))
    assert (t.batch_size, t.lr, t.channels_last, t.grad_clip, t.optimizer) == (7, 3e-4, False, None, "adamw")
    assert type(t.batch_size) is int and type(t.lr) is float
    assert dataclasses.replace(t, batch_size=16384, lr=1e-3, channels_last=True, optimizer="lamb") == TrainConfig()

    d = config_from_args(DemoConfig, _parse(["demo", "--steps", "5", "--train-lr", "0.01", "--num-train", "50"]))
    assert (d.num_train, d.train.steps, d.train.lr) == (50, 5, 0.01)
    demo_train = DemoConfig().train
    assert dataclasses.replace(d.train, steps=demo_train.steps, lr=demo_train.lr) == demo_train  # the rest: as is

    a = _parse(["eval", "linear-probe", "--model", "m", "--train", "a", "--test", "b", "--weight-decays", "1e-3,0.1",
                "--no-progress", "--workers", "0"])
    assert config_from_args(LinearProbeConfig, a).weight_decays == (0.001, 0.1)
    assert config_from_args(EvalContext, a) == EvalContext(workers=0, progress=False)

    s = config_from_args(SearchOptions, _parse(["search", "--index", "i", "--add", "blue", "--add", "a, b",
                                                "-k", "3", "--image-id", "4"]))
    assert (s.add, s.subtract, s.k, s.image_id) == (("blue", "a, b"), (), 3, 4)

    a = _parse(["data", "filter", "in.parquet", "--out", "o", "--threads-sql", "3", "--engine", "spark",
                "--min-unigrams", "5"])
    assert config_from_args(FilterOptions, a) == FilterOptions(engine="spark", threads=3)
    assert config_from_args(TextFilterConfig, a) == TextFilterConfig(min_unigrams=5)

    b = config_from_args(BuildConfig, _parse(["data", "build", "a", "b", "--out", "o", "--max-hamming", "2",
                                              "--image-root", "r", "--vocab-top-n", "1e3"]))
    assert (b.inputs, b.out_dir, b.eval_image_root, b.dedup.max_hamming, b.filter.vocab_top_n) == (
        ("a", "b"), "o", "r", 2, 1000)
    assert b.extract == BuildConfig(inputs=(), out_dir="").extract

    a = _parse(["index", "build", "--model", "m", "--out", "o", "--images", "d", "--no-captions",
                "--index-type", "hnsw", "--workers", "0"])
    assert config_from_args(SourceOptions, a) == SourceOptions(images="d", num_workers=0, index_captions=False)
    assert config_from_args(IndexParams, a) == IndexParams(index_type="hnsw")


def test_optional_field_can_be_set_to_none_explicitly() -> None:
    from openalign.evals.classification import ZeroShotConfig

    a = _parse(["eval", "zeroshot", "--model", "m", "--data", "d", "--templates", "none"])
    assert ZeroShotConfig(data="d").templates == "imagenet1k"
    assert config_from_args(ZeroShotConfig, a).templates is None  # "none" = the single prompt


@pytest.mark.parametrize("argv, message", [
    (["train", "--batch-size", "seven"], "argument --batch-size: 'seven' is not a valid int"),
    (["data", "synth", "--out", "o", "--noise-rate", "lots"], "argument --noise-rate: 'lots' is not a valid float"),
    (["eval", "linear-probe", "--model", "m", "--train", "a", "--test", "b", "--weight-decays", "1e-3,x"],
     "argument --weight-decays: 'x' is not a valid float"),
    (["index", "build", "--model", "m", "--out", "o", "--images", "d", "--index-type", "bogus"],
     "argument --index-type: invalid choice: 'bogus'"),
    (["tokenizer", "train", "--out", "o"], "one of the arguments --shards --parquet is required"),
    (["tokenizer", "train", "--out", "o", "--shards", "s", "--parquet", "p"], "not allowed with argument"),
    (["eval", "retrieval", "--model", "m", "--image-root", "r"],
     "the following arguments are required: --karpathy-json"),
])
def test_bad_value_is_a_clear_usage_error(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parse(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and err.startswith("usage: openalign")


def test_top_level_help_imports_no_library_module() -> None:
    code = ("import sys; from openalign.cli.main import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'torch', 'transformers', 'faiss', 'duckdb', 'fastapi', 'numpy'} or m.startswith('openalign.') and "
            "m.split('.')[1] in {'train', 'corpus', 'evals', 'search', 'models', 'apps', 'media'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("cls_path, func_path, renames", [
    ("openalign.corpus.synth:SynthConfig", "openalign.corpus.synth:generate_corpus", {}),
    ("openalign.search.server:ServeConfig", "openalign.search.server:serve", {}),
    ("openalign.search.build:SourceOptions", "openalign.search.build:build_index", {}),
    ("openalign.search.build:SourceOptions", "openalign.search.build:add_to_index", {}),
    ("openalign.corpus.filter:FilterOptions", "openalign.corpus.filter:filter_pairs", {}),
    ("openalign.models.tokenizer:TokenizerTrainConfig", "openalign.models.tokenizer:train_wordpiece",
     {"shards": None, "parquet": None, "text_column": None}),  # where the texts come from: not its keywords
])
def test_config_mirrors_the_function_it_feeds(cls_path: str, func_path: str, renames: dict) -> None:
    import importlib

    def load(path: str) -> Any:
        module, name = path.split(":")
        return getattr(importlib.import_module(module), name)

    cls, params = load(cls_path), inspect.signature(load(func_path)).parameters
    defaults = _defaults(cls)
    for f in dataclasses.fields(cls):
        name = renames.get(f.name, f.name)
        if name is None:
            continue
        assert name in params, f"{cls.__name__}.{f.name}: {func_path} takes no {name!r}"
        want = params[name].default
        assert defaults.get(f.name, inspect.Parameter.empty) == want, f"{cls.__name__}.{f.name} default != {want!r}"


# -- the generator on a toy config --------------------------------------------------------------------


@dataclass(frozen=True)
class Inner:
    size: int = 3


@dataclass(frozen=True)
class Toy:
    name: str = field(metadata={"positional": True})
    rate: float = field(default=0.5, metadata={"help": "how fast"})
    mode: str = field(default="a", metadata={"choices": ("a", "b")})
    tags: tuple[str, ...] = ()
    path: str | None = "here"
    fast: bool = True
    inner: Inner = field(default_factory=Inner, metadata={"prefix": "in-"})


def _toy(*argv: str, **kw: Any) -> tuple[argparse.ArgumentParser, Any]:
    p = argparse.ArgumentParser(prog="toy")
    add_config_flags(p, Toy, **kw)
    return p, config_from_args(Toy, p.parse_args(list(argv)))


def test_generator_round_trip() -> None:
    p, cfg = _toy("n")
    assert cfg == Toy(name="n")
    assert "how fast (default: 0.5)" in " ".join(p.format_help().split())
    _, cfg = _toy("n", "--rate", "2", "--mode", "b", "--tags", "x,y", "--path", "none", "--no-fast", "--in-size", "9")
    assert cfg == Toy(name="n", rate=2.0, mode="b", tags=("x", "y"), path=None, fast=False, inner=Inner(9))
    _, cfg = _toy("n", "--flag-rate", "1", meta={"rate": {"flag": "--flag-rate"}}, skip={"tags": "not used here"})
    assert cfg.rate == 1.0 and cfg.tags == ()


def test_generator_refuses_silent_mistakes() -> None:
    with pytest.raises(ValueError, match="say why"):
        _toy("n", skip={"tags": " "})
    with pytest.raises(ValueError, match="no field 'rat'"):
        _toy("n", meta={"rat": {"help": "typo"}})
    p = argparse.ArgumentParser()
    p.add_argument("--rate")
    with pytest.raises(ValueError, match="already taken"):
        add_config_flags(p, Toy)
