"""``openalign index build`` / ``openalign index add``: embed images (or stream ``openalign embed`` parts) and write
or extend a search index. Writers of one index take turns (a lock beside it): a second ``add`` waits."""

from __future__ import annotations

import argparse
import json

from openalign.cli._config_args import defer

SUMMARY = ("count", "dim", "index_type", "captions_indexed", "stats")


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("build", help="embed a folder, shards or a Parquet table (or index the parts of "
                                     "`openalign embed`) into a new index (atomic)")
    defer(b, _add_build_flags)
    b.set_defaults(func=_build)
    a = sub.add_parser("add", help="append images to an existing index without rebuilding it")
    defer(a, _add_add_flags)
    a.set_defaults(func=_add)


def _add_build_flags(p: argparse.ArgumentParser) -> None:
    # here, not at the top: see LazyParser
    from openalign.cli._config_args import add_config_flags
    from openalign.search.build import SourceOptions
    from openalign.search.index import IndexParams

    p.add_argument("--model", default=None, help="model directory (openalign train output or align-base layout); "
                                                 "required unless --embeddings")
    p.add_argument("--out", required=True, help="index directory to write (replaced atomically if it exists)")
    add_config_flags(p, SourceOptions, title="images to embed")
    # one more source, outside the dataclass (it feeds another function): join the exactly-one-of group
    group = next(g for g in p._mutually_exclusive_groups if any(a.dest == "images" for a in g._group_actions))
    group.add_argument("--embeddings", default=None, metavar="EMB_DIR",
                       help="the parts folder of `openalign embed` (every rank): index them, embedding nothing; "
                            "streamed a part at a time (add --on-disk for IVF lists on disk)")
    add_config_flags(p, IndexParams, title="vector index")


def _add_add_flags(p: argparse.ArgumentParser) -> None:
    from openalign.cli._config_args import add_config_flags
    from openalign.search.build import SourceOptions

    p.add_argument("--index", required=True, help="index directory to extend")
    p.add_argument("--model", default=None, help="model directory (default: the one in the manifest)")
    add_config_flags(p, SourceOptions, title="images to embed")


def _build(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from openalign.cli._config_args import config_from_args
    from openalign.errors import UserError
    from openalign.search.build import SourceOptions, build_index
    from openalign.search.index import IndexParams

    src, params = config_from_args(SourceOptions, args), config_from_args(IndexParams, args)
    if args.embeddings:
        from openalign.search.parts import build_index_from_parts

        if args.model:
            raise UserError("--model: not used with --embeddings (the parts' manifest names the model; "
                            "`openalign search --model DIR` loads it from elsewhere)")
        m = build_index_from_parts(args.embeddings, args.out, params)
    elif not args.model:
        raise UserError("--model: required to embed --images/--shards/--parquet; pass a model directory")
    else:
        m = build_index(args.out, args.model, params=params, **asdict(src))
    print(json.dumps({k: m[k] for k in SUMMARY}))
    return 0


def _add(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from openalign.cli._config_args import config_from_args
    from openalign.search.build import SourceOptions, add_to_index

    m = add_to_index(args.index, args.model, **asdict(config_from_args(SourceOptions, args)))
    print(json.dumps({k: m[k] for k in SUMMARY}))
    return 0
