"""``openalign data extract|filter|download|dedup|build``: the dataset builder (thin wrappers).

Each stage's flags come from its config dataclass; ``build`` takes them all (``BuildConfig``).
"""

from __future__ import annotations

import argparse

from openalign.cli._config_args import defer

# Library imports sit inside the functions, not at the top: see LazyParser.


def _extract_flags(p: argparse.ArgumentParser) -> None:
    from openalign.cli._config_args import add_config_flags
    from openalign.corpus.extract import ExtractConfig

    p.add_argument("inputs", nargs="+", help="HTML/WARC files, Parquet/CSV/JSONL tables, or folders of them")
    p.add_argument("--out", required=True, help="candidates Parquet file")
    add_config_flags(p, ExtractConfig, title="extract")


def _filter_flags(p: argparse.ArgumentParser) -> None:
    from openalign.cli._config_args import add_config_flags
    from openalign.corpus.filter import FilterOptions, TextFilterConfig

    p.add_argument("inputs", nargs="+", help="candidate Parquet files or folders")
    p.add_argument("--out", required=True, help="pairs Parquet (a folder of part files with --engine spark)")
    add_config_flags(p, FilterOptions)
    add_config_flags(p, TextFilterConfig, title="text filters (the paper's defaults)")


def _download_flags(p: argparse.ArgumentParser) -> None:
    from openalign.cli._config_args import add_config_flags
    from openalign.corpus.download import DownloadConfig

    p.add_argument("pairs", help="pairs Parquet file or folder")
    p.add_argument("--out", required=True, help="shard folder")
    add_config_flags(p, DownloadConfig, title="download (img2dataset)")


def _dedup_flags(p: argparse.ArgumentParser) -> None:
    from openalign.cli._config_args import add_config_flags
    from openalign.corpus.dedup import DedupConfig

    p.add_argument("shards", help="shard folder or pattern (shards/{00000..00009}.tar)")
    p.add_argument("--eval-images", required=True, help="folder of images, Karpathy JSON, or shards")
    p.add_argument("--out", required=True, help="folder for the cleaned shards and dedup_report.json")
    p.add_argument("--image-root", default=None, help="root of the Karpathy JSON's image paths (default: its folder)")
    add_config_flags(p, DedupConfig, title="near-duplicates of evaluation images")


def _build_flags(p: argparse.ArgumentParser) -> None:
    from openalign.cli._config_args import add_config_flags
    from openalign.corpus.build import BuildConfig

    add_config_flags(p, BuildConfig)  # its stage configs are nested: each gets a help section


def cmd_extract(a: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from openalign.cli._config_args import config_from_args
    from openalign.corpus.extract import ExtractConfig, extract, list_inputs

    cfg = config_from_args(ExtractConfig, a)
    with tqdm(total=len(list_inputs(a.inputs)), desc="extract", unit="file") as bar:
        stats = extract(a.inputs, a.out, cfg, on_file=lambda p: bar.update())
    print(f"{stats.candidates:,} candidates from {stats.pages:,} pages -> {a.out}; skipped: {dict(stats.skipped)}")
    return 0


def cmd_filter(a: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from openalign.cli._config_args import config_from_args
    from openalign.corpus.filter import (
        N_STEPS,
        FilterOptions,
        TextFilterConfig,
        filter_pairs,
        format_stats_table,
        parquet_files,
        resolve_columns,
    )

    cfg, opts = config_from_args(TextFilterConfig, a), config_from_args(FilterOptions, a)
    resolve_columns(parquet_files(a.inputs), opts.url_column, opts.text_column)  # bad input fails before the bar
    with tqdm(total=N_STEPS, desc="filter", unit="step") as bar:
        stats = filter_pairs(a.inputs, a.out, cfg, engine=opts.engine, url_column=opts.url_column,
                             text_column=opts.text_column, threads=opts.threads, on_step=lambda n: bar.update())
    print(format_stats_table(stats))
    return 0


def cmd_download(a: argparse.Namespace) -> int:
    from openalign.cli._config_args import config_from_args
    from openalign.corpus.download import DownloadConfig, download, format_download_stats

    print(format_download_stats(download(a.pairs, a.out, config_from_args(DownloadConfig, a))))
    return 0


def cmd_dedup(a: argparse.Namespace) -> int:
    from openalign.cli._config_args import config_from_args
    from openalign.corpus.dedup import DedupConfig, dedup_shards

    report = dedup_shards(a.shards, a.eval_images, a.out, config_from_args(DedupConfig, a), image_root=a.image_root)
    print(f"{len(report.removed):,} near-duplicates of {report.eval_images:,} evaluation images removed; "
          f"{report.samples_out:,} of {report.samples_in:,} samples kept; skipped {dict(report.skipped)}; "
          f"report: {a.out}/dedup_report.json")
    return 0


def cmd_build(a: argparse.Namespace) -> int:
    from openalign.cli._config_args import config_from_args
    from openalign.corpus.build import BuildConfig, build

    cfg = config_from_args(BuildConfig, a)
    build(cfg)
    print(f"done: {cfg.out_dir} (stage manifest: {cfg.out_dir}/build_manifest.json)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    for name, help_, add, func in [
        ("extract", "image/alt-text candidates from HTML, WARC or tables -> Parquet", _extract_flags, cmd_extract),
        ("filter", "the paper's text filters (DuckDB or Spark) -> pairs Parquet", _filter_flags, cmd_filter),
        ("download", "fetch pairs with img2dataset into WebDataset shards", _download_flags, cmd_download),
        ("dedup", "remove near-duplicates of evaluation images from shards", _dedup_flags, cmd_dedup),
        ("build", "extract -> filter -> download -> dedup -> tokenizer, resumable", _build_flags, cmd_build),
    ]:
        p = subparsers.add_parser(name, help=help_)
        defer(p, add)
        p.set_defaults(func=func)
