"""The search index on disk: FAISS vectors + Parquet metadata + a manifest, written atomically.

Layout of an index directory::

    manifest.json      model identity, dim, count, index type and parameters, created/updated
    index.faiss        image vectors (inner product on L2-normalised embeddings = cosine)
    embeddings.npy     the same vectors in float16: exact re-ranking, search by id, re-indexing
    metadata.parquet   id, path, url, caption, width, height, thumb_offset, thumb_size
    thumbnails.bin     small JPEG thumbnails back to back (served by id: no path ever leaves here)
    captions.faiss     caption text vectors keyed by image id (only when captions were indexed)
    index.ivfdata      IVF-PQ inverted lists on disk (``on_disk``), memory-mapped by the searcher

Row ``i`` of the metadata, the FAISS index and ``embeddings.npy`` is image id ``i``.

The index type (exact flat, HNSW or IVF-PQ) is chosen from the collection size and a memory
budget unless named. A build or an append writes a complete new version in a sibling temp
folder and swaps it in: on Linux in one atomic step (``renameat2`` with ``RENAME_EXCHANGE``), so
the index path always names a complete version; elsewhere with two renames (``load`` recovers the
one moment between them, when only ``.NAME.old`` exists). A crash at any point leaves either the
old or the new complete index. Every version's manifest carries a fresh ``version`` id, which
readers check before and after loading (:class:`openalign.search.query.SearchIndex`), so a
reader racing a swap reloads instead of mixing files of two versions. Writers (``build``, ``add``)
take an exclusive lock on ``.NAME.lock`` beside the folder (it survives the swaps), so a second
writer waits for the first and then reads the version it wrote: no addition is lost.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import faiss
import numpy as np
import pandas as pd

from openalign.errors import UserError
from openalign.io import atomic_write_text, fsync_dir
from openalign.registry import Registry
from openalign.search.tuning import ArrayVectors, Vectors, fill_index, tune

log = logging.getLogger(__name__)
FORMAT = "openalign-index/1"
MANIFEST, INDEX_FILE, EMBEDDINGS, METADATA = "manifest.json", "index.faiss", "embeddings.npy", "metadata.parquet"
THUMBNAILS, CAPTIONS, IVFDATA = "thumbnails.bin", "captions.faiss", "index.ivfdata"
META_COLUMNS = ["id", "path", "url", "caption", "width", "height", "thumb_offset", "thumb_size"]


@dataclass(frozen=True)
class IndexParams:
    """How to build the vector index. ``index_type='auto'`` picks by size and ``memory_budget_mb``."""

    index_type: str = field(default="auto", metadata={
        "choices": ("auto", "flat", "hnsw", "ivfpq"),
        "help": "auto: exact up to --flat-max images, then HNSW if it fits --memory-budget-mb, else IVF-PQ"})
    memory_budget_mb: float = field(default=2048.0, metadata={"help": "RAM the vector index may use when searched"})
    flat_max: int = field(default=50_000, metadata={"help": "auto: exact search up to this many images"})
    hnsw_m: int = 32
    hnsw_ef_construction: int = 64
    hnsw_ef_search: int = 128
    ivf_nlist: int | None = field(default=None, metadata={  # None: about sqrt(n), at least 1, at most n // 39
        "help": "IVF lists (default about sqrt(n))"})
    ivf_nprobe: int = 16
    pq_m: int | None = field(default=None, metadata={  # None: the largest divisor of dim giving >= 8-d pieces
        "help": "PQ sub-quantizers; must divide the dim"})
    pq_nbits: int = 8
    train_size: int = field(default=50_000, metadata={  # grown to TRAIN_PER_LIST * nlist when that is more
        "help": "vectors sampled to train IVF-PQ (at least 64 per IVF list, at most 1M)"})
    rerank: int = field(default=10, metadata={  # approximate search fetches k * rerank candidates
        "help": "approximate: re-score k*rerank candidates exactly (1 = off; with --target-recall, the least depth tried)"})
    seed: int = 0
    target_recall: float = field(default=0.95, metadata={  # 0 keeps the knobs above as given
        "help": "tune nprobe/efSearch/rerank on held-out vectors for this recall@10 vs exact (0 = off)"})
    tune_queries: int = field(default=500, metadata={
        "help": "held-out vectors per tuning set (two sets: tune, then confirm on fresh ones)"})
    on_disk: bool = field(default=False, metadata={  # automatic when the codes + ids exceed the budget
        "help": "IVF-PQ with its inverted lists in index.ivfdata, memory-mapped when searched "
                "(implies ivfpq; on by itself when the lists do not fit --memory-budget-mb)"})

    def resolved(self, n: int, dim: int) -> IndexParams:
        """Fill the size-dependent fields (index type, nlist, pq_m) for ``n`` vectors of ``dim``."""
        kind = self.index_type
        if kind == "auto":
            kind = "ivfpq" if self.on_disk else choose_index_type(n, dim, self)
        p = replace(self, index_type=kind)
        if p.index_type not in INDEX_TYPES:
            raise UserError(f"--index-type: unknown {p.index_type!r}; use one of auto, {', '.join(INDEX_TYPES.names())}")
        if p.on_disk and p.index_type != "ivfpq":
            raise UserError(f"--on-disk: only IVF-PQ keeps its lists on disk; drop --index-type {p.index_type} "
                            "or --on-disk")
        if p.index_type == "ivfpq":
            nlist = p.ivf_nlist or max(1, min(int(math.sqrt(max(n, 1))), n // 39))
            p = replace(p, ivf_nlist=nlist, pq_m=p.pq_m or default_pq_m(dim))
            if dim % p.pq_m:
                raise UserError(f"--pq-m: {p.pq_m} does not divide the embedding dimension {dim}; pick a divisor")
            if not p.on_disk and estimate_bytes("ivfpq", n, dim, p) > p.memory_budget_mb * 2**20:
                log.info("IVF-PQ lists of %d vectors exceed --memory-budget-mb %s: writing them on disk", n,
                         p.memory_budget_mb)
                p = replace(p, on_disk=True)
        return p


def default_pq_m(dim: int) -> int:
    return max(m for m in range(1, dim + 1) if dim % m == 0 and dim // m >= 8) if dim >= 8 else dim


def estimate_bytes(index_type: str, n: int, dim: int, p: IndexParams, on_disk: bool = False) -> int:
    """RAM a searched index of ``n`` vectors needs (the float16 re-rank copy is memory-mapped, not counted;
    ``on_disk``: nor are IVF lists)."""
    if index_type == "flat":
        return n * dim * 4
    if index_type == "hnsw":
        return n * (dim * 4 + p.hnsw_m * 2 * 4 + 16)
    nlist = p.ivf_nlist or max(1, int(math.sqrt(max(n, 1))))
    code = (p.pq_m or default_pq_m(dim)) * p.pq_nbits // 8
    return (0 if on_disk else n * (code + 8)) + nlist * dim * 4 + 2**p.pq_nbits * dim * 4


def choose_index_type(n: int, dim: int, p: IndexParams) -> str:
    """Exact for small collections; otherwise HNSW if it fits the budget, else IVF-PQ."""
    budget = p.memory_budget_mb * 2**20
    if n <= p.flat_max and estimate_bytes("flat", n, dim, p) <= budget:
        return "flat"
    for kind in ("hnsw", "ivfpq"):
        if estimate_bytes(kind, n, dim, p) <= budget:
            return kind
    if estimate_bytes("ivfpq", n, dim, p, on_disk=True) <= budget:
        return "ivfpq"  # resolved() puts its lists on disk
    need = estimate_bytes("ivfpq", n, dim, p, on_disk=True) / 2**20
    raise UserError(f"--memory-budget-mb: {n} vectors of dim {dim} need at least {need:.0f} MB even as IVF-PQ "
                    "with on-disk lists; raise the budget or lower --ivf-nlist")


# -- index types: name -> factory(dim, vectors, params) -> trained, empty faiss index ----------
INDEX_TYPES: Registry[Callable[[int, np.ndarray, IndexParams], Any]] = Registry("index type")


@INDEX_TYPES.register("flat")
def _make_flat(dim: int, train: np.ndarray, p: IndexParams):
    return faiss.IndexFlatIP(dim)


@INDEX_TYPES.register("hnsw")
def _make_hnsw(dim: int, train: np.ndarray, p: IndexParams):
    index = faiss.IndexHNSWFlat(dim, p.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = p.hnsw_ef_construction
    return index


@INDEX_TYPES.register("ivfpq")
def _make_ivfpq(dim: int, train: np.ndarray, p: IndexParams):
    if len(train) < 2**p.pq_nbits:
        raise UserError(f"--index-type ivfpq: needs at least {2**p.pq_nbits} images to train, got {len(train)}; "
                        "use --index-type flat for small collections")
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, p.ivf_nlist, p.pq_m, p.pq_nbits, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10
    rng = np.random.default_rng(p.seed)
    size = train_sample_size(len(train), p)
    sample = train if len(train) <= size else train[np.sort(rng.choice(len(train), size, replace=False))]
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


TRAIN_PER_LIST, TRAIN_CAP = 64, 1_000_000  # faiss warns under 39 training vectors per k-means centroid


def train_sample_size(n: int, p: IndexParams) -> int:
    """IVF training vectors: ``train_size``, grown with the lists (64 each, capped), at most ``n``."""
    return min(n, max(p.train_size, min(TRAIN_PER_LIST * (p.ivf_nlist or 1), TRAIN_CAP)))


def apply_search_params(index: Any, p: IndexParams) -> None:
    """Set query-time knobs (efSearch, nprobe) on a loaded index."""
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = p.hnsw_ef_search
    ivf = faiss.try_extract_index_ivf(index) if not isinstance(index, (faiss.IndexFlat, faiss.IndexHNSW)) else None
    if ivf is not None:
        ivf.nprobe = p.ivf_nprobe


def make_vector_index(vectors: np.ndarray, p: IndexParams) -> Any:
    """Train (if needed) and fill a FAISS index of the resolved type with ``vectors`` (N, D) in memory."""
    index = INDEX_TYPES.get(p.index_type)(vectors.shape[1], vectors, p)
    add_in_chunks(index, vectors)
    apply_search_params(index, p)
    return index


def train_empty_index(src: Vectors, dim: int, p: IndexParams) -> Any:
    """The resolved type's trained, empty index; IVF-PQ trains on a sample read row by row from ``src``."""
    if p.index_type != "ivfpq":
        return INDEX_TYPES.get(p.index_type)(dim, np.zeros((0, dim), np.float32), p)
    n, size = len(src), train_sample_size(len(src), p)
    ids = np.arange(n) if n <= size else np.sort(np.random.default_rng(p.seed).choice(n, size, replace=False))
    return INDEX_TYPES.get("ivfpq")(dim, src.rows(ids), p)  # the same sample _make_ivfpq would draw


