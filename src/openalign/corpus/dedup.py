"""Remove near-duplicates of evaluation images from training shards (the paper: cosine > 0.975).

Two methods: ``phash`` (default, no model): 64-bit perceptual hashes (imagehash), a duplicate when
the Hamming distance to any evaluation image is <= ``max_hamming``; ``embedding``: image embeddings
of a model directory (``load_bundle``), a duplicate when the cosine similarity is > ``cosine``.

Evaluation images come as a folder of image files (recursively), a Karpathy-split JSON
(``images[].filepath/filename`` under ``image_root``, default the JSON's folder), or shards.
Shards are rewritten into ``out_dir`` under the same names, whole samples (all of a key's files)
kept or dropped; a corrupt image or a broken shard is skipped and counted. ``dedup_report.json``
lists every removed sample with the evaluation image it matched.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

from openalign.errors import UserError
from openalign.io import atomic_write_text, atomic_write_with
from openalign.media.images import iter_images, try_open_rgb
from openalign.media.shards import (
    group_image_bytes,
    group_meta,
    iter_samples,
    read_tar_groups,
    resolve_shards,
    sample_image_bytes,
    write_tar,
)
from openalign.models.bundle import load_bundle


@dataclass(frozen=True)
class DedupConfig:
    method: str = field(default="phash", metadata={"choices": ("phash", "embedding")})
    max_hamming: int = field(default=4, metadata={  # of 64 bits
        "help": "phash: duplicate at this many differing bits or fewer"})
    cosine: float = field(default=0.975, metadata={  # the paper
        "help": "embedding: duplicate above this cosine similarity"})
    model_dir: str | None = field(default=None, metadata={  # loadable by load_bundle
        "flag": "--model", "help": "embedding: model directory"})
    batch_size: int = field(default=64, metadata={"help": "embedding: images per forward pass"})


@dataclass
class DedupReport:
    config: dict[str, Any]
    eval_images: int = 0
    samples_in: int = 0
    samples_out: int = 0
    skipped: Counter = field(default_factory=Counter)
    removed: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        d = asdict(self)
        d["skipped"] = dict(self.skipped)
        return json.dumps(d, indent=2)


# ---------------------------------------------------------------- evaluation images


def eval_image_sources(spec: str | Path, image_root: str | Path | None = None) -> Iterator[tuple[str, Any]]:
    """(name, path or bytes) for each evaluation image in a folder, a Karpathy JSON or shards."""
    p = Path(spec)
    if p.is_dir():
        files = list(iter_images(p))
        if not files:
            raise UserError(f"{p}: no image files found; pass a folder of evaluation images, a Karpathy JSON or shards")
        yield from files
    elif p.suffix.lower() == ".json":
        yield from _karpathy_images(p, Path(image_root) if image_root else p.parent)
    else:
        yield from _shard_images(str(spec))


def _karpathy_images(path: Path, root: Path) -> Iterator[tuple[str, Path]]:
    try:
        data = json.loads(path.read_text())
        images = data["images"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{path}: field 'images' missing or not JSON; pass a Karpathy split file "
                        "({\"images\": [{\"filepath\": ..., \"filename\": ...}]})") from None
    for im in images:
        if "filename" not in im:
            raise UserError(f"{path}: an entry of 'images' lacks field 'filename'; fix the file or pass a folder")
        rel = Path(im.get("filepath", "")) / im["filename"]
        yield rel.as_posix(), root / rel


def _shard_images(spec: str) -> Iterator[tuple[str, bytes]]:
    counts: Counter = Counter()
    for s in iter_samples(resolve_shards(spec, flag="--eval-images"), counts):
        data = sample_image_bytes(s)
        if data is not None:
            yield f"{s.get('__url__', '')}:{s['__key__']}", data


# ---------------------------------------------------------------- matchers


class PHashMatcher:
    """Perceptual hashes; a match is the closest evaluation image within ``max_hamming`` bits."""

    def __init__(self, cfg: DedupConfig) -> None:
        self.max_hamming = cfg.max_hamming
        self.ref = np.zeros(0, np.uint64)

    @staticmethod
    def hashes(images: list[Image.Image]) -> np.ndarray:
        try:  # lazy: imagehash (with scipy) is an optional dependency, needed by this method only
            import imagehash
        except ImportError:
            raise UserError("dedup --method phash needs imagehash: pip install imagehash") from None
        bits = np.stack([imagehash.phash(im).hash.reshape(-1) for im in images]) if images else np.zeros((0, 64), bool)
        return np.packbits(bits, axis=1).view(">u8").reshape(-1).astype(np.uint64)

    def fit(self, images: list[Image.Image]) -> None:
        self.ref = np.concatenate([self.ref, self.hashes(images)])

    def match(self, images: list[Image.Image]) -> list[tuple[int, float] | None]:
        if not len(self.ref) or not images:
            return [None] * len(images)
        dist = np.bitwise_count(self.hashes(images)[:, None] ^ self.ref[None, :])  # (B, E)
        best = dist.argmin(axis=1)
        return [(int(j), float(dist[i, j])) if dist[i, j] <= self.max_hamming else None for i, j in enumerate(best)]


class EmbeddingMatcher:
    """Image embeddings of a model; a match is the most similar evaluation image with cosine > threshold."""

    def __init__(self, cfg: DedupConfig) -> None:
        if not cfg.model_dir:
            raise UserError("dedup method 'embedding' needs a model: pass --model DIR (a directory from `openalign train`)")
        self.bundle = load_bundle(cfg.model_dir)
        self.threshold = cfg.cosine
        self.parts: list[np.ndarray] = []

    def fit(self, images: list[Image.Image]) -> None:
        self.parts.append(self.bundle.encode_images(images).numpy())

    def match(self, images: list[Image.Image]) -> list[tuple[int, float] | None]:
        ref = np.concatenate(self.parts) if self.parts else np.zeros((0, self.bundle.dim), np.float32)
        if not len(ref) or not images:
            return [None] * len(images)
        sims = self.bundle.encode_images(images).numpy() @ ref.T  # (B, E), embeddings are L2-normalised
        best = sims.argmax(axis=1)
        return [(int(j), float(sims[i, j])) if sims[i, j] > self.threshold else None for i, j in enumerate(best)]


def make_matcher(cfg: DedupConfig) -> PHashMatcher | EmbeddingMatcher:
    if cfg.method == "phash":
        return PHashMatcher(cfg)
    if cfg.method == "embedding":
        return EmbeddingMatcher(cfg)
    raise UserError(f"dedup method {cfg.method!r} unknown; use --method phash or --method embedding")


def fit_eval_images(matcher: Any, spec: str | Path, image_root: str | Path | None, batch: int,
                    report: DedupReport) -> list[str]:
    names: list[str] = []
    buf: list[Image.Image] = []
    for name, src in eval_image_sources(spec, image_root):
        img = try_open_rgb(src)
        if img is None:
            report.skipped["unreadable_eval_image"] += 1
            continue
        names.append(name)
        buf.append(img)
        if len(buf) >= batch:
            matcher.fit(buf)
            buf = []
    matcher.fit(buf)
    if not names:
        raise UserError(f"{spec}: no readable evaluation images; pass a folder, a Karpathy JSON or shards of images")
    report.eval_images = len(names)
    return names


# ---------------------------------------------------------------- shards


def dedup_shard(shard: str | Path, out: Path, matcher: Any, eval_names: list[str], cfg: DedupConfig,
                report: DedupReport) -> None:
    groups = read_tar_groups(shard, report.skipped)
    keys = list(groups)
    report.samples_in += len(keys)
    drop: set[str] = set()
    for i in range(0, len(keys), cfg.batch_size):
        batch = keys[i : i + cfg.batch_size]
        images = {k: try_open_rgb(group_image_bytes(groups[k])) for k in batch}
        for k in batch:
            if images[k] is None:
                report.skipped["corrupt_image"] += 1
                drop.add(k)
        good = [k for k in batch if images[k] is not None]
        for k, hit in zip(good, matcher.match([images[k] for k in good])):
            if hit is not None:
                meta = group_meta(groups[k])
                report.removed.append({"shard": Path(shard).name, "key": k, "url": meta.get("url"),
                                       "eval_image": eval_names[hit[0]], "score": hit[1]})
                drop.add(k)
    kept = {k: v for k, v in groups.items() if k not in drop}
    report.samples_out += len(kept)
    atomic_write_with(out, lambda tmp: write_tar(tmp, kept))


def dedup_shards(shards: str | list[str], eval_spec: str | Path, out_dir: str | Path,
                 cfg: DedupConfig = DedupConfig(), image_root: str | Path | None = None,
                 on_shard: Callable[[str], None] | None = None) -> DedupReport:
    """Copy ``shards`` into ``out_dir`` without near-duplicates of the evaluation images."""
    urls = _shard_list(shards)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = DedupReport(config=asdict(cfg))
    matcher = make_matcher(cfg)
    eval_names = fit_eval_images(matcher, eval_spec, image_root, cfg.batch_size, report)
    for url in urls:
        dedup_shard(url, out_dir / Path(url).name, matcher, eval_names, cfg, report)
        if on_shard:
            on_shard(url)
    atomic_write_text(out_dir / "dedup_report.json", report.to_json())
    return report


def _shard_list(shards: str | list[str]) -> list[str]:
    urls = resolve_shards(shards if isinstance(shards, list) else str(shards))
    names = [Path(u).name for u in urls]
    if len(set(names)) != len(names):
        raise UserError(f"{shards}: two shards share a file name; dedup writes them under their names into one folder")
    return urls
