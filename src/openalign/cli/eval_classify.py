"""``openalign eval zeroshot | linear-probe | knn``: classification on frozen embeddings."""

from __future__ import annotations

import argparse

from openalign.cli.eval_common import add_common_args, run_and_report

DATA_HELP = "ImageFolder tree (root/<class>/<image>) or CSV with columns path,label"


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_zeroshot(subparsers)
    _register_probe(subparsers)
    _register_knn(subparsers)


def _register_zeroshot(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("zeroshot", help="zero-shot classification with prompt ensembling",
                              description="Zero-shot classification: top-1, top-5, mean per-class recall.")
    add_common_args(p)
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--classnames", default=None,
                   help="class names JSON (CLIP_benchmark layout) or 'imagenet1k' (shipped); "
                   "default: folder/label names")
    p.add_argument("--templates", default="imagenet1k",
                   help="templates JSON, 'imagenet1k' (CLIP's 80, default) or 'none' (one prompt: 'a photo of a {c}.')")
    p.add_argument("--dataset-name", default="imagenet1k", help="key in the class-name/template JSON files")
    p.add_argument("--image-root", default=None, help="CSV paths are relative to this (default: the CSV's folder)")
    p.add_argument("--name", default="zeroshot", help="result name (default: %(default)s)")
    p.set_defaults(func=_run_zeroshot)


def _register_probe(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("linear-probe", help="logistic regression on frozen image embeddings",
                              description="Linear probe: L2 sweep on a validation split, refit on train+val.")
    add_common_args(p)
    p.add_argument("--train", required=True, help=DATA_HELP)
    p.add_argument("--test", required=True, help=DATA_HELP)
    p.add_argument("--val", default=None, help="validation set (default: hold out --val-fraction of train)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--weight-decays", default="1e-6,1e-5,1e-4,1e-3,1e-2,1e-1", help="comma-separated L2 sweep")
    p.add_argument("--max-iter", type=int, default=300, help="L-BFGS iterations per fit")
    p.add_argument("--image-root", default=None)
    p.add_argument("--name", default="linear_probe")
    p.set_defaults(func=_run_probe)


def _register_knn(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("knn", help="kNN classification (cosine) on frozen image embeddings",
                              description="kNN top-1: label of the nearest train image(s) by cosine similarity.")
    add_common_args(p)
    p.add_argument("--train", required=True, help=DATA_HELP)
    p.add_argument("--test", required=True, help=DATA_HELP)
    p.add_argument("--k", type=int, default=1, help="neighbours voting (default: %(default)s)")
    p.add_argument("--image-root", default=None)
    p.add_argument("--name", default="knn")
    p.set_defaults(func=_run_knn)


def _run_zeroshot(args: argparse.Namespace) -> int:
    from openalign.evals.classification import ZeroShotConfig

    cfg = ZeroShotConfig(data=args.data, classnames=args.classnames, templates=args.templates,
                         dataset_name=args.dataset_name, image_root=args.image_root, name=args.name)
    return run_and_report(args, "zeroshot", cfg)


def _run_probe(args: argparse.Namespace) -> int:
    from openalign.errors import UserError
    from openalign.evals.classification import LinearProbeConfig

    try:
        wds = tuple(float(v) for v in args.weight_decays.split(",") if v.strip())
    except ValueError:
        raise UserError(f"--weight-decays {args.weight_decays!r}: expected comma-separated numbers") from None
    cfg = LinearProbeConfig(train=args.train, test=args.test, val=args.val, val_fraction=args.val_fraction,
                            weight_decays=wds, max_iter=args.max_iter, image_root=args.image_root, name=args.name)
    return run_and_report(args, "linear_probe", cfg)


def _run_knn(args: argparse.Namespace) -> int:
    from openalign.evals.classification import KnnConfig

    cfg = KnnConfig(train=args.train, test=args.test, k=args.k, image_root=args.image_root, name=args.name)
    return run_and_report(args, "knn", cfg)