def build_vector_index(vectors: np.ndarray | Vectors, p: IndexParams,
                       workdir: Path | None = None) -> tuple[Any, IndexParams, dict | None]:
    """Train, fill and tune a FAISS index over ``vectors``, an array or a :class:`Vectors` read by blocks.

    Streamed: only the training sample, one block and the index itself are in memory; with
    ``p.on_disk`` not even the index's lists (per-block lists merged into ``workdir/index.ivfdata``).
    Returns the index, the params with the chosen ``ivf_nprobe``/``hnsw_ef_search``/``rerank``, and
    the measurement for the manifest (None for exact search or ``target_recall <= 0``).
    """
    src = ArrayVectors(vectors) if isinstance(vectors, np.ndarray) else vectors
    if not 0 <= p.target_recall <= 1:
        raise UserError(f"--target-recall: {p.target_recall} is not between 0 and 1 (0 = no tuning)")
    if p.on_disk and workdir is None:
        raise ValueError("an on-disk index needs the folder its lists go to")
    dim = int(src.rows(np.zeros(1, np.int64)).shape[1])
    index = train_empty_index(src, dim, p)
    disk = OnDiskFill(workdir) if p.on_disk else None
    if p.index_type not in ("hnsw", "ivfpq") or p.target_recall <= 0 or len(src) < 80:
        if disk is not None:
            disk.fill(index, src, np.zeros(0, np.int64), final=True)
        elif p.index_type == "ivfpq":
            fill_index(index, src, np.zeros(0, np.int64))
        else:
            for _, block in src.blocks():
                index.add(block)
        apply_search_params(index, p)
        return index, p, None
    t = tune(index, src, p.index_type, p.target_recall, queries=p.tune_queries, seed=p.seed,
             min_rerank=max(1, p.rerank), fill=disk and disk.fill, add=disk and disk.add)
    c = t.chosen
    p = replace(p, ivf_nprobe=c.nprobe or p.ivf_nprobe, hnsw_ef_search=c.ef_search or p.hnsw_ef_search,
                rerank=c.rerank if p.index_type == "ivfpq" else p.rerank)
    apply_search_params(index, p)
    return index, p, t.to_dict()


