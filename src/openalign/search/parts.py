"""Embedding parts: embed a collection once, split over processes and machines, and index it later.

clip-retrieval's split of embedding from indexing. ``openalign embed`` runs once per process
(``--rank R --world-size W``, defaulting to torchrun's ``RANK``/``WORLD_SIZE``); each process embeds
its share of the source through the one pipeline (:func:`openalign.models.embed.embed_batches`)
and writes it as parts; ``openalign index build --embeddings`` merges every rank's parts into an
index. Layout of an embeddings folder::

    manifest.json                      format, model identity, dim, dtype, source (kind, spec, count,
                                       fingerprint), world_size, part_size, captions, thumb_size;
                                       plus a summary refreshed by each rank when it finishes:
                                       per-part counts, skipped counts, complete
    img_emb/part-RRRRR-KKKKK.npy       (n, D) L2-normalised image embeddings (float16 by default)
    text_emb/part-RRRRR-KKKKK.npy      (n, D) caption embeddings, row i = image row i (zeros: no caption)
    metadata/part-RRRRR-KKKKK.parquet  gid, path, url, caption, width, height, thumb (JPEG bytes)
    progress/rank-RRRRR.json           the parts rank R has finished, with their counts

``gid`` is an image's place in the whole source, whatever the world size: its row in the file
list (``--images``, sorted) or table (``--parquet``), or ``shard_index * 2**32 + position in the
shard`` (``--shards``). Parts are sorted by gid inside; the index orders all images by gid, so the
same source gives the same index however many processes embedded it.

Work is split deterministically: file lists and table rows in contiguous slices per rank, cut
into parts of ``part_size`` images; shards by index modulo the world size, one part per shard.
Each part's files are written atomically (temp file, rename) and then recorded in the rank's
progress file, the commit point: a killed process, started again with the same arguments, skips
the parts its progress file lists and redoes only the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from openalign.errors import UserError
from openalign.io import atomic_write_text, atomic_write_with
from openalign.media.shards import (
    resolve_shards,
)
from openalign.models.embed import compute_identity, embed_batches, model_identity
from openalign.search.build import load_encoder
from openalign.search.index import (
    CAPTIONS,
    EMBEDDINGS,
    METADATA,
    THUMBNAILS,
    IndexContents,
    IndexParams,
    build_vector_index,
    finish_version,
    index_lock,
    index_manifest,
    normalise_metadata,
    save_vector_index,
    write_version,
)
from openalign.search.sources import (
    Record,
    RecordDataset,
    folder_records,
    parquet_records,
    shard_items,
)
from openalign.search.tuning import NpyVectors

log = logging.getLogger(__name__)

FORMAT = "openalign-embedding-parts/1"
MANIFEST = "manifest.json"
IMG_DIR, TEXT_DIR, META_DIR, PROGRESS_DIR = "img_emb", "text_emb", "metadata", "progress"
SHARD_STRIDE = 2**32  # gid of a shard sample: shard index * SHARD_STRIDE + position in the shard
_PART_DONE = "_part_done"  # a marker item: one DataLoader worker has sent every item of a part
_SPEC_KEYS = ("dim", "dtype", "world_size", "part_size", "captions", "thumb_size")


@dataclass(frozen=True)
class PartOptions:
    """How ``openalign embed`` splits the work and writes parts: the ``options`` of :func:`embed_to_parts`."""

    rank: int | None = field(default=None, metadata={"help": "this process's rank (default: $RANK, else 0)"})
    world_size: int | None = field(default=None, metadata={
        "help": "number of processes sharing the source (default: $WORLD_SIZE, else 1)"})
    part_size: int = field(default=10_000, metadata={
        "help": "images per part for --images/--parquet (each shard is one part)"})
    dtype: str = field(default="float16", metadata={
        "choices": ("float16", "float32"), "help": "stored embedding precision"})
    resume: bool = field(default=True, metadata={
        "help": "keep this rank's finished parts when the manifest matches (--no-resume: redo them)"})
    device: str = field(default="auto", metadata={
        "help": "cpu, cuda or cuda:N; auto: cuda:$LOCAL_RANK when there is a GPU, else cpu"})
    bf16: bool = field(default=False, metadata={"help": "encode under bfloat16 autocast (GPU)"})
    image_precision: str = field(default="fp32", metadata={
        "choices": ("fp32", "bf16", "auto"),
        "help": "image tower on a CPU: bf16 autocast is ~2x on b3-mini where the CPU has native bf16 "
                "(auto picks it there; held-out R@1 within 0.5 points of fp32, bench/precision_recall.py)"})


@dataclass(frozen=True)
class Part:
    """One output part: gids ``[lo, hi)`` of a file list / table, or the whole shard ``shard``."""

    name: str
    lo: int = 0
    hi: int = 0
    shard: int | None = None


@dataclass
class Source:
    """The source as every rank sees it: kind, the spec as given, its units and a fingerprint of them."""

    kind: str  # "images" | "parquet" | "shards"
    spec: str
    records: list[Record] | None = None
    urls: list[str] | None = None
    fingerprint: str = ""

    @property
    def count(self) -> int:
        return len(self.records) if self.records is not None else len(self.urls or [])

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "spec": self.spec, "count": self.count, "fingerprint": self.fingerprint}


# ---------------------------------------------------------------- planning


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): the arguments, else torchrun's RANK / WORLD_SIZE, else (0, 1)."""
    r = int(os.environ.get("RANK", "0")) if rank is None else rank
    w = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    if w < 1 or not 0 <= r < w:
        raise UserError(f"--rank {r} --world-size {w}: need world size >= 1 and 0 <= rank < world size")
    return r, w


