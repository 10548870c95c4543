"""``openalign finetune retrieval | classify``: the paper's fine-tuning (its Tables 1 and 5)."""

from __future__ import annotations

import argparse

from openalign.cli._config_args import defer

HELP = {
    "init": "pretrained model directory (`openalign train` output or the kakaobrain/align-base layout)",
    "out": "run directory: checkpoints, metrics, model/",
}


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("retrieval", help="contrastive fine-tuning on a Karpathy split (Flickr30K / MSCOCO)",
                       description="The paper's retrieval fine-tuning: batch 2048, lr 1e-5, 3k steps (Flickr30K) "
                                   "or 6k (MSCOCO), on every caption of the split's images. Resumable (--resume).")
    defer(r, _retrieval_flags)
    r.set_defaults(func=_retrieval)
    c = sub.add_parser("classify", help="image tower + linear head on an ImageFolder (the paper's ImageNet recipe)",
                       description="Stage 1: the head on frozen features (SGD, lr 0.1); stage 2: all layers "
                                   "(lr 0.01, the tower 10x smaller). Writes model/, classifier.safetensors, classes.json.")
    defer(c, _classify_flags)
    c.set_defaults(func=_classify)


def _retrieval_flags(p: argparse.ArgumentParser) -> None:
    from openalign.cli._config_args import add_config_flags
    from openalign.train.finetune import RetrievalFinetuneConfig  # here, not at the top: see LazyParser

    p.add_argument("--resume", action="store_true", default=None, help="continue from the newest checkpoint in --out")
    add_config_flags(p, RetrievalFinetuneConfig, meta={
        "init": {"help": HELP["init"]}, "out": {"help": HELP["out"]},
        "karpathy_json": {"help": "Karpathy-split JSON (dataset_flickr30k.json, dataset_coco.json)"},
        "image_root": {"help": "folder the JSON's filepath/filename are relative to"},
        "split": {"help": "split to fine-tune on (MSCOCO: merge restval into train first)"},
        "train_set": {"help": "more TrainConfig overrides, key=value (e.g. grad_clip=1.0)", "metavar": "KEY=VALUE"},
        "steps": {"help": "the paper: 3000 on Flickr30K, 6000 on MSCOCO"},
        "batch_size": {"help": "global contrastive batch (the paper's); use --micro-batch-size to fit memory"},
        "warmup_steps": {"help": "not stated by the paper: 10%% of the steps"},
        "shard_size": {"help": "(image, caption) pairs per shard written under OUT/shards"},
    })


def _classify_flags(p: argparse.ArgumentParser) -> None:
    from openalign.cli._config_args import add_config_flags
    from openalign.train.finetune import ClassifyFinetuneConfig  # here, not at the top: see LazyParser

    add_config_flags(p, ClassifyFinetuneConfig, meta={
        "init": {"help": HELP["init"]}, "out": {"help": "output folder: model/, classifier.safetensors, classes.json"},
        "train": {"help": "ImageFolder tree (root/<class>/<image>) or CSV with columns path,label"},
        "head_steps": {"help": "stage 1: steps of the linear head on frozen features"},
        "steps": {"help": "stage 2: steps of all layers"},
        "freeze_bn": {"help": "keep the pretrained BatchNorm running statistics (small batches would wreck them)"},
    })


def _retrieval(args: argparse.Namespace) -> int:
    from openalign.cli._config_args import config_from_args
    from openalign.train.finetune import RetrievalFinetuneConfig, finetune_retrieval

    cfg = config_from_args(RetrievalFinetuneConfig, args)
    result = finetune_retrieval(cfg, resume=bool(args.resume))
    print(f"fine-tuned {result.step} steps, {result.samples_per_s:.1f} samples/s; model: {result.model_dir}")
    return 0


def _classify(args: argparse.Namespace) -> int:
    from openalign.cli._config_args import config_from_args
    from openalign.train.finetune import ClassifyFinetuneConfig, finetune_classify

    out = finetune_classify(config_from_args(ClassifyFinetuneConfig, args))
    print(f"fine-tuned classifier: {out}/model, {out}/classifier.safetensors, {out}/classes.json")
    return 0
