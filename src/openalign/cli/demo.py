"""``openalign demo``: the whole pipeline on generated data, in minutes on a CPU."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synthetic corpus -> tokenizer -> train tiny -> eval -> report")
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--num-train", type=int, default=None, help="training pairs to synthesise")
    p.add_argument("--steps", type=int, default=None, help="training steps")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from openalign.apps.demo import DemoConfig, run_demo

    cfg = DemoConfig(out=args.out, seed=args.seed)
    if args.num_train:
        cfg = replace(cfg, num_train=args.num_train)
    if args.steps:
        cfg = replace(cfg, train=replace(cfg.train, steps=args.steps))
    run_demo(cfg)
    return 0
