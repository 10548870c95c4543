"""``openalign eval all --model DIR --suite FILE``: several evaluations, one report."""

from __future__ import annotations

import argparse

from openalign.cli.eval_common import SuiteRun, context_from_args, load_model, register_eval


def register(subparsers: argparse._SubParsersAction) -> None:
    register_eval(subparsers, "all", _add_flags, _run, run_cls=SuiteRun,
                  help="run a suite of evaluations and write one report",
                  description="Run every evaluation listed in a JSON/YAML suite file (see docs/eval.md).")


def _add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", required=True, help="JSON or YAML list of evaluations")


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from openalign.cli._config_args import config_from_args
    from openalign.evals.suite import HEADLINE, load_suite, run_suite

    run = config_from_args(SuiteRun, args)
    suite = load_suite(args.suite)  # validate everything before loading the model
    bundle = load_model(run)
    results = run_suite(bundle, suite, run.out, context_from_args(args), model=run.model)
    for r in results:
        key = HEADLINE.get(r.kind, next(iter(r.metrics)))
        print(f"{r.name:<24} {r.kind:<13} {key:<12} {r.metrics[key]:6.2f}")
    print(f"wrote {Path(run.out) / 'report.md'} and report.json")
    return 0
