"""``openalign data extract|filter|download|image-rules|safety|dedup|build``: the dataset builder (thin wrappers).

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


def _image_rules_flags(p: argparse.ArgumentParser) -> None:
    from openalign.cli._config_args import add_config_flags
    from openalign.corpus.image_rules import ImageRulesConfig

    p.add_argument("shards", help="downloaded shard folder or pattern (shards/{00000..00009}.tar)")
    p.add_argument("--out", required=True, help="folder for the rewritten shards and image_rules_stats.json")
    add_config_flags(p, ImageRulesConfig, title="image rules, by URL and by content hash (the paper's defaults)")


def _safety_flags(p: argparse.ArgumentParser) -> None:
    from openalign.cli._config_args import add_config_flags
    from openalign.corpus.safety import SafetyConfig

    p.add_argument("shards", help="shard folder or pattern (shards/{00000..00009}.tar)")
    p.add_argument("--out", required=True, help="folder for the safe shards and safety_stats.json")
    add_config_flags(p, SafetyConfig, title="unsafe-image classifier",
                     meta={"model_dir": {"flag": ("--model", "--model-dir")},
                           "unsafe_prompts": {"flag": "--unsafe-prompt"}, "safe_prompts": {"flag": "--safe-prompt"}})


def _build_flags(p: argparse.ArgumentParser) -> None:
    from openalign.cli._config_args import add_config_flags
    from openalign.corpus.build import BuildConfig

    add_config_flags(p, BuildConfig,  # its stage configs are nested: each gets a help section
                     meta={"safety.unsafe_prompts": {"flag": "--safety-unsafe-prompt"},
                           "safety.safe_prompts": {"flag": "--safety-safe-prompt"}})


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
                             text_column=opts.text_column, threads=opts.threads, memory_limit=opts.memory_limit,
                             temp_dir=opts.temp_dir, spark_master=opts.spark_master,
                             compress_spill=opts.compress_spill, gram_passes=opts.gram_passes,
                             on_step=lambda n: bar.update())
    print(format_stats_table(stats))
    return 0


def cmd_download(a: argparse.Namespace) -> int:
    from openalign.cli._config_args import config_from_args
    from openalign.corpus.download import (
        DownloadConfig,
        download,
        format_download_stats,
    )

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


def cmd_image_rules(a: argparse.Namespace) -> int:
    from openalign.cli._config_args import config_from_args
    from openalign.corpus.image_rules import (
        ImageRulesConfig,
        format_image_rules_stats,
        image_rules_shards,
    )

    stats = image_rules_shards(a.shards, a.out, config_from_args(ImageRulesConfig, a))
    print(format_image_rules_stats(stats))
    return 0


def cmd_safety(a: argparse.Namespace) -> int:
    from openalign.cli._config_args import config_from_args
    from openalign.corpus.safety import SafetyConfig, safety_shards

    cfg = config_from_args(SafetyConfig, a)
    if not cfg.model_dir:
        print("safety: skipped: no classifier given (--model); unsafe images were NOT removed")
        return 0
    stats = safety_shards(a.shards, a.out, cfg)
    print(f"{stats.unsafe:,} unsafe images removed ({stats.classifier} classifier, threshold {cfg.threshold}); "
          f"{stats.samples_out:,} of {stats.samples_in:,} samples kept; skipped {dict(stats.skipped)}; "
          f"stats: {a.out}/safety_stats.json")
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
        ("image-rules", "the image rules again after download, images by URL and by content hash",
         _image_rules_flags, cmd_image_rules),
        ("safety", "remove images an unsafe-image classifier flags", _safety_flags, cmd_safety),
        ("dedup", "remove near-duplicates of evaluation images from shards", _dedup_flags, cmd_dedup),
        ("build", "extract -> filter -> download -> image-rules -> safety -> dedup -> tokenizer, resumable", _build_flags, cmd_build),
    ]:
        p = subparsers.add_parser(name, help=help_)
        defer(p, add)
        p.set_defaults(func=func)
