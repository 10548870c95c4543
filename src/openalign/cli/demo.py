"""``openalign demo``: the whole pipeline on generated data, in minutes on a CPU."""

from __future__ import annotations

import argparse

from openalign.cli._config_args import defer

# DemoConfig.train fields the demo sets itself from its own corpus and tokenizer
SKIP = {
    "train.shards": "the demo trains on the corpus it synthesises",
    "train.tokenizer": "the demo trains its own tokenizer",
    "train.out": "the run goes to <--out>/run",
    "train.seed": "--seed seeds the whole demo",
}
META = {
    "out": {"help": "output folder"},
    "num_train": {"help": "training pairs to synthesise"},
    "num_heldout": {"help": "clean held-out images (unseen colour+shape combinations)"},
    "workers": {"help": "corpus synthesis processes"},
    "noise_rate": {"help": "fraction of noisy training captions"},
    "vocab_size": {"help": "WordPiece vocabulary size"},
    "train": {"prefix": "train-", "title": "training (the demo's CPU schedule; any TrainConfig field)"},
    "train.steps": {"flag": ("--steps", "--train-steps"), "help": "training steps"},
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synthetic corpus -> tokenizer -> train tiny -> eval -> report")
    defer(p, _add_flags)
    p.set_defaults(func=run)


def _add_flags(p: argparse.ArgumentParser) -> None:
    from openalign.apps.demo import DemoConfig  # here, not at the top: see LazyParser
    from openalign.cli._config_args import add_config_flags

    add_config_flags(p, DemoConfig, skip=SKIP, meta=META)


def run(args: argparse.Namespace) -> int:
    from openalign.apps.demo import DemoConfig, run_demo
    from openalign.cli._config_args import config_from_args

    from openalign.corpus.synth import scene_flag_error
    from openalign.errors import UserError

    cfg = config_from_args(DemoConfig, args)
    if (err := scene_flag_error(cfg.fix, cfg.colour_mention)) is not None:
        raise UserError(err)
    run_demo(cfg)
    return 0
