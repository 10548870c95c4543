"""``openalign embed``: embed images into parts, one process per rank, for ``index build --embeddings``."""

from __future__ import annotations

import argparse
import json

from openalign.cli._config_args import defer


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed images into parts (split over ranks, resumable) for an index build")
    defer(p, _add_flags)
    p.set_defaults(func=run)


def _add_flags(p: argparse.ArgumentParser) -> None:
    # here, not at the top: see LazyParser
    from openalign.cli._config_args import add_config_flags
    from openalign.search.build import SourceOptions
    from openalign.search.parts import PartOptions

    p.add_argument("--model", required=True, help="model directory (openalign train output or align-base layout)")
    p.add_argument("--out", required=True, help="embeddings folder shared by every rank (img_emb/, text_emb/, "
                                                "metadata/, progress/, manifest.json)")
    add_config_flags(p, SourceOptions, title="images to embed",
                     meta={"index_captions": {"help": "embed the captions too (text_emb/)"}})
    add_config_flags(p, PartOptions, title="parts and ranks")


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from openalign.cli._config_args import config_from_args
    from openalign.search.build import SourceOptions
    from openalign.search.parts import PartOptions, embed_to_parts

    src, opts = config_from_args(SourceOptions, args), config_from_args(PartOptions, args)
    print(json.dumps(embed_to_parts(args.out, args.model, options=opts, **asdict(src))))
    return 0