def resolve_device(device: str = "auto") -> str:
    """``auto``: this process's GPU under torchrun (``LOCAL_RANK``), any GPU, else the CPU."""
    if device != "auto":
        return device
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"


def part_name(rank: int, k: int) -> str:
    return f"part-{rank:05d}-{k:05d}"


def plan_parts(kind: str, count: int, rank: int, world_size: int, part_size: int) -> list[Part]:
    """Rank ``rank``'s parts: a contiguous slice of rows cut every ``part_size``, or every W-th shard."""
    if kind == "shards":
        return [Part(part_name(rank, k), shard=s) for k, s in enumerate(range(rank, count, world_size))]
    if part_size < 1:
        raise UserError(f"--part-size {part_size}: must be at least 1")
    lo, hi = count * rank // world_size, count * (rank + 1) // world_size
    return [Part(part_name(rank, k), a, min(a + part_size, hi)) for k, a in enumerate(range(lo, hi, part_size))]


def describe_source(images: str | None = None, shards: str | None = None, parquet: str | None = None) -> Source:
    """The one source given, with a fingerprint that does not depend on where it is mounted."""
    given = [x for x in (images, shards, parquet) if x]
    if len(given) != 1:
        raise UserError("embed: give exactly one of --images DIR, --shards PATTERN, --parquet FILE")
    h = hashlib.sha256()
    if shards:
        urls = resolve_shards(shards)
        for u in urls:
            h.update(f"{os.path.basename(u)}\n".encode())
        return Source("shards", shards, urls=urls, fingerprint=h.hexdigest()[:16])
    kind, spec = ("images", images) if images else ("parquet", parquet)
    records = folder_records(images) if images else parquet_records(parquet)
    base = Path(images).resolve() if images else Path(parquet).resolve().parent
    for r in records:
        rel = os.path.relpath(r.path, base) if r.path else ""
        h.update(f"{rel}|{r.url or ''}|{r.caption or ''}\n".encode())
    return Source(kind, str(spec), records=records, fingerprint=h.hexdigest()[:16])


# ---------------------------------------------------------------- the items


class PartDataset(torch.utils.data.IterableDataset):
    """Pipeline items of ``parts``, each tagged with its ``gid`` and ``part``, and a marker per part.

    Rows of a part are split over the DataLoader workers (every n-th row); shards go whole to one
    worker (every n-th shard). After its items of a part a worker sends a ``_part_done`` marker
    naming how many markers that part needs, so the main process knows when a part is complete.
    Unreadable items become error items whose detail names their part.
    """

    def __init__(self, parts: Sequence[Part], source: Source, transform: Callable, thumb_size: int = 192) -> None:
        super().__init__()
        self.parts, self.source, self.transform, self.thumb_size = list(parts), source, transform, thumb_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        rows = RecordDataset(self.source.records or [], self.transform, self.thumb_size)
        for j, part in enumerate(self.parts):
            if part.shard is None:
                for gid in range(part.lo + wid, part.hi, nw):
                    yield _tag(rows[gid], part.name, gid)
                yield _marker(part.name, nw)
            elif j % nw == wid:
                yield from self._shard_items(part)
                yield _marker(part.name, 1)

    def _shard_items(self, part: Part) -> Iterator[dict[str, Any]]:
        for pos, item in shard_items(self.source.urls[part.shard], self.transform, self.thumb_size):
            yield _tag(item, part.name, part.shard * SHARD_STRIDE + pos if pos >= 0 else -1)


