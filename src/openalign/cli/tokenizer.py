"""``openalign tokenizer train``: a WordPiece vocabulary from the training alt-texts."""

from __future__ import annotations

import argparse

from openalign.cli._config_args import defer


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a WordPiece tokenizer on alt-texts (shards or Parquet)")
    defer(p, _add_flags)
    p.set_defaults(func=run)


def _add_flags(p: argparse.ArgumentParser) -> None:
    from openalign.cli._config_args import add_config_flags
    from openalign.models.tokenizer import TokenizerTrainConfig  # here, not at the top: see LazyParser

    p.add_argument("--out", required=True, help="output directory (loads with transformers.AutoTokenizer)")
    add_config_flags(p, TokenizerTrainConfig)


def run(args: argparse.Namespace) -> int:
    from collections import Counter

    from tqdm import tqdm

    from openalign.cli._config_args import config_from_args
    from openalign.errors import UserError
    from openalign.media.texts import iter_parquet_texts, iter_shard_texts
    from openalign.models.tokenizer import TokenizerTrainConfig, train_wordpiece

    cfg = config_from_args(TokenizerTrainConfig, args)
    if cfg.vocab_size < 10:
        raise UserError(f"--vocab-size {cfg.vocab_size}: too small; use at least a few hundred (paper: 100000)")
    counts: Counter = Counter()

    def source(counter: Counter):
        if cfg.shards:
            return iter_shard_texts(cfg.shards, counter)
        return iter_parquet_texts(cfg.parquet, cfg.text_column)

    if next(iter(source(Counter())), None) is None:  # fail before writing anything when there is nothing to learn from
        raise UserError(f"{cfg.shards or cfg.parquet}: no alt-texts found; shards need KEY.txt captions, "
                        "tables a non-empty text column")
    seen = [0]
    passes = iter(["alt-texts (characters)", "alt-texts (training)"])

    def counted():
        # train_wordpiece reads the texts twice (its first pass pins the "##" pieces): count the last pass
        desc = next(passes, "alt-texts")
        counts.clear()
        seen[0] = 0
        for t in tqdm(source(counts), desc=desc, unit=" texts", mininterval=1.0):
            seen[0] += 1
            yield t

    tok = train_wordpiece(counted, args.out, vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                          lowercase=cfg.lowercase, max_length=cfg.max_length)
    skipped = counts.get("missing_or_empty_caption", 0) + counts.get("broken_shard_errors", 0)
    print(f"tokenizer: {len(tok)} tokens from {seen[0]} alt-texts ({skipped} skipped) -> {args.out}")
    return 0
