"""``openalign eval retrieval``: I2T / T2I R@1/5/10 on a Karpathy-split JSON."""

from __future__ import annotations

import argparse

from openalign.cli.eval_common import register_eval, run_and_report

META = {
    "karpathy_json": {"help": "Karpathy-split JSON (dataset_flickr30k.json, ...)"},
    "image_root": {"help": "folder the JSON's filepath/filename are relative to"},
    "split": {"help": "split to evaluate"},
    "name": {"help": "result name: <out>/<name>.json"},
}


def register(subparsers: argparse._SubParsersAction) -> None:
    register_eval(subparsers, "retrieval", _add_flags, _run, help="image-text retrieval R@K on a Karpathy-split JSON",
                  description="Zero-shot image<->text retrieval (Flickr30K / MSCOCO Karpathy splits).")


def _add_flags(p: argparse.ArgumentParser) -> None:
    from openalign.cli._config_args import add_config_flags
    from openalign.evals.retrieval import RetrievalConfig  # here, not at the top: see LazyParser

    add_config_flags(p, RetrievalConfig, meta=META, title="retrieval")


def _run(args: argparse.Namespace) -> int:
    from openalign.cli._config_args import config_from_args
    from openalign.evals.retrieval import RetrievalConfig

    return run_and_report(args, "retrieval", config_from_args(RetrievalConfig, args))
