"""``openalign index build`` / ``openalign index add``: embed images and write or extend a search index."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("build", help="embed a folder, shards or a Parquet table into a new index (atomic)")
    b.add_argument("--model", required=True, help="model directory (openalign train output or align-base layout)")
    _source_args(b)
    b.add_argument("--out", required=True, help="index directory to write (replaced atomically if it exists)")
    b.add_argument("--index-type", default="auto", choices=["auto", "flat", "hnsw", "ivfpq"],
                   help="auto: exact up to --flat-max images, then HNSW if it fits --memory-budget-mb, else IVF-PQ")
    b.add_argument("--memory-budget-mb", type=float, default=2048.0, help="RAM the vector index may use")
    b.add_argument("--flat-max", type=int, default=50_000, help="auto: exact search up to this many images")
    b.add_argument("--hnsw-m", type=int, default=32)
    b.add_argument("--hnsw-ef-construction", type=int, default=64)
    b.add_argument("--hnsw-ef-search", type=int, default=128)
    b.add_argument("--ivf-nlist", type=int, default=None, help="IVF lists (default about sqrt(n))")
    b.add_argument("--ivf-nprobe", type=int, default=16)
    b.add_argument("--pq-m", type=int, default=None, help="PQ sub-quantizers; must divide the dim")
    b.add_argument("--rerank", type=int, default=10, help="approximate: re-score k*rerank candidates exactly (1 = off)")
    b.set_defaults(func=_build)
    a = sub.add_parser("add", help="append images to an existing index without rebuilding it")
    a.add_argument("--index", required=True, help="index directory to extend")
    a.add_argument("--model", default=None, help="model directory (default: the one in the manifest)")
    _source_args(a)
    a.set_defaults(func=_add)


def _source_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder of images (NAME.txt beside NAME.jpg is its caption)")
    src.add_argument("--shards", help="WebDataset shards, e.g. 'shards/{00000..00009}.tar'")
    src.add_argument("--parquet", help="Parquet table with a path or url column and optional caption column")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers decoding images")
    p.add_argument("--thumb-size", type=int, default=192, help="stored thumbnail size in px (0 = none)")
    p.add_argument("--no-captions", action="store_true", help="do not index caption embeddings")


def _build(args: argparse.Namespace) -> int:
    from openalign.search.build import build_index
    from openalign.search.index import IndexParams

    params = IndexParams(index_type=args.index_type, memory_budget_mb=args.memory_budget_mb, flat_max=args.flat_max,
                         hnsw_m=args.hnsw_m, hnsw_ef_construction=args.hnsw_ef_construction,
                         hnsw_ef_search=args.hnsw_ef_search, ivf_nlist=args.ivf_nlist, ivf_nprobe=args.ivf_nprobe,
                         pq_m=args.pq_m, rerank=args.rerank)
    m = build_index(args.out, args.model, images=args.images, shards=args.shards, parquet=args.parquet, params=params,
                    batch_size=args.batch_size, num_workers=args.workers, thumb_size=args.thumb_size,
                    index_captions=not args.no_captions)
    print(json.dumps({k: m[k] for k in ("count", "dim", "index_type", "captions_indexed", "stats")}))
    return 0


def _add(args: argparse.Namespace) -> int:
    from openalign.search.build import add_to_index

    m = add_to_index(args.index, args.model, images=args.images, shards=args.shards, parquet=args.parquet,
                     batch_size=args.batch_size, num_workers=args.workers, thumb_size=args.thumb_size,
                     index_captions=not args.no_captions)
    print(json.dumps({k: m[k] for k in ("count", "dim", "index_type", "captions_indexed", "stats")}))
    return 0