class OnDiskFill:
    """Fill a trained, empty IVF index with its inverted lists on disk, never all codes in memory.

    Each block goes into a copy of the empty index, written out (``.lists/``); the blocks' lists
    are then merged into one file (faiss ``merge_from_multiple``, as ``contrib.ondisk.merge_ondisk``,
    reading the block files memory-mapped) that becomes the index's lists. For tuning, the lists
    without the held-out rows are merged into a scratch file first; :meth:`add` then writes the
    held-out rows as one more block and merges everything into ``index.ivfdata`` (adding to merged
    on-disk lists in place is not reliable in faiss 1.15: it corrupted ids here).
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.dir, self.files = workdir, workdir / ".lists", []
        self.empty: Any = None

    def fill(self, index: Any, src: Vectors, held: np.ndarray, final: bool = False) -> None:
        self.dir.mkdir(exist_ok=True)
        self.empty = faiss.clone_index(index)
        for start, block in src.blocks():
            rows = np.arange(start, start + len(block), dtype=np.int64)
            keep = ~np.isin(rows, held)
            self._block(np.ascontiguousarray(block[keep]), rows[keep])
        self._merge(index, self.workdir / IVFDATA if final else self.dir / "measure.ivfdata")

    def add(self, index: Any, src: Vectors, ids: np.ndarray) -> None:
        self._block(src.rows(ids), ids.astype(np.int64))
        self._merge(index, self.workdir / IVFDATA)

    def _block(self, x: np.ndarray, ids: np.ndarray) -> None:
        part = faiss.clone_index(self.empty)
        part.add_with_ids(x, ids)
        self.files.append(str(self.dir / f"block-{len(self.files):06d}.faiss"))
        faiss.write_index(part, self.files[-1])

    def _merge(self, index: Any, target: Path) -> None:
        ivf = faiss.extract_index_ivf(index)
        owners, parts = [], faiss.InvertedListsPtrVector()
        for f in self.files:
            owners.append(faiss.read_index(f, faiss.IO_FLAG_MMAP))  # kept alive until merged
            parts.push_back(faiss.extract_index_ivf(owners[-1]).invlists)
        lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(target))
        total = lists.merge_from_multiple(parts.data(), parts.size(), False)
        ivf.replace_invlists(lists, True)
        lists.this.disown()
        index.ntotal = ivf.ntotal = total
        del owners
        if target.parent == self.workdir:  # the final lists: the block files are no longer needed
            shutil.rmtree(self.dir, ignore_errors=True)


def lists_in_memory(index: Any) -> Any:
    """Move an IVF index's on-disk lists into memory (``index add`` extends a copy, never the live file)."""
    ivf = faiss.try_extract_index_ivf(index) if not isinstance(index, (faiss.IndexFlat, faiss.IndexHNSW)) else None
    if ivf is None or not isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists):
        return index
    src, mem = ivf.invlists, faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    for lst in range(ivf.nlist):
        size = src.list_size(lst)
        if size:
            mem.add_entries(lst, size, src.get_ids(lst), src.get_codes(lst))
    ivf.replace_invlists(mem, True)
    mem.this.disown()
    return index


