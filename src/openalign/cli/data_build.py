"""``openalign data extract|filter|download|dedup|build``: the dataset builder (thin wrappers)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def _filter_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("text filters (the paper's defaults)")
    g.add_argument("--max-images-per-text", type=int, default=10, help="drop alt-texts shared by more images")
    g.add_argument("--max-texts-per-image", type=int, default=1000, help="drop images with more alt-texts")
    g.add_argument("--vocab-top-n", type=int, default=100_000_000, help="keep texts whose uni/bigrams are in the top N")
    g.add_argument("--min-unigrams", type=int, default=3)
    g.add_argument("--max-unigrams", type=int, default=20)
    g.add_argument("--engine", choices=["duckdb", "spark"], default="duckdb")


def _download_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("download (img2dataset)")
    g.add_argument("--min-side", type=int, default=200, help="keep images whose shorter side is > this")
    g.add_argument("--max-aspect-ratio", type=float, default=3.0, help="keep images whose aspect ratio is < this")
    g.add_argument("--image-size", type=int, default=346, help="resize: shorter side to this (keep_ratio)")
    g.add_argument("--resize-mode", default="keep_ratio", choices=["no", "keep_ratio", "center_crop", "border"])
    g.add_argument("--samples-per-shard", type=int, default=10_000)
    g.add_argument("--processes", type=int, default=1)
    g.add_argument("--threads", type=int, default=32)
    g.add_argument("--timeout", type=int, default=10)
    g.add_argument("--local-root", default=None, help="folder that relative local image paths resolve against")


def _dedup_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("near-duplicates of evaluation images")
    g.add_argument("--method", choices=["phash", "embedding"], default="phash")
    g.add_argument("--max-hamming", type=int, default=4, help="phash: duplicate at this many differing bits or fewer")
    g.add_argument("--cosine", type=float, default=0.975, help="embedding: duplicate above this cosine similarity")
    g.add_argument("--model", default=None, help="embedding: model directory")
    g.add_argument("--image-root", default=None, help="root of the Karpathy JSON's image paths (default: its folder)")


def _extract_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("extract")
    g.add_argument("--page-url-prefix", default=None, help="HTML files: page URL = prefix + path under the input folder")
    g.add_argument("--max-page-bytes", type=int, default=5_000_000)
    g.add_argument("--url-column", default=None)
    g.add_argument("--text-column", default=None)


def _cfgs(a: argparse.Namespace) -> dict[str, Any]:
    from openalign.corpus.dedup import DedupConfig
    from openalign.corpus.download import DownloadConfig
    from openalign.corpus.extract import ExtractConfig
    from openalign.corpus.filter import TextFilterConfig

    def pick(cls, **renames):
        names = {f.name for f in dataclasses.fields(cls)}
        vals = {k: v for k, v in vars(a).items() if k in names}
        vals.update({k: getattr(a, v) for k, v in renames.items() if hasattr(a, v)})
        return cls(**vals)

    return {"extract": pick(ExtractConfig), "filter": pick(TextFilterConfig),
            "download": pick(DownloadConfig), "dedup": pick(DedupConfig, model_dir="model")}


def cmd_extract(a: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from openalign.corpus.extract import extract, list_inputs

    with tqdm(total=len(list_inputs(a.inputs)), desc="extract", unit="file") as bar:
        stats = extract(a.inputs, a.out, _cfgs(a)["extract"], on_file=lambda p: bar.update())
    print(f"{stats.candidates:,} candidates from {stats.pages:,} pages -> {a.out}; skipped: {dict(stats.skipped)}")
    return 0


def cmd_filter(a: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from openalign.corpus.filter import N_STEPS, filter_pairs, format_stats_table, parquet_files, resolve_columns

    resolve_columns(parquet_files(a.inputs), a.url_column, a.text_column)  # bad input fails before the bar shows
    with tqdm(total=N_STEPS, desc="filter", unit="step") as bar:
        stats = filter_pairs(a.inputs, a.out, _cfgs(a)["filter"], engine=a.engine, url_column=a.url_column,
                             text_column=a.text_column, threads=a.threads_sql, on_step=lambda n: bar.update())
    print(format_stats_table(stats))
    return 0


def cmd_download(a: argparse.Namespace) -> int:
    from openalign.corpus.download import download, format_download_stats

    print(format_download_stats(download(a.pairs, a.out, _cfgs(a)["download"])))
    return 0


def cmd_dedup(a: argparse.Namespace) -> int:
    from openalign.corpus.dedup import dedup_shards

    report = dedup_shards(a.shards, a.eval_images, a.out, _cfgs(a)["dedup"], image_root=a.image_root)
    print(f"{len(report.removed):,} near-duplicates of {report.eval_images:,} evaluation images removed; "
          f"{report.samples_out:,} of {report.samples_in:,} samples kept; skipped {dict(report.skipped)}; "
          f"report: {a.out}/dedup_report.json")
    return 0


def cmd_build(a: argparse.Namespace) -> int:
    from openalign.corpus.build import BuildConfig, build

    c = _cfgs(a)
    cfg = BuildConfig(inputs=tuple(a.inputs), out_dir=a.out, eval_images=a.eval_images, eval_image_root=a.image_root,
                      engine=a.engine, vocab_size=a.vocab_size, **c)
    build(cfg)
    print(f"done: {a.out} (stage manifest: {a.out}/build_manifest.json)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("extract", help="image/alt-text candidates from HTML, WARC or tables -> Parquet")
    p.add_argument("inputs", nargs="+", help="HTML/WARC files, Parquet/CSV/JSONL tables, or folders of them")
    p.add_argument("--out", required=True, help="candidates Parquet file")
    _extract_args(p)
    p.set_defaults(func=cmd_extract)

    p = subparsers.add_parser("filter", help="the paper's text filters (DuckDB or Spark) -> pairs Parquet")
    p.add_argument("inputs", nargs="+", help="candidate Parquet files or folders")
    p.add_argument("--out", required=True, help="pairs Parquet (a folder of part files with --engine spark)")
    p.add_argument("--url-column", default=None)
    p.add_argument("--text-column", default=None)
    p.add_argument("--threads-sql", type=int, default=None, help="DuckDB threads (default: all cores)")
    _filter_args(p)
    p.set_defaults(func=cmd_filter)

    p = subparsers.add_parser("download", help="fetch pairs with img2dataset into WebDataset shards")
    p.add_argument("pairs", help="pairs Parquet file or folder")
    p.add_argument("--out", required=True, help="shard folder")
    _download_args(p)
    p.set_defaults(func=cmd_download)

    p = subparsers.add_parser("dedup", help="remove near-duplicates of evaluation images from shards")
    p.add_argument("shards", help="shard folder or pattern (shards/{00000..00009}.tar)")
    p.add_argument("--eval-images", required=True, help="folder of images, Karpathy JSON, or shards")
    p.add_argument("--out", required=True, help="folder for the cleaned shards and dedup_report.json")
    _dedup_args(p)
    p.set_defaults(func=cmd_dedup)

    p = subparsers.add_parser("build", help="extract -> filter -> download -> dedup -> tokenizer, resumable")
    p.add_argument("inputs", nargs="+", help="HTML/WARC files, tables, or folders of them")
    p.add_argument("--out", required=True, help="dataset folder (resumes from its build_manifest.json)")
    p.add_argument("--eval-images", default=None, help="evaluation images to deduplicate against (else no dedup)")
    p.add_argument("--vocab-size", type=int, default=100_000, help="WordPiece vocabulary size")
    for add in (_extract_args, _filter_args, _download_args, _dedup_args):
        add(p)
    p.set_defaults(func=cmd_build)