def _tag(item: dict[str, Any], part: str, gid: int) -> dict[str, Any]:
    if "error" in item:  # collate_items keeps only (error, detail) of a skipped item: the part rides in detail
        item["detail"] = {"part": part, "gid": gid, "detail": item.get("detail", "")}
    else:
        item["part"], item["gid"] = part, gid
    return item


def _marker(part: str, expect: int) -> dict[str, Any]:
    return {"error": _PART_DONE, "detail": {"part": part, "expect": expect}}


# ---------------------------------------------------------------- writing parts


@dataclass
class _Pending:
    rows: list[dict[str, Any]] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    markers: int = 0


class PartWriter:
    """Gathers embedded batches per part and writes each part as soon as all its items have arrived."""

    def __init__(self, out: Path, bundle: Any, rank: int, progress: dict[str, Any], dtype: str,
                 captions: bool) -> None:
        self.out, self.bundle, self.rank, self.progress = out, bundle, rank, progress
        self.dtype, self.captions = np.dtype(dtype), captions
        self.model_key = model_key(model_identity(bundle))
        self.compute = compute_identity(bundle)  # device and precision: informative, parts may mix them
        self.pending: dict[str, _Pending] = {}
        self.written: list[str] = []

    def add(self, batch: dict[str, Any]) -> None:
        for i, row in enumerate(batch["rows"]):  # rows first: a part's marker never precedes its rows
            p = self.pending.setdefault(row.pop("part"), _Pending())
            p.rows.append(row)
            p.vectors.append(batch["vectors"][i])
        for reason, detail in batch["errors"]:
            p = self.pending.setdefault(detail["part"], _Pending())
            if reason != _PART_DONE:
                p.skipped[reason] += 1
                log.debug("skipped %s: %s", reason, detail["detail"])
                continue
            p.markers += 1
            if p.markers == detail["expect"]:
                self._write(detail["part"], self.pending.pop(detail["part"]))

    def close(self) -> None:
        if self.pending:  # the stream ended before a part's markers: never record a partial part
            raise RuntimeError(f"embedding stream ended with unfinished parts: {sorted(self.pending)}")

    def _write(self, name: str, p: _Pending) -> None:
        dim = int(self.bundle.dim)
        order = np.argsort([r["gid"] for r in p.rows], kind="stable")
        rows = [p.rows[i] for i in order]
        vecs = np.stack([p.vectors[i] for i in order]) if rows else np.zeros((0, dim), np.float32)
        meta = parts_metadata(rows)
        n_caps = 0
        if self.captions:
            text = np.zeros((len(rows), dim), np.float32)
            has = np.flatnonzero(meta["caption"].notna().to_numpy())
            n_caps = len(has)
            if n_caps:  # the encoder batches the texts itself
                enc = self.bundle.encode_texts(meta["caption"].iloc[has].tolist())
                text[has] = np.asarray(enc.float() if isinstance(enc, torch.Tensor) else enc, dtype=np.float32)
            _save_npy(self.out / TEXT_DIR / f"{name}.npy", text.astype(self.dtype))
        _save_npy(self.out / IMG_DIR / f"{name}.npy", vecs.astype(self.dtype))
        atomic_write_with(self.out / META_DIR / f"{name}.parquet", lambda tmp: meta.to_parquet(tmp, index=False))
        self.progress["parts"][name] = {"images": len(rows), "captions": n_caps, "skipped": dict(p.skipped),
                                        "model": self.model_key, "compute": self.compute}
        write_progress(self.out, self.rank, self.progress)  # the commit point of the part
        self.written.append(name)