def save_vector_index(index: Any, folder: Path, p: IndexParams) -> None:
    """Write ``index.faiss`` (and, for ``p.on_disk``, its lists as ``index.ivfdata`` in ``folder``)."""
    ivf = faiss.try_extract_index_ivf(index) if p.index_type == "ivfpq" else None
    if ivf is not None and p.on_disk:
        lists = faiss.downcast_InvertedLists(ivf.invlists)
        if not (isinstance(lists, faiss.OnDiskInvertedLists) and Path(lists.filename) == folder / IVFDATA):
            disk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(folder / IVFDATA))
            vec = faiss.InvertedListsPtrVector()
            vec.push_back(ivf.invlists)
            disk.merge_from_multiple(vec.data(), vec.size(), False)
            ivf.replace_invlists(disk, True)
            disk.this.disown()
    faiss.write_index(index, str(folder / INDEX_FILE))


def read_vector_index(folder: Path) -> Any:
    """Load ``index.faiss``; on-disk lists are memory-mapped from the ``index.ivfdata`` beside it
    (the file records the path it was built at, a temp folder since swapped in)."""
    return faiss.read_index(str(Path(folder) / INDEX_FILE), faiss.IO_FLAG_ONDISK_SAME_DIR)


def add_in_chunks(index: Any, vectors: np.ndarray, chunk: int = 65_536) -> None:
    for i in range(0, len(vectors), chunk):
        index.add(np.ascontiguousarray(vectors[i : i + chunk], dtype=np.float32))


