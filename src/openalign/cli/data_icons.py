"""``openalign data icons``: a real icon corpus from Iconify sets (npm), rendered and captioned like alt-text."""

from __future__ import annotations

import argparse

from openalign.cli._config_args import defer


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("icons", help="write an icon corpus from Iconify sets (shards + held-out sets + "
                                             "zero-shot classes)")
    defer(p, _add_flags)
    p.set_defaults(func=run)


def _add_flags(p: argparse.ArgumentParser) -> None:
    from openalign.cli._config_args import add_config_flags
    from openalign.corpus.icons import IconsConfig  # lazily: see LazyParser

    p.add_argument("--out", required=True, help="output directory")
    add_config_flags(p, IconsConfig)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from openalign.cli._config_args import config_from_args
    from openalign.corpus.icons import (
        IconsConfig,
        plan_corpus,
        resolve_source,
        write_corpus,
    )

    cfg = config_from_args(IconsConfig, args)
    plan = plan_corpus(cfg, *resolve_source(cfg, args.out))  # fetches with npm unless --from
    for s in plan.skipped_sets:
        print(f"skipped set {s['prefix']}: {s['reason']} ({s['source']})")
    with tqdm(total=plan.total_images, desc="icons", unit=" img") as bar:
        info = write_corpus(plan, args.out, progress=bar.update)
    used = ", ".join(f"{s['prefix']} ({s['licence']['spdx']}, {s['icons']})" for s in info.stats["sets_used"])
    noise = ", ".join(f"{k} {v}" for k, v in info.noise_counts.items())
    print(f"sets:     {used}; held out: {', '.join(plan.heldout_sets) or 'none'}")
    print(f"train:    {info.num_train} images ({noise}) -> {info.shards}")
    print(f"heldout:  {info.num_heldout} images -> {info.heldout_json or 'none (no held-out set)'}")
    print(f"classify: {len(info.classes)} classes, "
          f"{info.stats['num_classify']} images ({info.stats['classify_source']}) -> {info.classify_root or 'none'}")
    print(f"stats:    {info.root / 'stats.json'}")
    return 0
