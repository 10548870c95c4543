"""``openalign train``: the paper's recipe by default; every TrainConfig field is a flag."""

from __future__ import annotations

import argparse

from openalign.cli._config_args import defer


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an ALIGN dual encoder on WebDataset shards",
                       description="Train with the paper's recipe (LAMB, lr 1e-3, warm-up then linear decay, "
                                   "learnable temperature, label smoothing 0.1). Multi-process: launch with torchrun.")
    defer(p, _add_flags)
    p.set_defaults(func=run)


def _add_flags(p: argparse.ArgumentParser) -> None:
    from openalign.cli._config_args import add_config_flags
    from openalign.train.config import TrainConfig  # here, not at the top: see LazyParser

    p.add_argument("--resume", action="store_true", default=None,
                   help="continue from the newest valid checkpoint in --out")
    p.add_argument("--config", default=None, help="a config.json from an earlier run to start from")
    p.add_argument("--set", nargs="*", default=None, metavar="KEY=VALUE", help="more config overrides")
    add_config_flags(p, TrainConfig, meta={
        "threads": {"help": "torch threads per process; none = this process's share of the cores minus one "
                            "(at least 1): torch's one-per-core default stalls whenever a data worker or another "
                            "process holds a core (2 shared cores: 437 -> 76 samples/s measured)"},
        "image_tower": {"help": "efficientnet-b0 .. efficientnet-b7, efficientnet-l2 (none = the preset's)"},
        "text_tower": {"help": "bert-mini, bert-small, bert-medium, bert-base, bert-large (none = the preset's)"},
        "image_size": {"help": "crop fed to the image tower in px (none = the preset's; train resize scales with it)"},
        "embed_dim": {"help": "embedding size (none = the image tower's width: a plain AlignModel)"},
    })


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from openalign.cli._config_args import config_from_args
    from openalign.config import apply_overrides, from_dict
    from openalign.errors import UserError
    from openalign.train.config import TrainConfig
    from openalign.train.loop import train

    def resolve(base: TrainConfig | None) -> TrainConfig:
        try:
            return apply_overrides(config_from_args(TrainConfig, args, base), list(args.set or []))
        except ValueError as exc:
            raise UserError(str(exc)) from None

    base = None
    if args.config:
        path = Path(args.config)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: cannot read config ({exc}); pass a run's config.json") from None
        base = from_dict(TrainConfig, data.get("train", data))
    cfg = resolve(base)
    if args.resume and not args.config and (Path(cfg.out) / "config.json").is_file() and not cfg.shards:
        saved = json.loads((Path(cfg.out) / "config.json").read_text())["train"]
        cfg = resolve(from_dict(TrainConfig, saved))
    result = train(cfg, resume=bool(args.resume))
    print(f"trained {result.step} steps, {result.samples_per_s:.1f} samples/s; model: {result.model_dir}")
    if result.skipped:
        print(f"skipped: {result.bad_samples or 'none'} of {result.skipped.get('samples_read', 0)} samples read")
    return 0
