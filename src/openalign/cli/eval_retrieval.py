"""``openalign eval retrieval``: I2T / T2I R@1/5/10 on a Karpathy-split JSON."""

from __future__ import annotations

import argparse

from openalign.cli.eval_common import add_common_args, run_and_report


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("retrieval", help="image-text retrieval R@K on a Karpathy-split JSON",
                              description="Zero-shot image<->text retrieval (Flickr30K / MSCOCO Karpathy splits).")
    add_common_args(p)
    p.add_argument("--karpathy-json", required=True, help="Karpathy-split JSON (dataset_flickr30k.json, ...)")
    p.add_argument("--image-root", required=True, help="folder the JSON's filepath/filename are relative to")
    p.add_argument("--split", default="test", help="split to evaluate (default: %(default)s)")
    p.add_argument("--name", default="retrieval", help="result name: <out>/<name>.json (default: %(default)s)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from openalign.evals.retrieval import RetrievalConfig

    cfg = RetrievalConfig(karpathy_json=args.karpathy_json, image_root=args.image_root, split=args.split,
                          name=args.name)
    return run_and_report(args, "retrieval", cfg)
