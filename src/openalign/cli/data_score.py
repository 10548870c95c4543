"""``openalign data score``: each pair's image-text cosine under a trained model, optionally filtered on it."""

from __future__ import annotations

import argparse

from openalign.cli._config_args import defer


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("score", help="add each pair's image-text similarity to the shards; filter on it "
                                            "(--min-score, --keep-fraction); resumable")
    defer(p, _add_flags)
    p.set_defaults(func=run)


def _add_flags(p: argparse.ArgumentParser) -> None:
    # here, not at the top: see LazyParser
    from openalign.cli._config_args import add_config_flags
    from openalign.corpus.score import ScoreConfig

    p.add_argument("shards", help="shard folder or pattern (shards/{00000..00009}.tar)")
    p.add_argument("--out", required=True, help="folder for scores/ parts, the output (NAME.tar or scores.parquet), "
                                                "score_manifest.json and score_stats.json; rerun to resume")
    add_config_flags(p, ScoreConfig, title="score filtering")


def run(args: argparse.Namespace) -> int:
    from openalign.cli._config_args import config_from_args
    from openalign.corpus.score import ScoreConfig, format_stats, score_shards

    stats = score_shards(args.shards, args.out, config_from_args(ScoreConfig, args))
    print(format_stats(stats))
    return 0
