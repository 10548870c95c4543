"""Queries over an index: the one module behind the CLI, the HTTP API and Python use.

text -> images, image -> images, image (uploaded or an indexed id) + weighted text terms, and
image -> captions when captions were indexed. A composed query is the L2-normalised sum of
L2-normalised embeddings, each times its weight (the paper's ``image + "beige" - "black"``)::

    q = normalise( sum_i w_i * normalise(e_i) )

>>> s = Searcher.open("index/")
>>> s.search(Query(text="a red circle"), k=5)
>>> s.search(Query(image_id=3, terms=(Term("blue", 1.0), Term("red", -1.0))))

A :class:`SearchIndex` is one complete version of an index directory (its files are checked to
come from the same version); :class:`LiveSearcher` follows the directory while a server runs,
handing each request the newest complete version.
"""

from __future__ import annotations

import functools
import logging
import math
import mmap
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence
from urllib.parse import urlparse
from urllib.request import url2pathname

import faiss
import numpy as np
import pandas as pd
from PIL import Image

from openalign.errors import UserError
from openalign.models.bundle import load_bundle
from openalign.search.index import (
    CAPTIONS,
    EMBEDDINGS,
    INDEX_FILE,
    MANIFEST,
    METADATA,
    THUMBNAILS,
    IndexParams,
    apply_search_params,
    read_manifest,
    read_vector_index,
    resolve_index_dir,
)

log = logging.getLogger(__name__)
LOAD_TRIES = 5  # a load that races this many index swaps in a row gives up
DECODE_SIDE = 1024  # query images are decoded with their shorter side near this when the encoder does not say


class Encoder(Protocol):
    """What queries need from a model (``openalign.models.bundle.ModelBundle`` is one)."""

    @property
    def dim(self) -> int: ...

    def encode_texts(self, texts: Sequence[str]) -> Any: ...  # (N, D) L2-normalised

    def encode_images(self, images: Sequence[Image.Image]) -> Any: ...  # (N, D) L2-normalised


class UnknownId(UserError, KeyError):
    """An image id that is not in the index (the API answers 404)."""


@dataclass(frozen=True)
class Term:
    """A text modifier: ``Term("beige", 1.0)`` adds, ``Term("black", -1.0)`` subtracts."""

    text: str
    weight: float = 1.0


@dataclass(frozen=True)
class Query:
    text: str | None = None
    image: Image.Image | None = field(default=None, compare=False)
    image_id: int | None = None
    terms: tuple[Term, ...] = ()


@dataclass(frozen=True)
class SearchOptions:
    """One search as ``openalign search`` states it: the index, the query's parts, how many hits, how printed."""

    index: str = field(metadata={"help": "index directory (openalign index build)"})
    text: str | None = field(default=None, metadata={"help": "text query"})
    image: str | None = field(default=None, metadata={"help": "query image file"})
    image_id: int | None = field(default=None, metadata={"help": "query by an indexed image id"})
    add: tuple[str, ...] = field(default=(), metadata={
        "repeat": True, "metavar": "TEXT", "help": "add a text term (repeatable)"})
    subtract: tuple[str, ...] = field(default=(), metadata={
        "repeat": True, "metavar": "TEXT", "help": "subtract a text term (repeatable)"})
    weight: float = field(default=1.0, metadata={"help": "weight of every --add/--subtract term"})
    captions: bool = field(default=False, metadata={"help": "return indexed captions instead of images"})
    k: int = field(default=10, metadata={"flag": "-k", "help": "number of results"})
    model_dir: str | None = field(default=None, metadata={
        "flag": "--model", "help": "model directory (default: the one in the manifest)"})
    json: bool = field(default=False, metadata={"help": "print JSON lines instead of a table"})


@dataclass(frozen=True)
class Hit:
    id: int
    score: float
    path: str | None
    url: str | None
    caption: str | None
    width: int
    height: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalise(v: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """L2-normalise the last axis."""
    v = np.asarray(v, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), eps)


