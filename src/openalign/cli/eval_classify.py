"""``openalign eval zeroshot | linear-probe | knn``: classification on frozen embeddings."""

from __future__ import annotations

import argparse

from openalign.cli.eval_common import register_eval, run_and_report

DATA_HELP = "ImageFolder tree (root/<class>/<image>) or CSV with columns path,label"
IMAGE_ROOT = {"help": "CSV paths are relative to this (default: the CSV's folder)"}
NAME = {"help": "result name: <out>/<name>.json"}
ZEROSHOT_META = {
    "data": {"help": DATA_HELP},
    "classnames": {"help": "class names JSON (CLIP_benchmark layout) or 'imagenet1k' (shipped); "
                           "default: folder/label names"},
    "templates": {"help": "templates JSON, 'imagenet1k' (CLIP's 80, default) or 'none' "
                          "(one prompt: 'a photo of a {c}.')"},
    "dataset_name": {"help": "key in the class-name/template JSON files"},
    "image_root": IMAGE_ROOT,
    "name": NAME,
}
PROBE_META = {
    "train": {"help": DATA_HELP},
    "test": {"help": DATA_HELP},
    "val": {"help": "validation set (default: hold out --val-fraction of train)"},
    "val_fraction": {"help": "share of train held out for the L2 sweep when there is no --val"},
    "weight_decays": {"help": "comma-separated L2 sweep"},
    "max_iter": {"help": "L-BFGS iterations per fit"},
    "seed": {"help": "seed of the held-out validation split"},
    "image_root": IMAGE_ROOT,
    "name": NAME,
}
KNN_META = {
    "train": {"help": DATA_HELP},
    "test": {"help": DATA_HELP},
    "k": {"help": "neighbours voting"},
    "image_root": IMAGE_ROOT,
    "name": NAME,
}
# command -> (evaluator kind, flag metadata, help, description)
COMMANDS = {
    "zeroshot": ("zeroshot", ZEROSHOT_META, "zero-shot classification with prompt ensembling",
                 "Zero-shot classification: top-1, top-5, mean per-class recall."),
    "linear-probe": ("linear_probe", PROBE_META, "logistic regression on frozen image embeddings",
                     "Linear probe: L2 sweep on a validation split, refit on train+val."),
    "knn": ("knn", KNN_META, "kNN classification (cosine) on frozen image embeddings",
            "kNN top-1: label of the nearest train image(s) by cosine similarity."),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    for command, (_, _, help_, description) in COMMANDS.items():
        register_eval(subparsers, command, _flags(command), _runner(command), help=help_, description=description)


def _config_class(command: str) -> type:
    # here, not at the top: see LazyParser
    from openalign.evals.classification import KnnConfig, LinearProbeConfig, ZeroShotConfig

    return {"zeroshot": ZeroShotConfig, "linear-probe": LinearProbeConfig, "knn": KnnConfig}[command]


def _flags(command: str):
    def add(p: argparse.ArgumentParser) -> None:
        from openalign.cli._config_args import add_config_flags

        add_config_flags(p, _config_class(command), meta=COMMANDS[command][1], title=command)

    return add


def _runner(command: str):
    def run(args: argparse.Namespace) -> int:
        from openalign.cli._config_args import config_from_args

        return run_and_report(args, COMMANDS[command][0], config_from_args(_config_class(command), args))

    return run
