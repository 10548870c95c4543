"""Flags and output shared by the ``openalign eval ...`` subcommands.

Every eval command takes :class:`EvalRun` (which model, on which device, where results go: the
command's own job) and the library's :class:`~openalign.evals.base.EvalContext` (how to run).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openalign.cli._config_args import defer


@dataclass(frozen=True)
class EvalRun:
    model: str = field(metadata={"help": "model directory (ours or the kakaobrain/align-base layout)"})
    out: str = field(default="eval_results", metadata={"help": "folder for <name>.json/.md/.png"})
    device: str = field(default="cpu", metadata={"help": "torch device, e.g. cuda"})
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast for the encoders"})


@dataclass(frozen=True)
class SuiteRun(EvalRun):
    out: str = field(default="eval_report", metadata={"help": "folder for report.md/report.json and each result"})


def register_eval(subparsers: argparse._SubParsersAction, name: str,
                  add_flags: Callable[[argparse.ArgumentParser], None], func: Callable[[argparse.Namespace], int],
                  run_cls: type = EvalRun, **parser_kw: Any) -> None:
    """One ``eval`` subcommand: the shared flags, then the command's own (added on first use: see LazyParser)."""
    p = subparsers.add_parser(name, **parser_kw)

    def add(p: argparse.ArgumentParser) -> None:
        from openalign.cli._config_args import add_config_flags
        from openalign.evals.base import EvalContext

        add_config_flags(p, run_cls)
        add_config_flags(p, EvalContext, title="how to run")
        add_flags(p)

    defer(p, add)
    p.set_defaults(func=func)


def context_from_args(args: argparse.Namespace):
    from openalign.cli._config_args import config_from_args
    from openalign.evals.base import EvalContext

    return config_from_args(EvalContext, args)


def load_model(run: EvalRun) -> Any:
    from openalign.errors import UserError
    from openalign.models.bundle import load_bundle

    path = Path(run.model)
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: no config.json; pass --model with a directory written by `openalign train` "
                        "or a downloaded kakaobrain/align-base folder")
    return load_bundle(path, device=run.device, bf16=run.bf16)


def run_and_report(args: argparse.Namespace, kind: str, config: Any) -> int:
    """Load the model, run one evaluation, print its table, write JSON + Markdown (+ PNG)."""
    from openalign.cli._config_args import config_from_args
    from openalign.evals.base import result_markdown, run_evaluation, write_result

    run = config_from_args(EvalRun, args)
    bundle = load_model(run)
    result = run_evaluation(bundle, kind, config, context_from_args(args))
    print(result_markdown(result, run.model))
    files = write_result(result, run.out, model=run.model)
    print("wrote " + ", ".join(str(f) for f in files.values()))
    return 0
