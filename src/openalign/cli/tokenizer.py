"""``openalign tokenizer train``: a WordPiece vocabulary from the training alt-texts."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a WordPiece tokenizer on alt-texts (shards or Parquet)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--shards", help="WebDataset shards, brace pattern (dir/{00000..00009}.tar); reads KEY.txt")
    src.add_argument("--parquet", help="Parquet table of alt-texts (our pairs table or cc2dataset output)")
    p.add_argument("--text-column", default=None,
                   help="text column of --parquet (default: text, else cc2dataset's alt)")
    p.add_argument("--out", required=True, help="output directory (loads with transformers.AutoTokenizer)")
    p.add_argument("--vocab-size", type=int, default=100_000, help="vocabulary size (paper: 100k)")
    p.add_argument("--min-frequency", type=int, default=2, help="minimum count of a merged token")
    p.add_argument("--max-length", type=int, default=64, help="model_max_length saved with the tokenizer")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import itertools
    from collections import Counter

    from tqdm import tqdm

    from openalign.media.texts import iter_parquet_texts, iter_shard_texts
    from openalign.errors import UserError
    from openalign.models.tokenizer import train_wordpiece

    if args.vocab_size < 10:
        raise UserError(f"--vocab-size {args.vocab_size}: too small; use at least a few hundred (paper: 100000)")
    counts: Counter = Counter()
    if args.shards:
        texts, source = iter_shard_texts(args.shards, counts), args.shards
    else:
        texts, source = iter_parquet_texts(args.parquet, args.text_column), args.parquet
    texts = iter(texts)
    first = next(texts, None)  # fail before writing anything when there is nothing to learn from
    if first is None:
        raise UserError(f"{source}: no alt-texts found; shards need KEY.txt captions, tables a non-empty text column")
    seen = [0]

    def counted():
        for t in tqdm(itertools.chain([first], texts), desc="alt-texts", unit=" texts", mininterval=1.0):
            seen[0] += 1
            yield t

    tok = train_wordpiece(counted(), args.out, vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                          max_length=args.max_length)
    skipped = counts.get("missing_or_empty_caption", 0) + counts.get("broken_shard_errors", 0)
    print(f"tokenizer: {len(tok)} tokens from {seen[0]} alt-texts ({skipped} skipped) -> {args.out}")
    return 0