def compose(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """normalise(sum_i w_i * normalise(v_i)) for (D,) vectors; a UserError if they cancel out."""
    if not vectors:
        raise UserError("query: empty; give a text, an image or an image id")
    total = sum(float(w) * normalise(v) for v, w in zip(vectors, weights))
    if float(np.linalg.norm(total)) < 1e-6:
        raise UserError("query: the terms cancel out (their weighted sum is zero); change a term or its weight")
    return normalise(total)


def _as_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


class SearchIndex:
    """A loaded index directory: FAISS vectors, metadata, float16 vectors (mmap), thumbnails (mmap)."""

    def __init__(self, path: str | Path, params: IndexParams | None = None) -> None:
        self.source = Path(path)  # the path as given (``dir`` may be its ``.old`` copy mid-swap)
        self.params_override = params
        for attempt in range(LOAD_TRIES):
            # Read the manifest's bytes, load every file, read them again: equal bytes (each version
            # has a unique id) mean no swap happened in between, so all files are of one version.
            try:
                d = resolve_index_dir(path)
                before = (d / MANIFEST).read_bytes()
            except FileNotFoundError:  # the folder was swapped out between the two calls
                continue
            try:
                self._load(d, params)
            except Exception:
                if _manifest_bytes(d) != before and attempt + 1 < LOAD_TRIES:
                    continue  # a swap mid-load mixed two versions: load again
                raise
            if _manifest_bytes(d) == before:
                return
        raise UserError(f"--index {path}: the index was replaced {LOAD_TRIES} times while loading it; "
                        "try again when `openalign index add` has finished")

    def _load(self, d: Path, params: IndexParams | None) -> None:
        self.dir = d
        self.manifest = read_manifest(d)
        fields = {k: v for k, v in self.manifest["index_params"].items() if k in IndexParams.__dataclass_fields__}
        self.params = params or IndexParams(**fields)
        self.index = read_vector_index(d)  # IVF lists on disk are memory-mapped
        apply_search_params(self.index, self.params)
        self.embeddings = np.load(d / EMBEDDINGS, mmap_mode="r")  # (N, D) float16
        self.meta = pd.read_parquet(d / METADATA)
        self._thumbs = _map_file(d / THUMBNAILS)
        self.captions = faiss.read_index(str(d / CAPTIONS)) if self.manifest.get("captions_indexed") else None
        if not (len(self.meta) == self.index.ntotal == len(self.embeddings) == self.manifest["count"]):
            raise UserError(f"{d}: {METADATA}, {INDEX_FILE} and {EMBEDDINGS} disagree on the image count; "
                            "rebuild the index with `openalign index build`")

    @property
    def version(self) -> str:
        """The loaded version's id (the manifest's ``version``; ``updated`` for indexes written before it existed)."""
        return str(self.manifest.get("version") or self.manifest.get("updated") or "")

    @functools.cached_property
    def local_root(self) -> str | None:
        """The deepest folder holding every indexed local file (None when no image has a local path)."""
        paths = self.meta["path"].dropna().astype(str).str.split("#", n=1).str[0]
        urls = self.meta.loc[self.meta["path"].isna(), "url"].dropna().astype(str)
        urls = urls[urls.str.lower().str.startswith("file:")].map(lambda u: local_path({"url": u}))
        dirs = {os.path.dirname(p) for p in pd.concat([paths, urls]).unique() if p}
        dirs.discard("")
        if not dirs:
            return None
        try:
            return os.path.commonpath(sorted(dirs))
        except ValueError:  # relative and absolute paths mixed, or other drives
            return None

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def exact(self) -> bool:
        return self.manifest["index_type"] == "flat"

    def search_vectors(self, q: np.ndarray, k: int, rerank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) queries -> (scores, ids), each (Q, min(k, N)), best first.

        IVF-PQ (approximate scores) fetches ``k * rerank`` candidates and re-scores them with the
        stored vectors; flat and HNSW already score with the full vectors.
        """
        q = np.ascontiguousarray(normalise(np.atleast_2d(q)), dtype=np.float32)
        k = max(1, min(int(k), self.count))
        factor = self.params.rerank if rerank is None else rerank
        if self.manifest["index_type"] != "ivfpq" or factor <= 1:
            return self.index.search(q, k)
        _, cand = self.index.search(q, min(k * factor, self.count))
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        ids = np.full((len(q), k), -1, dtype=np.int64)
        for r in range(len(q)):
            c = np.sort(cand[r][cand[r] >= 0])  # sorted ids: sequential reads of the mmap
            s = self.embeddings[c].astype(np.float32) @ q[r]
            top = np.argsort(-s, kind="stable")[:k]
            scores[r, : len(top)], ids[r, : len(top)] = s[top], c[top]
        return scores, ids

    def vector(self, image_id: int) -> np.ndarray:
        self._check(image_id)
        return normalise(self.embeddings[image_id].astype(np.float32))

    def record(self, image_id: int) -> dict[str, Any]:
        self._check(image_id)
        row = self.meta.iloc[image_id]
        return {c: _plain(row[c]) for c in self.meta.columns}

    def hit(self, image_id: int, score: float) -> Hit:
        r = self.record(image_id)
        return Hit(id=int(image_id), score=float(score), path=r["path"], url=r["url"], caption=r["caption"],
                   width=int(r["width"]), height=int(r["height"]))

    def thumbnail(self, image_id: int) -> bytes | None:
        """The stored JPEG thumbnail of ``image_id``, or None if none was stored."""
        r = self.record(image_id)
        if r["thumb_offset"] < 0 or self._thumbs is None:
            return None
        return bytes(self._thumbs[r["thumb_offset"] : r["thumb_offset"] + r["thumb_size"]])

    def _check(self, image_id: int) -> None:
        if not (isinstance(image_id, (int, np.integer)) and 0 <= image_id < self.count):
            raise UnknownId(f"image id {image_id!r}: not in the index (ids are 0..{self.count - 1})")


def _plain(v: Any) -> Any:
    if isinstance(v, np.integer):
        return int(v)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


def _manifest_bytes(d: Path) -> bytes | None:
    try:
        return (d / MANIFEST).read_bytes()
    except OSError:
        return None


def local_path(record: dict[str, Any]) -> str | None:
    """A record's local file (``path``, or a ``file://`` URL's path), without a ``#member`` suffix."""
    path = record.get("path")
    url = record.get("url")
    if not path and isinstance(url, str) and url.lower().startswith("file:"):
        path = url2pathname(urlparse(url).path)
    return path.split("#", 1)[0] if isinstance(path, str) and path else None