@dataclass
class IndexContents:
    """Everything that goes into an index directory, in memory (thumbnails as one byte string)."""

    vectors: np.ndarray  # (N, D) float32, L2-normalised
    metadata: pd.DataFrame  # META_COLUMNS, id == row number
    model: dict[str, Any]  # {"name", "dir", "dim", ...}: how to load the query encoder
    params: IndexParams = field(default_factory=IndexParams)
    thumbnails: bytes = b""
    caption_vectors: np.ndarray | None = None  # (C, D) for the rows whose caption is set
    caption_ids: np.ndarray | None = None  # (C,) image ids of those rows
    stats: dict[str, int] = field(default_factory=dict)  # skipped counts etc.


def normalise_metadata(meta: pd.DataFrame | list[dict], start_id: int = 0) -> pd.DataFrame:
    """Fill missing columns with nulls, set ``id`` = start_id + row number, fix dtypes."""
    df = pd.DataFrame(meta).reset_index(drop=True)
    for col in META_COLUMNS:
        if col not in df:
            df[col] = -1 if col in ("width", "height", "thumb_offset", "thumb_size") else None
    df["id"] = np.arange(start_id, start_id + len(df), dtype=np.int64)
    for col in ("width", "height", "thumb_offset", "thumb_size"):
        df[col] = df[col].fillna(-1).astype(np.int64)
    for col in ("path", "url", "caption"):
        df[col] = df[col].astype(object).where(df[col].notna(), None)
    return df[META_COLUMNS]


def write_index(out: str | Path, contents: IndexContents, created: str | None = None, vector_index: Any = None,
                _before_swap: Callable[[Path], None] | None = None) -> dict:
    """Write ``contents`` as an index directory at ``out``, atomically replacing any previous one.

    ``vector_index``: an already filled FAISS index for ``contents.vectors`` (``index add`` passes
    the old one with the new vectors added, so nothing is retrained); None builds one.
    """
    out = Path(out)
    vectors = np.asarray(contents.vectors, dtype=np.float32)
    n, dim = vectors.shape if vectors.ndim == 2 else (0, 0)
    if n == 0:
        raise UserError(f"{out}: no images to index (every source item was skipped: {contents.stats}); "
                        "check the --images/--shards/--parquet input")
    if len(contents.metadata) != n:
        raise ValueError(f"metadata has {len(contents.metadata)} rows for {n} vectors")
    params = contents.params.resolved(n, dim)
    with index_lock(out):
        return write_version(out, lambda tmp: _write_files(tmp, vectors, contents, params, created, vector_index),
                             _before_swap)