def parts_metadata(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A part's metadata table with fixed column types (an empty part still has the schema)."""
    def col(key: str, default: Any = None) -> list[Any]:
        return [r.get(key, default) for r in rows]

    return pd.DataFrame({
        "gid": pd.array(col("gid"), dtype="int64"),
        "path": pd.array(col("path"), dtype="object"),
        "url": pd.array(col("url"), dtype="object"),
        "caption": pd.array(col("caption"), dtype="object"),
        "width": pd.array(col("width", -1), dtype="int64"),
        "height": pd.array(col("height", -1), dtype="int64"),
        "thumb": pd.array([bytes(t or b"") for t in col("thumb", b"")], dtype="object"),
    })


def _save_npy(path: Path, arr: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file handle: np.save(name) would append ".npy" to the temp name
            np.save(fh, arr)

    atomic_write_with(path, write)


# ---------------------------------------------------------------- manifest and progress


def model_key(ident: dict[str, Any]) -> str:
    """What names a model across machines: the weights' fingerprint (its folder may be mounted elsewhere)."""
    return str(ident.get("fingerprint") or f"name:{ident.get('name')}")


def progress_file(out: Path, rank: int) -> Path:
    return out / PROGRESS_DIR / f"rank-{rank:05d}.json"


def read_progress(out: Path, rank: int) -> dict[str, Any] | None:
    f = progress_file(out, rank)
    return json.loads(f.read_text()) if f.is_file() else None


def write_progress(out: Path, rank: int, progress: dict[str, Any]) -> None:
    atomic_write_text(progress_file(out, rank), json.dumps(progress, indent=1) + "\n")


def run_spec(bundle: Any, source: Source, world_size: int, part_size: int, dtype: str, captions: bool,
             thumb_size: int) -> dict[str, Any]:
    """The manifest's fixed half: what every rank of one run must agree on."""
    ident = model_identity(bundle)
    return {"format": FORMAT, "model": ident, "dim": int(bundle.dim), "dtype": dtype, "source": source.describe(),
            "world_size": world_size, "part_size": part_size, "captions": bool(captions),
            "thumb_size": thumb_size}


def spec_differences(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """How the run recorded in ``have`` differs from ``want`` (paths of the model and source may differ)."""
    diffs = []
    if have.get("format") != want["format"]:
        diffs.append(f"format {have.get('format')!r} vs {want['format']!r}")
    if model_key(have.get("model") or {}) != model_key(want["model"]):
        diffs.append(f"model {(have.get('model') or {}).get('name')} vs {want['model'].get('name')}")
    for k in ("kind", "count", "fingerprint"):
        if (have.get("source") or {}).get(k) != want["source"][k]:
            diffs.append(f"source {k} {(have.get('source') or {}).get(k)!r} vs {want['source'][k]!r}")
    for k in _SPEC_KEYS:
        if k == "part_size" and want["source"]["kind"] == "shards":
            continue  # one part per shard whatever the part size
        if have.get(k) != want[k]:
            diffs.append(f"{k.replace('_', ' ')} {have.get(k)!r} vs {want[k]!r}")
    return diffs


def read_parts_manifest(emb: Path) -> dict[str, Any]:
    f = emb / MANIFEST
    if not f.is_file():
        raise UserError(f"--embeddings {emb}: no {MANIFEST}; write embeddings with `openalign embed --out {emb}`")
    m = json.loads(f.read_text())
    if m.get("format") != FORMAT:
        raise UserError(f"{f}: format {m.get('format')!r} is not {FORMAT!r}; embed again with this version")
    return m


def _open_run(out: Path, spec: dict[str, Any], rank: int, resume: bool) -> dict[str, Any]:
    """Check (or write) the manifest; this rank's progress: kept, or reset with ``resume=False``."""
    f = out / MANIFEST
    if f.is_file():
        diffs = spec_differences(json.loads(f.read_text()), spec)
        if diffs:
            raise UserError(f"--out {out}: holds embeddings of another run ({'; '.join(diffs)}); "
                            "use a new --out folder, or delete this one to start over")
    else:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        atomic_write_text(f, json.dumps({**spec, "created": now}, indent=2) + "\n")  # ranks racing write the same
    _remove_temp_files(out, rank)
    progress = read_progress(out, rank) if resume else None
    if progress is not None:  # a recorded part whose files were deleted since is done again
        progress["parts"] = {n: c for n, c in progress["parts"].items()
                             if all((out / d / f"{n}{ext}").is_file() for d, ext in _part_files(spec["captions"]))}
        progress["done"] = False
    else:
        for d in (IMG_DIR, TEXT_DIR, META_DIR):
            for stale in (out / d).glob(f"part-{rank:05d}-*"):
                stale.unlink()
        progress = {"rank": rank, "world_size": spec["world_size"], "parts": {}, "done": False}
        write_progress(out, rank, progress)
    return progress


def _part_files(captions: bool) -> list[tuple[str, str]]:
    files = [(IMG_DIR, ".npy"), (META_DIR, ".parquet")]
    return files + [(TEXT_DIR, ".npy")] if captions else files


def _remove_temp_files(out: Path, rank: int) -> None:
    """Temp files a killed run of this rank left behind (atomic writes never completed)."""
    for d in (IMG_DIR, TEXT_DIR, META_DIR):
        for tmp in (out / d).glob(f".part-{rank:05d}-*.tmp"):
            tmp.unlink(missing_ok=True)
    for tmp in (out / PROGRESS_DIR).glob(f".rank-{rank:05d}.json.*.tmp"):
        tmp.unlink(missing_ok=True)


def collect_parts(emb: Path, manifest: dict[str, Any]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Every planned part of every rank, in plan order, with its recorded counts: finished ones only.

    Returns (missing part names, {name: counts}). Refuses parts of another model.
    """
    src = manifest["source"]
    want_model = model_key(manifest["model"])
    missing: list[str] = []
    done: dict[str, dict[str, Any]] = {}
    for rank in range(manifest["world_size"]):
        finished = (read_progress(emb, rank) or {}).get("parts", {})
        for part in plan_parts(src["kind"], src["count"], rank, manifest["world_size"], manifest["part_size"]):
            counts = finished.get(part.name)
            files = [emb / d / f"{part.name}{ext}" for d, ext in _part_files(manifest["captions"])]
            if counts is None or not all(f.is_file() for f in files):
                missing.append(part.name)
                continue
            if counts.get("model") != want_model:
                raise UserError(f"--embeddings {emb}: parts come from different models ({part.name} was embedded "
                                f"with {counts.get('model')}, {MANIFEST} says {want_model}); re-embed rank {rank} "
                                "with the manifest's model, into a copy without its parts")
            done[part.name] = counts
    return missing, done


def refresh_summary(emb: Path) -> dict[str, Any]:
    """Rewrite the manifest's summary (per-part counts, totals, complete) from every rank's progress.

    Each rank calls it when it finishes; the progress files stay the record of truth (two ranks
    finishing at once may leave the summary one rank behind until the next refresh).
    """
    m = read_parts_manifest(emb)
    missing, done = collect_parts(emb, m)
    totals: Counter = Counter()
    for c in done.values():
        totals["images"] += c["images"]
        totals["captions"] += c["captions"]
        for reason, n in c["skipped"].items():
            totals[f"skipped_{reason}"] += n
    m.update(parts={k: {kk: v for kk, v in c.items() if kk not in ("model", "compute")} for k, c in done.items()},
             counts=dict(totals), parts_total=len(done) + len(missing), parts_missing=len(missing),
             complete=not missing, updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    atomic_write_text(emb / MANIFEST, json.dumps(m, indent=2) + "\n")
    return m


# ---------------------------------------------------------------- embedding


def embed_to_parts(out: str | Path, model_dir: str | Path | None = None, images: str | None = None,
                   shards: str | None = None, parquet: str | None = None, batch_size: int = 32,
                   num_workers: int = 2, thumb_size: int = 192, index_captions: bool = True,
                   options: PartOptions = PartOptions(), progress: bool = True,
                   embed: Callable[..., Iterator[dict[str, Any]]] = embed_batches, encoder: Any = None) -> dict:
    """Embed this rank's share of one source into parts under ``out``, skipping parts already finished.

    Returns a summary of this rank: parts planned, kept from an earlier run, written now, and counts.
    """
    out = Path(out)
    rank, world = resolve_rank(options.rank, options.world_size)
    source = describe_source(images, shards, parquet)  # before the model: a bad source fails fast
    bundle = encoder if encoder is not None else load_encoder(model_dir, resolve_device(options.device), options.bf16,
                                                                  options.image_precision)
    spec = run_spec(bundle, source, world, options.part_size, options.dtype, index_captions, thumb_size)
    plan = plan_parts(source.kind, source.count, rank, world, options.part_size)
    state = _open_run(out, spec, rank, options.resume)
    todo = [p for p in plan if p.name not in state["parts"]]
    writer = PartWriter(out, bundle, rank, state, options.dtype, index_captions)
    if todo:
        log.info("rank %d/%d: %d of %d parts to embed (%d finished before)", rank, world, len(todo), len(plan),
                 len(plan) - len(todo))
        dataset = PartDataset(todo, source, bundle.transform, thumb_size)
        markers = len(todo) * max(num_workers, 1)  # the bar counts the per-part markers too
        total = sum(p.hi - p.lo for p in todo) + markers if source.kind != "shards" else None
        for batch in embed(bundle, dataset, batch_size, num_workers, total, progress=progress,
                           desc=f"embed rank {rank}/{world}"):
            writer.add(batch)
        writer.close()
    state["done"] = True
    write_progress(out, rank, state)
    refresh_summary(out)
    mine = [state["parts"][p.name] for p in plan]
    skipped: Counter = Counter()
    for c in mine:
        skipped.update(c["skipped"])
    return {"rank": rank, "world_size": world, "parts": len(plan), "parts_kept": len(plan) - len(todo),
            "parts_written": len(writer.written), "images": sum(c["images"] for c in mine),
            "captions": sum(c["captions"] for c in mine), "skipped": dict(skipped), "out": str(out)}


def write_vector_parts(out: str | Path, model: dict[str, Any], count: int, part_size: int,
                       parts: Iterator[tuple[np.ndarray, pd.DataFrame | None]], dtype: str = "float16") -> dict:
    """Write vectors computed elsewhere as an embeddings folder that ``index build --embeddings`` reads.

    ``parts`` yields ``(vectors (n, D), metadata or None)`` for rows ``[k * part_size, ...)`` in order,
    ``part_size`` rows each but the last, ``count`` rows in all; metadata may hold path, url,
    caption, width, height. Used by the benchmarks and tests to index millions of vectors without a model.
    """
    out = Path(out)
    dim = int(model["dim"])
    spec = {"format": FORMAT, "model": model, "dim": dim, "dtype": dtype,
            "source": {"kind": "vectors", "spec": "", "count": int(count), "fingerprint": ""},
            "world_size": 1, "part_size": int(part_size), "captions": False, "thumb_size": 0}
    progress = _open_run(out, spec, 0, resume=False)
    for k, (v, meta) in enumerate(parts):
        name, n = part_name(0, k), len(v)
        rows = [{"gid": k * part_size + i} for i in range(n)]
        table = parts_metadata(rows)
        if meta is not None:
            for col in ("path", "url", "caption", "width", "height"):
                if col in meta:
                    table[col] = meta[col].to_numpy()
        _save_npy(out / IMG_DIR / f"{name}.npy", np.asarray(v).astype(dtype))
        atomic_write_with(out / META_DIR / f"{name}.parquet", lambda tmp, t=table: t.to_parquet(tmp, index=False))
        progress["parts"][name] = {"images": n, "captions": 0, "skipped": {}, "model": model_key(model),
                                   "compute": {}}
    progress["done"] = True
    write_progress(out, 0, progress)
    return refresh_summary(out)


# ---------------------------------------------------------------- reading and indexing


@dataclass
class PartsData:
    """Every rank's parts merged in gid order (independent of the world size that wrote them)."""

    manifest: dict[str, Any]
    vectors: np.ndarray  # (N, D) float32
    metadata: pd.DataFrame  # gid, path, url, caption, width, height, thumb
    text_vectors: np.ndarray | None  # (N, D) float32, zero rows where there is no caption
    stats: dict[str, int]


def complete_parts(emb: Path, m: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every part's counts; a clear error when parts are missing or from another model."""
    missing, done = collect_parts(emb, m)
    if missing:
        ranks = sorted({int(n.split("-")[1]) for n in missing})
        raise UserError(f"--embeddings {emb}: {len(missing)} of {len(missing) + len(done)} parts missing "
                        f"(first {missing[0]}; ranks {', '.join(map(str, ranks))}); run `openalign embed` for those "
                        f"ranks again with --world-size {m['world_size']} (it resumes)")
    return done


def read_parts(emb: str | Path) -> PartsData:
    """Load a complete embeddings folder into memory (every vector as float32: small collections, tests)."""
    emb = Path(emb)
    m = read_parts_manifest(emb)
    done = complete_parts(emb, m)
    dim = int(m["dim"])
    vecs, texts, metas = [], [], []
    stats: Counter = Counter()
    for name, counts in done.items():
        v = np.load(emb / IMG_DIR / f"{name}.npy")
        meta = pd.read_parquet(emb / META_DIR / f"{name}.parquet")
        if v.ndim != 2 or v.shape[1] != dim or len(v) != len(meta):
            raise UserError(f"--embeddings {emb}: {IMG_DIR}/{name}.npy has shape {v.shape}, expected "
                            f"({len(meta)}, {dim}); re-embed that part's rank")
        vecs.append(v)
        metas.append(meta)
        if m["captions"]:
            texts.append(np.load(emb / TEXT_DIR / f"{name}.npy"))
        for reason, n in counts["skipped"].items():
            stats[f"skipped_{reason}"] += n
    meta = pd.concat(metas, ignore_index=True) if metas else parts_metadata([])
    order = np.argsort(meta["gid"].to_numpy(), kind="stable")
    vectors = (np.concatenate(vecs) if vecs else np.zeros((0, dim))).astype(np.float32)[order]
    text = (np.concatenate(texts) if texts else np.zeros((0, dim))).astype(np.float32)[order] if m["captions"] else None
    stats["indexed"] = len(meta)
    return PartsData(manifest=m, vectors=vectors, metadata=meta.iloc[order].reset_index(drop=True),
                     text_vectors=text, stats=dict(stats))


def contents_from_parts(data: PartsData, params: IndexParams = IndexParams()) -> IndexContents:
    """Index contents with the ids, metadata, thumbnails and caption vectors a direct build would give."""
    thumbs = data.metadata["thumb"].map(lambda t: bytes(t) if t is not None else b"")
    sizes = thumbs.map(len).to_numpy(np.int64)
    offsets = np.where(sizes > 0, np.cumsum(sizes) - sizes, -1)  # thumbnails back to back, -1: none
    meta = normalise_metadata(data.metadata[["path", "url", "caption", "width", "height"]]
                              .assign(thumb_offset=offsets, thumb_size=sizes))
    cap_vecs = cap_ids = None
    if data.text_vectors is not None and len(meta) and meta["caption"].notna().any():
        cap_ids = meta.index[meta["caption"].notna()].to_numpy(np.int64)
        cap_vecs = data.text_vectors[cap_ids]
    return IndexContents(vectors=data.vectors, metadata=meta, model=data.manifest["model"], params=params,
                         thumbnails=b"".join(thumbs), caption_vectors=cap_vecs, caption_ids=cap_ids, stats=data.stats)


STREAM_CHUNK = 65_536  # rows per block when the index is filled and tuned from its float16 copy
META_SCHEMA = pa.schema([("id", pa.int64()), ("path", pa.string()), ("url", pa.string()), ("caption", pa.string()),
                         ("width", pa.int64()), ("height", pa.int64()), ("thumb_offset", pa.int64()),
                         ("thumb_size", pa.int64())])


def build_index_from_parts(emb: str | Path, out: str | Path, params: IndexParams = IndexParams(),
                           chunk: int = STREAM_CHUNK) -> dict:
    """``index build --embeddings``: stream every rank's parts into a new index at ``out`` (atomic).

    No step holds all the vectors. Pass 1 copies the parts, in gid order, into the new version's
    float16 ``embeddings.npy``, ``metadata.parquet`` and ``thumbnails.bin``, one part at a time.
    The vector index then trains on a sample of rows read from that copy and is filled (and tuned:
    exact neighbours by a streamed pass) ``chunk`` rows at a time, its lists in memory or, with
    ``on_disk`` or when they exceed the memory budget, merged into ``index.ivfdata``. Gives the
    index a build from :func:`read_parts` gives (bit for bit with float16 parts, the default).
    """
    emb, out = Path(emb), Path(out)
    m = read_parts_manifest(emb)
    done = complete_parts(emb, m)
    parts = ordered_parts(emb, m, done)
    n, dim = sum(c for _, c in parts), int(m["dim"])
    if n == 0:
        raise UserError(f"--embeddings {emb}: no images in any part (every source item was skipped); "
                        "check the source given to `openalign embed`")
    p = params.resolved(n, dim)
    with index_lock(out):
        return write_version(out, lambda tmp: _write_from_parts(tmp, emb, m, parts, done, p, chunk))


def ordered_parts(emb: Path, m: dict[str, Any], done: dict[str, dict[str, Any]]) -> list[tuple[str, int]]:
    """(part name, images) in gid order. Parts cover disjoint gid ranges (contiguous slices, or one
    shard each), so sorting parts by their first gid orders every image, a part at a time."""
    spans = []
    for name in done:
        gid = pq.read_table(emb / META_DIR / f"{name}.parquet", columns=["gid"])["gid"].to_numpy()
        if len(gid):
            spans.append((int(gid.min()), int(gid.max()), name, len(gid)))
    spans.sort()
    for a, b in zip(spans, spans[1:]):
        if b[0] <= a[1]:
            raise UserError(f"--embeddings {emb}: parts {a[2]} and {b[2]} overlap in gid; they come from different "
                            "runs: re-embed into a new folder")
    return [(name, count) for _, _, name, count in spans]


def _write_from_parts(tmp: Path, emb: Path, m: dict[str, Any], parts: list[tuple[str, int]],
                      done: dict[str, dict[str, Any]], p: IndexParams, chunk: int) -> dict:
    n, dim = sum(c for _, c in parts), int(m["dim"])
    captions = sum(int(c.get("captions", 0)) for c in done.values()) if m["captions"] else 0
    cap, stats = _caption_index(captions, dim, p), Counter()
    for c in done.values():  # a part whose images were all skipped is not in ``parts`` but counts here
        for reason, k in c["skipped"].items():
            stats[f"skipped_{reason}"] += k
    copy = np.lib.format.open_memmap(tmp / EMBEDDINGS, mode="w+", dtype=np.float16, shape=(n, dim))
    # The vector index reads the float16 copy; parts stored as float32 get a float32 scratch copy,
    # so the index is the one an in-memory build of the same parts gives, to the bit.
    scratch = tmp / ".vectors-float32.npy"
    exact = (np.lib.format.open_memmap(scratch, mode="w+", dtype=np.float32, shape=(n, dim))
             if np.dtype(m.get("dtype", "float16")) != np.float16 else None)
    row = thumb_at = 0
    with pq.ParquetWriter(tmp / METADATA, META_SCHEMA) as meta_out, open(tmp / THUMBNAILS, "wb") as thumbs:
        for name, count in tqdm(parts, desc="index: copy parts", unit="part"):
            v, meta, text = _read_part(emb, m, name, dim)
            copy[row : row + count] = v
            copy.flush()  # written pages go back to the file: the copy never sits in this process's memory
            if exact is not None:
                exact[row : row + count] = v
                exact.flush()
            blobs = [bytes(t) if t is not None else b"" for t in meta["thumb"]]
            sizes = np.array([len(b) for b in blobs], dtype=np.int64)
            offsets = np.where(sizes > 0, thumb_at + np.cumsum(sizes) - sizes, -1)
            thumbs.write(b"".join(blobs))
            thumb_at += int(sizes.sum())
            table = normalise_metadata(meta[["path", "url", "caption", "width", "height"]]
                                       .assign(thumb_offset=offsets, thumb_size=sizes), start_id=row)
            meta_out.write_table(pa.Table.from_pandas(table, schema=META_SCHEMA, preserve_index=False))
            if cap is not None and text is not None:
                has = np.flatnonzero(table["caption"].notna().to_numpy())
                if len(has):
                    cap.add_with_ids(np.ascontiguousarray(text[has], dtype=np.float32), has.astype(np.int64) + row)
            row += count
    del copy, exact
    stats["indexed"] = n
    index, p, tuning = build_vector_index(NpyVectors(scratch if scratch.exists() else tmp / EMBEDDINGS, chunk), p,
                                          workdir=tmp)
    scratch.unlink(missing_ok=True)
    save_vector_index(index, tmp, p)
    caps = int(cap.ntotal) if cap is not None else 0
    if caps:
        faiss.write_index(cap, str(tmp / CAPTIONS))
    manifest = index_manifest(m["model"], dim, n, p, tuning, None, dict(stats), caps)
    finish_version(tmp, manifest)
    return manifest


def _read_part(emb: Path, m: dict[str, Any], name: str, dim: int) -> tuple[np.ndarray, pd.DataFrame, np.ndarray | None]:
    """One part's vectors, metadata and caption vectors, sorted by gid."""
    v = np.load(emb / IMG_DIR / f"{name}.npy")
    meta = pd.read_parquet(emb / META_DIR / f"{name}.parquet")
    if v.ndim != 2 or v.shape[1] != dim or len(v) != len(meta):
        raise UserError(f"--embeddings {emb}: {IMG_DIR}/{name}.npy has shape {v.shape}, expected "
                        f"({len(meta)}, {dim}); re-embed that part's rank")
    order = np.argsort(meta["gid"].to_numpy(), kind="stable")
    text = np.load(emb / TEXT_DIR / f"{name}.npy")[order] if m["captions"] else None
    return v[order], meta.iloc[order].reset_index(drop=True), text


def _caption_index(count: int, dim: int, p: IndexParams) -> Any:
    """The exact caption index (float32, in memory), or None when there are no captions or they exceed
    the memory budget (image -> caption queries are then refused; the image index is unaffected)."""
    if not count:
        return None
    if count * dim * 4 > p.memory_budget_mb * 2**20:
        log.warning("%d caption vectors (%.0f MB) exceed --memory-budget-mb %s: captions not indexed", count,
                    count * dim * 4 / 2**20, p.memory_budget_mb)
        return None
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
