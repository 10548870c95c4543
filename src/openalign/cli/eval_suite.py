"""``openalign eval all --model DIR --suite FILE``: several evaluations, one report."""

from __future__ import annotations

import argparse

from openalign.cli.eval_common import add_common_args, context_from_args, load_model


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("all", help="run a suite of evaluations and write one report",
                              description="Run every evaluation listed in a JSON/YAML suite file (see docs/eval.md).")
    add_common_args(p, default_out="eval_report")
    p.add_argument("--suite", required=True, help="JSON or YAML list of evaluations")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from openalign.evals.suite import HEADLINE, load_suite, run_suite

    suite = load_suite(args.suite)  # validate everything before loading the model
    bundle = load_model(args)
    results = run_suite(bundle, suite, args.out, context_from_args(args), model=args.model)
    for r in results:
        key = HEADLINE.get(r.kind, next(iter(r.metrics)))
        print(f"{r.name:<24} {r.kind:<13} {key:<12} {r.metrics[key]:6.2f}")
    print(f"wrote {Path(args.out) / 'report.md'} and report.json")
    return 0