@contextlib.contextmanager
def index_lock(out: str | Path) -> Iterator[None]:
    """Hold the exclusive writer lock of the index at ``out``; a second writer waits here for the first.

    The lock file sits beside the folder (``.NAME.lock``), not in it: every write swaps the folder
    for a new one, and a lock inside would be a different file after each swap. The holder deletes
    it on release (no file is left beside the index); a waiter that then gets the lock on the
    deleted file notices (its inode is no longer the path's) and locks the current file instead.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path, waited = out.parent / f".{out.name}.lock", False
    while True:
        fh = open(path, "a+b")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not waited:
                log.warning("%s: another `openalign index build/add` is writing this index; waiting for it", out)
                waited = True
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        fh.close()  # the file was deleted by the writer we waited for: lock the new one
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still holding it: a waiter on this file retries
        fh.close()


def write_version(out: Path, write: Callable[[Path], dict], _before_swap: Callable[[Path], None] | None = None) -> dict:
    """Run ``write(tmp)`` on a fresh sibling temp folder, then swap it in (the caller holds :func:`index_lock`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    try:
        manifest = write(tmp)
        if _before_swap is not None:
            _before_swap(tmp)  # tests simulate a crash here
        swap_in(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _write_files(tmp: Path, vectors: np.ndarray, c: IndexContents, p: IndexParams, created: str | None,
                 vector_index: Any) -> dict:
    index, p, tuning = ((vector_index, p, None) if vector_index is not None else
                        build_vector_index(vectors, p, workdir=tmp))
    save_vector_index(index, tmp, p)
    np.save(tmp / EMBEDDINGS, vectors.astype(np.float16))
    c.metadata.to_parquet(tmp / METADATA, index=False)
    (tmp / THUMBNAILS).write_bytes(c.thumbnails)
    has_captions = c.caption_vectors is not None and len(c.caption_vectors) > 0
    if has_captions:
        cap = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
        cap.add_with_ids(np.ascontiguousarray(c.caption_vectors, dtype=np.float32), c.caption_ids.astype(np.int64))
        faiss.write_index(cap, str(tmp / CAPTIONS))
    manifest = index_manifest(c.model, vectors.shape[1], len(vectors), p, tuning, created, c.stats,
                              len(c.caption_vectors) if has_captions else 0)
    finish_version(tmp, manifest)
    return manifest


def index_manifest(model: dict[str, Any], dim: int, count: int, p: IndexParams, tuning: dict | None,
                   created: str | None, stats: dict[str, int], caption_count: int) -> dict:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    manifest = {
        "format": FORMAT,
        "model": model,
        "dim": int(dim),
        "count": int(count),
        "index_type": p.index_type,
        "index_params": asdict(p),
        "metric": "inner_product (cosine on L2-normalised vectors)",
        "captions_indexed": caption_count > 0,
        "caption_count": int(caption_count),
        "created": created or now,
        "updated": now,
        "version": uuid.uuid4().hex,  # unique per written version: readers detect a swap mid-load
        "stats": stats,
    }
    if tuning is not None:  # achieved recall@k on held-out vectors and the chosen search knobs
        manifest["tuning"] = tuning
    return manifest


def finish_version(tmp: Path, manifest: dict) -> None:
    """Write the manifest last and fsync every file of the version."""
    atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    for f in tmp.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def swap_in(tmp: Path, out: Path) -> None:
    """Replace ``out`` by the complete folder ``tmp``: one atomic exchange where the OS has it, else two renames."""
    old = out.with_name(f".{out.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        if not (out / MANIFEST).is_file() and any(out.iterdir()):
            raise UserError(f"--out {out}: exists and is not an openalign index; pick an empty or new folder")
        if _exchange(tmp, out):  # ``out`` now holds the new version, ``tmp`` the previous one
            fsync_dir(out.parent)
            shutil.rmtree(tmp, ignore_errors=True)
            return
        out.rename(old)
    tmp.rename(out)
    fsync_dir(out.parent)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    False where that is not available (other OS, old libc or kernel, a filesystem without it):
    the caller falls back to two renames.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def resolve_index_dir(path: str | Path) -> Path:
    """The index folder to read: ``path``, or its ``.old`` copy if a swap was interrupted midway."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and (old / MANIFEST).is_file():
        return old
    raise UserError(f"--index {path}: no {MANIFEST}; build an index with `openalign index build --out {path}`")


def read_manifest(path: str | Path) -> dict:
    d = resolve_index_dir(path)
    manifest = json.loads((d / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        raise UserError(f"{d / MANIFEST}: format {manifest.get('format')!r} is not {FORMAT!r}; rebuild the index")
    return manifest


def read_contents(path: str | Path) -> IndexContents:
    """Load an index directory back into memory (used by ``index add`` to append)."""
    d = resolve_index_dir(path)
    m = read_manifest(d)
    cap_vecs = cap_ids = None
    if m.get("captions_indexed"):
        cap = faiss.read_index(str(d / CAPTIONS))
        cap_ids = faiss.vector_to_array(cap.id_map).astype(np.int64)
        cap_vecs = faiss.rev_swig_ptr(faiss.downcast_index(cap.index).get_xb(), cap.ntotal * m["dim"]).reshape(-1, m["dim"]).copy()
    fields = {k: v for k, v in m["index_params"].items() if k in IndexParams.__dataclass_fields__}
    return IndexContents(
        vectors=np.load(d / EMBEDDINGS).astype(np.float32),
        metadata=pd.read_parquet(d / METADATA),
        model=m["model"],
        params=IndexParams(**fields),
        thumbnails=(d / THUMBNAILS).read_bytes() if (d / THUMBNAILS).is_file() else b"",
        caption_vectors=cap_vecs,
        caption_ids=cap_ids,
        stats=dict(m.get("stats", {})),
    )


def append_contents(path: str | Path, new: IndexContents,
                    _before_swap: Callable[[Path], None] | None = None) -> dict:
    """Append ``new`` (ids from 0) to the index at ``path`` without retraining its vector index.

    Holds the index's writer lock from reading the current version to swapping in the new one, so
    two concurrent appends run one after the other and both additions are kept.
    """
    with index_lock(path):
        return _append_locked(path, new, _before_swap)


def _append_locked(path: str | Path, new: IndexContents, _before_swap: Callable[[Path], None] | None) -> dict:
    d = resolve_index_dir(path)
    m = read_manifest(d)
    if new.vectors.shape[1] != m["dim"]:
        raise UserError(f"--model: embeddings have dim {new.vectors.shape[1]} but {d / MANIFEST} says dim {m['dim']}; "
                        "append with the model the index was built with")
    old = read_contents(d)
    n0, off = len(old.vectors), len(old.thumbnails)
    meta = new.metadata.copy()
    meta["thumb_offset"] = np.where(meta["thumb_offset"] >= 0, meta["thumb_offset"] + off, -1)
    merged = IndexContents(
        vectors=np.concatenate([old.vectors, new.vectors.astype(np.float32)]),
        metadata=normalise_metadata(pd.concat([old.metadata, meta], ignore_index=True)),
        model=old.model, params=old.params, thumbnails=old.thumbnails + new.thumbnails,
        caption_vectors=_concat_opt(old.caption_vectors, new.caption_vectors),
        caption_ids=_concat_opt(old.caption_ids, None if new.caption_ids is None else new.caption_ids + n0),
        stats={k: old.stats.get(k, 0) + new.stats.get(k, 0) for k in set(old.stats) | set(new.stats)},
    )
    index = lists_in_memory(read_vector_index(d))  # on-disk lists: extend a copy, the live file stays as is
    add_in_chunks(index, new.vectors)
    params = merged.params.resolved(len(merged.vectors), merged.vectors.shape[1])
    return write_version(Path(path), lambda tmp: _write_files(tmp, merged.vectors, merged, params, m.get("created"),
                                                              index), _before_swap)


def _concat_opt(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    parts = [x for x in (a, b) if x is not None and len(x)]
    return np.concatenate(parts) if parts else None


def knn_recall(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Recall@k of an approximate search: mean share of the exact top-k found in the approximate top-k.

    ``exact_ids`` typically come from :func:`openalign.evals.metrics.topk_indices` on exact scores.
    """
    approx_ids, exact_ids = np.asarray(approx_ids), np.asarray(exact_ids)
    k = exact_ids.shape[1]
    hits = [len(set(a[:k].tolist()) & set(e.tolist())) for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits) / k)
