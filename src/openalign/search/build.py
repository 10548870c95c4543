"""Embed an image source with a model and write (or extend) an index.

Embedding goes through the shared pipeline (:func:`openalign.models.embed.embed_batches`); tests
and benchmarks may pass another ``embed`` function with the same signature.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from openalign.errors import UserError
from openalign.models.bundle import load_bundle
from openalign.models.embed import embed_batches, model_identity
from openalign.search.index import (
    IndexContents,
    IndexParams,
    append_contents,
    normalise_metadata,
    read_manifest,
    write_index,
)
from openalign.search.sources import make_source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceOptions:
    """Which images :func:`build_index` / :func:`add_to_index` embed (exactly one source) and how: their keywords."""

    images: str | None = field(default=None, metadata={
        "one_of": "source", "help": "folder of images (NAME.txt beside NAME.jpg is its caption)"})
    shards: str | None = field(default=None, metadata={
        "one_of": "source", "help": "WebDataset shards, e.g. 'shards/{00000..00009}.tar'"})
    parquet: str | None = field(default=None, metadata={
        "one_of": "source", "help": "Parquet table with a path or url column and optional caption column"})
    batch_size: int = 32
    num_workers: int = field(default=2, metadata={"flag": "--workers", "help": "DataLoader workers decoding images"})
    thumb_size: int = field(default=192, metadata={"help": "stored thumbnail size in px (0 = none)"})
    index_captions: bool = field(default=True, metadata={"flag": "--captions", "help": "index caption embeddings"})


def collect(bundle: Any, batches: Iterator[dict[str, Any]], index_captions: bool = True) -> IndexContents:
    """Gather embedded batches into in-memory index contents (ids from 0; thumbnails concatenated)."""
    vecs: list[np.ndarray] = []
    rows: list[dict[str, Any]] = []
    thumbs = bytearray()
    stats: Counter = Counter()
    for b in batches:
        for reason, detail in b["errors"]:
            stats[f"skipped_{reason}"] += 1
            log.debug("skipped %s: %s", reason, detail)
        if b["vectors"] is None:
            continue
        vecs.append(b["vectors"])
        for r in b["rows"]:
            thumb = r.pop("thumb", b"")
            r["thumb_offset"], r["thumb_size"] = (len(thumbs), len(thumb)) if thumb else (-1, 0)
            thumbs += thumb
            rows.append(r)
    stats["indexed"] = len(rows)
    dim = int(bundle.dim)
    vectors = np.concatenate(vecs).astype(np.float32) if vecs else np.zeros((0, dim), np.float32)
    meta = normalise_metadata(rows)
    cap_vecs = cap_ids = None
    if index_captions and len(meta) and meta["caption"].notna().any():
        cap_ids = meta.index[meta["caption"].notna()].to_numpy(np.int64)
        cap_vecs = np.asarray(bundle.encode_texts(meta["caption"][cap_ids].tolist())).astype(np.float32)
    return IndexContents(vectors=vectors, metadata=meta, model=model_identity(bundle), thumbnails=bytes(thumbs),
                         caption_vectors=cap_vecs, caption_ids=cap_ids, stats=dict(stats))


def build_index(out: str | Path, model_dir: str | Path | None, images: str | None = None, shards: str | None = None,
                parquet: str | None = None, params: IndexParams = IndexParams(), batch_size: int = 32,
                num_workers: int = 2, thumb_size: int = 192, index_captions: bool = True,
                embed: Callable[..., Iterator[dict[str, Any]]] = embed_batches, encoder: Any = None) -> dict:
    """Embed one source with the model at ``model_dir`` (or a ready ``encoder``) and write a new index at ``out``."""
    bundle = encoder if encoder is not None else load_encoder(model_dir)
    dataset, total = make_source(images, shards, parquet, bundle.transform, thumb_size)
    contents = collect(bundle, embed(bundle, dataset, batch_size, num_workers, total), index_captions)
    contents.params = params
    return write_index(out, contents)


def add_to_index(index_dir: str | Path, model_dir: str | Path | None = None, images: str | None = None,
                 shards: str | None = None, parquet: str | None = None, batch_size: int = 32, num_workers: int = 2,
                 thumb_size: int = 192, index_captions: bool = True,
                 embed: Callable[..., Iterator[dict[str, Any]]] = embed_batches, encoder: Any = None) -> dict:
    """Embed one more source and append it to the index at ``index_dir`` (the vector index is not retrained)."""
    manifest = read_manifest(index_dir)
    model_dir = model_dir or (manifest.get("model") or {}).get("dir")
    if not model_dir and encoder is None:
        raise UserError(f"{index_dir}/manifest.json: model.dir is not set; pass --model DIR")
    bundle = encoder if encoder is not None else load_encoder(model_dir)
    ident = model_identity(bundle)
    want = (manifest.get("model") or {}).get("fingerprint")
    if want and ident.get("fingerprint") and want != ident["fingerprint"]:
        raise UserError(f"--model {model_dir}: not the model the index was built with ({manifest['model'].get('dir')}); "
                        "append with that model or build a new index")
    dataset, total = make_source(images, shards, parquet, bundle.transform, thumb_size)
    contents = collect(bundle, embed(bundle, dataset, batch_size, num_workers, total), index_captions)
    if len(contents.vectors) == 0:
        raise UserError(f"index add: no readable images in the source (skipped: {contents.stats})")
    return append_contents(index_dir, contents)


def load_encoder(model_dir: str | Path, device: str = "cpu", bf16: bool = False, image_precision: str = "fp32") -> Any:
    """The model bundle at ``model_dir`` (a clear error when it is not a folder)."""
    if not Path(model_dir).is_dir():
        raise UserError(f"--model {model_dir}: not a folder; pass a model directory written by `openalign train`")
    return load_bundle(model_dir, device=device, bf16=bf16, image_precision=image_precision)