def _map_file(path: Path) -> mmap.mmap | None:
    if not path.is_file() or path.stat().st_size == 0:
        return None
    with open(path, "rb") as fh:
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)


class Searcher:
    """Queries against one index with one encoder (loaded from the manifest's model dir if not given)."""

    def __init__(self, index: SearchIndex, encoder: Encoder | None = None) -> None:
        self.index = index
        self.encoder = encoder if encoder is not None else _load_encoder(index)
        if int(self.encoder.dim) != index.dim:
            raise UserError(f"model: embedding dim {self.encoder.dim} but the index at {index.dir} has dim {index.dim}; "
                            "query with the model the index was built with")

    @classmethod
    def open(cls, path: str | Path, encoder: Encoder | None = None, params: IndexParams | None = None) -> "Searcher":
        return cls(SearchIndex(path, params), encoder)

    def embed(self, q: Query) -> np.ndarray:
        """The query's (D,) vector: normalise(sum of weighted, normalised parts)."""
        vectors: list[np.ndarray] = []
        weights: list[float] = []
        if q.image is not None:
            vectors.append(_as_numpy(self.encoder.encode_images([q.image]))[0])
            weights.append(1.0)
        if q.image_id is not None:
            vectors.append(self.index.vector(q.image_id))
            weights.append(1.0)
        texts = ([q.text] if q.text and q.text.strip() else []) + [t.text for t in q.terms if t.weight != 0]
        tw = ([1.0] if q.text and q.text.strip() else []) + [float(t.weight) for t in q.terms if t.weight != 0]
        if any(not t.strip() for t in texts):
            raise UserError("query terms: a term is empty; give each + / - term some text")
        if any(not math.isfinite(w) for w in tw):
            raise UserError("query terms: a weight is not a finite number")
        if texts:
            vectors.extend(_as_numpy(self.encoder.encode_texts(texts)))
            weights.extend(tw)
        return compose(vectors, weights)

    def search(self, q: Query, k: int = 10) -> list[Hit]:
        scores, ids = self.index.search_vectors(self.embed(q)[None], k)
        return [self.index.hit(int(i), float(s)) for s, i in zip(scores[0], ids[0]) if i >= 0]

    def captions(self, q: Query, k: int = 5) -> list[Hit]:
        """Indexed captions nearest to the query (typically an image): image -> text retrieval."""
        if self.index.captions is None:
            raise UserError(f"{self.index.dir}: no captions were indexed; build from sources with captions")
        v = self.embed(q)[None].astype(np.float32)
        scores, ids = self.index.captions.search(v, max(1, min(int(k), self.index.captions.ntotal)))
        return [self.index.hit(int(i), float(s)) for s, i in zip(scores[0], ids[0]) if i >= 0]


