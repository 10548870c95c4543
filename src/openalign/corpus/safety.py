"""The paper's first image rule: drop unsafe images (pornographic, violent...), with a pluggable classifier.

ALIGN does not say which classifier it used. Here the classifier is a model directory (anything
``load_bundle`` loads: a dual encoder from ``openalign train`` or the ``kakaobrain/align-base``
layout) used one of two ways:

- ``linear``: a linear head over the model's L2-normalised image embeddings, a safetensors file
  with ``weight`` (D,) or (1, D) and ``bias`` () or (1,); score = weight . embedding + bias (a logit).
  ``head`` names the file; by default ``MODEL/safety_head.safetensors`` when it exists.
- ``zero-shot``: prompts through the dual encoder; score = the best cosine to an unsafe prompt
  minus the best cosine to a safe prompt (a cosine margin).

An image is unsafe when its score is > ``threshold`` (0: logit 0 is p = 0.5; margin 0 is "closer
to an unsafe prompt"). An image that does not decode cannot be judged and is dropped, counted
apart. Shards are rewritten into ``out_dir`` under their names, whole samples kept or dropped,
atomically; ``safety_stats.json`` holds the counts and the removed samples' keys and scores.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from openalign.errors import UserError
from openalign.io import atomic_write_text, atomic_write_with
from openalign.media.images import try_open_rgb
from openalign.media.shards import (
    group_image_bytes,
    group_meta,
    read_tar_groups,
    resolve_shards,
    write_tar,
)
from openalign.models.bundle import ModelBundle, load_bundle

STATS_FILE = "safety_stats.json"
HEAD_FILE = "safety_head.safetensors"
UNSAFE_PROMPTS = ("a pornographic photo", "a photo of nudity", "a sexually explicit image",
                  "a violent gory photo", "a photo of a dead body")
SAFE_PROMPTS = ("a photo", "an everyday photo", "a safe for work photo", "a picture of an object")


@dataclass(frozen=True)
class SafetyConfig:
    model_dir: str | None = field(default=None, metadata={
        "help": "classifier model directory (default: none, the rule is skipped)"})
    classifier: str = field(default="auto", metadata={
        "choices": ("auto", "linear", "zero-shot"),
        "help": "auto: linear when a head file exists, else zero-shot prompts"})
    head: str | None = field(default=None, metadata={
        "help": "linear head safetensors (weight, bias) (default: MODEL/safety_head.safetensors)"})
    threshold: float = field(default=0.0, metadata={"help": "unsafe when the score (logit or cosine margin) is >"})
    unsafe_prompts: tuple[str, ...] = field(default=UNSAFE_PROMPTS, metadata={
        "repeat": True, "help": "zero-shot: an unsafe prompt (repeat the flag)"})
    safe_prompts: tuple[str, ...] = field(default=SAFE_PROMPTS, metadata={
        "repeat": True, "help": "zero-shot: a safe prompt (repeat the flag)"})
    batch_size: int = field(default=64, metadata={"help": "images per forward pass"})


@dataclass
class SafetyStats:
    config: dict[str, Any]
    classifier: str = ""
    samples_in: int = 0
    samples_out: int = 0
    unsafe: int = 0
    skipped: Counter = field(default_factory=Counter)  # corrupt_image, broken_shard
    removed: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        d = asdict(self)
        d["skipped"] = dict(self.skipped)
        return json.dumps(d, indent=2)


class SafetyClassifier:
    """Scores images: higher is less safe. ``kind`` is "linear" or "zero-shot"."""

    def __init__(self, bundle: ModelBundle, kind: str, weight: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None, unsafe_prompts: tuple[str, ...] = UNSAFE_PROMPTS,
                 safe_prompts: tuple[str, ...] = SAFE_PROMPTS) -> None:
        self.bundle, self.kind = bundle, kind
        if kind == "linear":
            assert weight is not None and bias is not None
            self.weight, self.bias = weight.reshape(-1).float(), bias.reshape(-1).float()
            if self.weight.numel() != bundle.dim or self.bias.numel() != 1:
                raise UserError(f"safety head: weight must have {bundle.dim} values (the image embedding size) and "
                                f"bias 1; got {self.weight.numel()} and {self.bias.numel()}")
        else:
            if not unsafe_prompts or not safe_prompts:
                raise UserError("zero-shot safety needs at least one unsafe and one safe prompt")
            self.unsafe_txt = bundle.encode_texts(list(unsafe_prompts))  # (U, D), L2-normalised
            self.safe_txt = bundle.encode_texts(list(safe_prompts))  # (S, D)

    def score_embeddings(self, emb: torch.Tensor) -> torch.Tensor:
        """(N, D) L2-normalised image embeddings -> (N,) scores."""
        if self.kind == "linear":
            return emb @ self.weight + self.bias
        return (emb @ self.unsafe_txt.T).max(dim=1).values - (emb @ self.safe_txt.T).max(dim=1).values

    @torch.no_grad()
    def score(self, images: list, batch_size: int = 64) -> torch.Tensor:
        return self.score_embeddings(self.bundle.encode_images(images, batch_size=batch_size))


def load_classifier(cfg: SafetyConfig) -> SafetyClassifier:
    if not cfg.model_dir:
        raise UserError("the safety rule needs a classifier: pass --model DIR (a dual encoder directory)")
    model_dir = Path(cfg.model_dir)
    head = Path(cfg.head) if cfg.head else model_dir / HEAD_FILE
    kind = cfg.classifier
    if kind == "auto":
        kind = "linear" if head.is_file() else "zero-shot"
    if kind == "linear" and not head.is_file():
        raise UserError(f"{head}: linear safety head not found; pass --head FILE (safetensors with weight, bias) "
                        "or use --classifier zero-shot")
    try:
        bundle = load_bundle(model_dir)
    except (OSError, ValueError) as exc:
        raise UserError(f"{model_dir}: cannot load the safety model ({exc}); pass a model directory") from None
    if kind == "linear":
        from safetensors.torch import load_file

        tensors = load_file(str(head))
        if not {"weight", "bias"} <= tensors.keys():
            raise UserError(f"{head}: needs tensors 'weight' and 'bias'; has {sorted(tensors)}")
        return SafetyClassifier(bundle, "linear", tensors["weight"], tensors["bias"])
    return SafetyClassifier(bundle, "zero-shot", unsafe_prompts=cfg.unsafe_prompts, safe_prompts=cfg.safe_prompts)


def safety_shard(shard: str, out: Path, clf: SafetyClassifier, cfg: SafetyConfig, stats: SafetyStats) -> None:
    groups = read_tar_groups(shard, stats.skipped)
    keys = list(groups)
    stats.samples_in += len(keys)
    drop: set[str] = set()
    for i in range(0, len(keys), cfg.batch_size):
        batch = keys[i : i + cfg.batch_size]
        images = {k: try_open_rgb(group_image_bytes(groups[k])) for k in batch}
        bad = [k for k in batch if images[k] is None]
        stats.skipped["corrupt_image"] += len(bad)
        drop.update(bad)
        good = [k for k in batch if images[k] is not None]
        if not good:
            continue
        for k, s in zip(good, clf.score([images[k] for k in good], cfg.batch_size).tolist()):
            if s > cfg.threshold:
                stats.unsafe += 1
                stats.removed.append({"shard": Path(shard).name, "key": k, "url": group_meta(groups[k]).get("url"),
                                      "score": round(float(s), 5)})
                drop.add(k)
    kept = {k: v for k, v in groups.items() if k not in drop}
    stats.samples_out += len(kept)
    atomic_write_with(out, lambda tmp: write_tar(tmp, kept))


def safety_shards(shards: str | list[str], out_dir: str | Path, cfg: SafetyConfig,
                  classifier: SafetyClassifier | None = None,
                  on_shard: Callable[[str], None] | None = None) -> SafetyStats:
    """Copy ``shards`` into ``out_dir`` without the images the classifier calls unsafe."""
    urls = resolve_shards(shards if isinstance(shards, list) else str(shards))
    names = [Path(u).name for u in urls]
    if len(set(names)) != len(names):
        raise UserError(f"{shards}: two shards share a file name; safety writes them under their names into one folder")
    clf = classifier or load_classifier(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = SafetyStats(config=asdict(cfg), classifier=clf.kind)
    for url, name in zip(urls, names):
        safety_shard(url, out / name, clf, cfg, stats)
        if on_shard:
            on_shard(url)
    atomic_write_text(out / STATS_FILE, stats.to_json())
    return stats
