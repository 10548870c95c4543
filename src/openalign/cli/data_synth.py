"""``openalign data synth``: the synthetic noisy corpus (demo and test data)."""

from __future__ import annotations

import argparse

from openalign.cli._config_args import defer


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("synth", help="write a synthetic noisy image/alt-text corpus (shards + clean held-out)")
    defer(p, _add_flags)
    p.set_defaults(func=run)


def _add_flags(p: argparse.ArgumentParser) -> None:
    from openalign.cli._config_args import add_config_flags
    from openalign.corpus.synth import SynthConfig  # here, not at the top: see LazyParser

    p.add_argument("--out", required=True, help="output directory")
    add_config_flags(p, SynthConfig)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from tqdm import tqdm

    from openalign.cli._config_args import config_from_args
    from openalign.corpus.synth import SynthConfig, generate_corpus, scene_flag_error
    from openalign.errors import UserError

    cfg = config_from_args(SynthConfig, args)
    if not 0.0 <= cfg.noise_rate <= 1.0:
        raise UserError(f"--noise-rate {cfg.noise_rate}: must be between 0 and 1")
    if (err := scene_flag_error(cfg.fix, cfg.colour_mention)) is not None:
        raise UserError(err)
    if not 0.0 <= cfg.heldout_fraction_of_combos < 1.0:
        raise UserError(f"--heldout-fraction {cfg.heldout_fraction_of_combos}: must be in [0, 1)")
    if cfg.num_train < 1 or cfg.num_heldout < 0 or cfg.shard_size < 1 or cfg.image_size < 16:
        raise UserError("--num-train and --shard-size must be >= 1, --num-heldout >= 0, --image-size >= 16")
    if cfg.world == "long-tail" and not (0.0 <= cfg.zipf_s <= 10.0 and 3 <= cfg.num_concepts <= 384):
        raise UserError(f"--zipf-s {cfg.zipf_s} / --num-concepts {cfg.num_concepts}: need 0 <= s <= 10 and "
                        "3 <= concepts <= 384")
    with tqdm(total=cfg.num_train, desc="synth", unit=" img") as bar:
        info = generate_corpus(args.out, **asdict(cfg), progress=bar.update)
    noise = ", ".join(f"{k} {v}" for k, v in info.noise_counts.items())
    print(f"train:   {info.num_train} images ({noise}) -> {info.shards}")
    print(f"heldout: {info.num_heldout} images, 5 captions each -> {info.heldout_json}")
    print(f"         images under {info.heldout_image_root}")
    if cfg.world == "long-tail":
        print(f"         by stratum (split head|torso|tail): {info.root / 'heldout' / 'karpathy_strata.json'}")
        print(f"zeroshot: one class per concept -> {info.root / 'zeroshot'}")
    print(f"stats:   {info.root / 'stats.json'}")
    return 0