class LiveSearcher:
    """Follows an index directory while serving: :meth:`current` is a Searcher over its newest complete version.

    A request takes one Searcher with :meth:`current` and uses it to the end, so the vectors,
    metadata and thumbnails it sees are of one version: a query during ``openalign index add``
    answers from the old or the new index, never a mix. :meth:`current` notices a new version
    by a changed ``manifest.json`` (a swap writes a new file) and loads it in a background thread,
    serving the previous version until the new one is ready (both are in memory for that long).
    A version that fails to load, or was built with another model, is logged and skipped; the
    previous one keeps serving.
    """

    def __init__(self, searcher: Searcher, follow: bool = True) -> None:
        self._searcher = searcher
        self.follow = follow
        self._stamp = _stamp(searcher.index.source)
        self._lock = threading.Lock()  # guards _loader
        self._reload_lock = threading.Lock()  # one reload at a time
        self._loader: threading.Thread | None = None

    @classmethod
    def open(cls, path: str | Path, encoder: Encoder | None = None, params: IndexParams | None = None) -> "LiveSearcher":
        return cls(Searcher.open(path, encoder, params))

    def current(self) -> Searcher:
        """The newest loaded version (starts loading a newer one in the background if the folder changed)."""
        if self.follow and _stamp(self._searcher.index.source) not in (None, self._stamp):
            with self._lock:
                if self._loader is None or not self._loader.is_alive():
                    self._loader = threading.Thread(target=self.reload, name="openalign-index-reload", daemon=True)
                    self._loader.start()
        return self._searcher

    def reload(self) -> bool:
        """Load the index folder's current version now if it changed; True if a new version was loaded."""
        with self._reload_lock:
            old = self._searcher
            stamp = _stamp(old.index.source)
            if stamp is None or stamp == self._stamp:
                return False
            try:
                index = SearchIndex(old.index.source, old.index.params_override)
                was, now = ((i.manifest.get("model") or {}).get("fingerprint") for i in (old.index, index))
                if was and now and was != now:
                    raise UserError("it was rebuilt with another model; restart the server to serve it")
                new = Searcher(index, old.encoder) if index.version != old.index.version else None
            except Exception as exc:  # keep serving the loaded version
                log.warning("index %s changed but could not be loaded (%s); still serving version %s",
                            old.index.source, exc, old.index.version)
                new = None
            self._stamp = stamp  # a later swap changes the stamp again and is picked up then
            if new is None:
                return False
            self._searcher = new  # one reference assignment: requests see the old or the new Searcher
            log.info("index %s: now serving version %s (%d images)", index.source, index.version, index.count)
            return True


def _stamp(index_dir: Path) -> tuple[int, int, int] | None:
    """Identity of the folder's manifest file: a swap or rewrite changes it; None while it is missing."""
    try:
        st = os.stat(index_dir / MANIFEST)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def decode_side(encoder: Encoder) -> int:
    """Shorter side to decode query images at: twice the encoder's input size (its transform's resize)."""
    t = getattr(encoder, "transform", None)
    size = max(int(getattr(t, "resize", 0) or 0), int(getattr(t, "size", 0) or 0))
    return 2 * size if size > 0 else DECODE_SIDE


def decode_reduced(img: Image.Image, side: int) -> Image.Image:
    """Decode ``img`` (opened, not yet loaded) as RGB with its shorter side reduced to about ``side``.

    A JPEG is decoded at 1/2, 1/4 or 1/8 scale by the decoder itself (``draft``), so a huge JPEG
    never exists in memory at full size; other formats are decoded, then shrunk (``thumbnail``).
    Images already small enough are left as they are.
    """
    if img.format in ("JPEG", "MPO"):
        img.draft("RGB", (side, side))  # the largest of 1/1..1/8 keeping both sides >= side
    img.load()
    img = img.convert("RGB")
    w, h = img.size
    if min(w, h) > side:
        scale = side / min(w, h)
        img.thumbnail((max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))), Image.BICUBIC)
    return img


def _load_encoder(index: SearchIndex, **options: Any) -> Encoder:
    model_dir = (index.manifest.get("model") or {}).get("dir")
    if not model_dir:
        raise UserError(f"{index.dir / 'manifest.json'}: model.dir is not set (index built from raw vectors); "
                        "pass an encoder, or --model DIR")
    if not Path(model_dir).is_dir():
        raise UserError(f"{index.dir / 'manifest.json'}: model.dir {model_dir} does not exist; "
                        "pass --model DIR with the model the index was built with")
    return load_bundle(model_dir, **options)


def manifest_model_dir(index_dir: str | Path) -> str | None:
    """The model directory an index records (None when built from raw vectors)."""
    return (read_manifest(index_dir).get("model") or {}).get("dir")


__all__ = ["Encoder", "Hit", "LiveSearcher", "Query", "SearchIndex", "Searcher", "Term", "UnknownId", "compose",
           "decode_reduced", "decode_side", "local_path", "normalise"]
