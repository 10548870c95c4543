"""Search parameters tuned to a recall target, measured on the collection itself.

An approximate index is only as good as its query-time knobs: ``nprobe`` (IVF lists visited),
``efSearch`` (HNSW beam width) and the re-rank depth (IVF-PQ candidates re-scored exactly with the
stored vectors). :func:`tune` picks them for a recall@k target at the lowest measured latency:

1. Hold out queries: two disjoint sets of ``queries`` collection vectors (one to search the
   parameter space, one fresh to report the recall of the choice), kept OUT of the index while it
   is measured and added afterwards (the index is trained once, on everything). Held-out, not
   left-one-out: an HNSW graph links each stored vector to its neighbours, so a stored vector
   used as a query finds them far more easily than a new query does (measured: 0.95 held-in vs
   0.91 on new vectors). IVF holds out a random sample (ids kept with ``add_with_ids``); HNSW,
   whose ids are its insertion order, the last rows.
2. Exact neighbours among the indexed rows by brute force, one streamed pass over blocks of rows
   (``faiss.knn`` per block, merged in a ``faiss.ResultHeap``): the vectors may be a file
   (:class:`NpyVectors`), never loaded whole.
3. IVF: ``nprobe`` doubles from 1; one search per ``nprobe`` fetches ``k * max(RERANK_DEPTHS)``
   candidates and the exact re-scoring of every prefix gives recall for each re-rank depth at
   once. For each depth the smallest ``nprobe`` that meets the target (on the tuning set, minus
   two standard errors) is bisected. HNSW: the smallest ``efSearch`` that meets it.
4. The candidates that meet it are timed one query at a time (as the server searches); the
   fastest p50 wins. Its recall on the fresh set is the reported one; if that falls short the
   knob is raised a step at a time.

The faiss ``autofaiss`` package tunes the opposite way (the best recall under a query-time limit,
recall only reported) and pins ``numpy<2``; see ``docs/search.md``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import faiss
import numpy as np
from tqdm.auto import tqdm

from openalign.errors import UserError


class Vectors(Protocol):
    """Row-addressable (N, D) vectors: an array in memory, or a file read a block at a time."""

    def __len__(self) -> int: ...

    def rows(self, ids: np.ndarray) -> np.ndarray: ...  # (len(ids), D) float32, in the order asked

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]: ...  # (first row, (B, D) float32) in row order


class ArrayVectors:
    """:class:`Vectors` over an array (or a memory map) already open."""

    def __init__(self, a: np.ndarray, chunk: int = 65_536) -> None:
        self.a, self.chunk = a, chunk

    def __len__(self) -> int:
        return len(self.a)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.a[ids], dtype=np.float32)

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        for i in range(0, len(self.a), self.chunk):
            yield i, np.ascontiguousarray(self.a[i : i + self.chunk], dtype=np.float32)


class NpyVectors(ArrayVectors):
    """:class:`Vectors` over an ``.npy`` file (the index's float16 copy): random rows from one memory
    map (what the server re-ranks from), blocks each from a fresh map dropped after use, so a pass
    over the file leaves no mapped pages behind in this process."""

    def __init__(self, path: str | Path, chunk: int = 65_536) -> None:
        self.path = Path(path)
        super().__init__(np.load(self.path, mmap_mode="r"), chunk)

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        bar = tqdm(total=len(self.a), desc=f"index: pass over {self.path.name}", unit="row", leave=False,
                   disable=len(self.a) <= self.chunk)
        for i in range(0, len(self.a), self.chunk):
            bar.update(min(self.chunk, len(self.a) - i))
            mm = np.load(self.path, mmap_mode="r")
            block = np.array(mm[i : i + self.chunk], dtype=np.float32)
            del mm
            yield i, block


def as_vectors(v: np.ndarray | Vectors) -> Vectors:
    return ArrayVectors(v) if isinstance(v, np.ndarray) else v


RERANK_DEPTHS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)  # candidates = k * depth; 1 = approximate scores only
EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
TIMED_QUERIES = 100


@dataclass(frozen=True)
class Choice:
    """One point of the parameter space and what it measured."""

    nprobe: int | None = None
    ef_search: int | None = None
    rerank: int = 1
    recall: float = 0.0  # recall@k on the tuning queries
    p50_ms: float | None = None
    p99_ms: float | None = None


@dataclass
class Tuning:
    """The outcome written to the manifest's ``tuning`` entry."""

    target_recall: float
    k: int
    recall: float  # recall@k of the chosen parameters on fresh held-out queries
    recall_queries: int
    tuning_queries: int
    chosen: Choice
    candidates: list[Choice] = field(default_factory=list)  # the fastest-first points that met the target
    seconds: float = 0.0
    method: str = "collection vectors held out of the index while measured, exact brute-force neighbours"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["met"] = self.recall >= self.target_recall
        return d


def holdout_ids(n: int, count: int, seed: int, tail: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint id sets of ``count`` each (tuning, fresh), fewer for small ``n``: random, or the last rows."""
    count = max(1, min(count, n // 8))
    ids = (np.arange(n - 2 * count, n) if tail else
           np.random.default_rng(seed + 7919).choice(n, 2 * count, replace=False))
    return ids[:count], ids[count:]


def exact_neighbours(vectors: np.ndarray | Vectors, ids: np.ndarray, k: int, held_out: np.ndarray) -> np.ndarray:
    """(Q, k) exact inner-product neighbours of ``vectors[ids]`` among the rows not in ``held_out``.

    One streamed pass: each block's own top-k (held-out rows removed first) merged into a running
    top-k heap, so neither the collection nor a (Q, k + held-out) result is ever held.
    """
    src = as_vectors(vectors)
    q = src.rows(ids)
    heap = faiss.ResultHeap(len(q), k, keep_max=True)
    held = np.sort(np.asarray(held_out, dtype=np.int64))
    for start, block in src.blocks():
        rows = np.arange(start, start + len(block), dtype=np.int64)
        keep = ~np.isin(rows, held, assume_unique=True)
        if not keep.any():
            continue
        d, i = faiss.knn(q, np.ascontiguousarray(block[keep]), min(k, int(keep.sum())),
                         metric=faiss.METRIC_INNER_PRODUCT)
        if i.shape[1] < k:  # a block smaller than k: pad so every result has k columns
            d = np.pad(d, ((0, 0), (0, k - i.shape[1])), constant_values=-np.inf)
            i = np.pad(i, ((0, 0), (0, k - i.shape[1])), constant_values=-1)
        heap.add_result(np.ascontiguousarray(d, dtype=np.float32), np.where(i >= 0, rows[keep][i], -1))
    heap.finalize()
    return drop_ids(heap.I, held, k)


def drop_ids(found: np.ndarray, drop: np.ndarray, k: int) -> np.ndarray:
    """Remove ``drop`` ids (and -1 padding) from each row and keep the first ``k`` (padded with -1)."""
    out = np.full((len(found), k), -1, dtype=np.int64)
    for r, row in enumerate(found):
        keep = row[~np.isin(row, drop) & (row >= 0)][:k]
        out[r, : len(keep)] = keep
    return out


def per_query_recall(found: np.ndarray, exact: np.ndarray) -> np.ndarray:
    k = exact.shape[1]
    return np.array([len(set(f[:k].tolist()) & set(e.tolist())) / k for f, e in zip(found, exact)])


def _rerank_prefixes(vectors: Vectors, q: np.ndarray, cand: np.ndarray, k: int,
                     depths: tuple[int, ...]) -> dict[int, np.ndarray]:
    """For each depth d, the top-k by exact score among the first k*d candidates (as the server re-ranks)."""
    out = {d: np.full((len(q), k), -1, dtype=np.int64) for d in depths}
    for r in range(len(q)):
        row = cand[r]
        valid = row >= 0
        exact = np.full(len(row), -np.inf, dtype=np.float32)
        exact[valid] = vectors.rows(row[valid]) @ q[r]
        for d in depths:
            m = min(k * d, len(row))
            top = np.argsort(-exact[:m], kind="stable")[:k]
            top = top[np.isfinite(exact[top])]
            out[d][r, : len(top)] = row[top]
    return out


class _Evaluator:
    """Recall of a knob setting on a fixed query set (each query's own id dropped)."""

    def __init__(self, index: Any, vectors: Vectors, ids: np.ndarray, k: int, held_out: np.ndarray) -> None:
        self.index, self.vectors, self.ids, self.k = index, vectors, ids, k
        self.q = vectors.rows(ids)
        self.exact = exact_neighbours(vectors, ids, k, held_out)

    def ivf(self, nprobe: int, depths: tuple[int, ...]) -> dict[int, np.ndarray]:
        faiss.extract_index_ivf(self.index).nprobe = nprobe
        _, cand = self.index.search(self.q, min(self.k * max(depths), self.index.ntotal))
        return {d: per_query_recall(f, self.exact) for d, f in
                _rerank_prefixes(self.vectors, self.q, cand, self.k, depths).items()}

    def hnsw(self, ef: int) -> np.ndarray:
        self.index.hnsw.efSearch = ef
        _, found = self.index.search(self.q, self.k)
        return per_query_recall(found, self.exact)


MARGIN_SE = 2.0  # the tuning set must clear the target by two standard errors of its mean


def _lower(rec: np.ndarray) -> float:
    """Mean recall minus MARGIN_SE standard errors: a choice that only just clears the target on the
    tuning queries (the smallest knob that does) tends to fall short on fresh ones."""
    return float(rec.mean() - MARGIN_SE * rec.std(ddof=1) / math.sqrt(len(rec))) if len(rec) > 1 else float(rec.mean())


Filler = Callable[[Any, "Vectors", np.ndarray], None]  # (empty trained index, vectors, ids to leave out)
Adder = Callable[[Any, "Vectors", np.ndarray], None]  # (filled index, vectors, ids to add now)


def tune(index: Any, vectors: np.ndarray | Vectors, kind: str, target: float, k: int = 10, queries: int = 500,
         seed: int = 0, min_rerank: int = 1, max_rerank: int = 128, fill: Filler | None = None,
         add: Adder | None = None) -> Tuning:
    """Choose ``nprobe``/``efSearch``/re-rank depth for recall@k >= ``target`` at the lowest p50 latency.

    ``index`` is the trained, EMPTY faiss index for ``vectors`` (row i = id i); ``kind`` is ``hnsw``
    or ``ivfpq``. It is filled here: every row but the held-out ones, then (after measuring) those.
    Re-rank depths run from ``min_rerank`` (a floor: the server fetches ``k * rerank`` candidates,
    so a query with k < 10 gets fewer than were tuned) to ``max_rerank``. Raises
    :class:`UserError` when the target is out of reach of this index. ``vectors`` may be a
    :class:`Vectors` read a block at a time; ``fill`` and ``add`` replace the in-memory fill and the
    final addition of the held-out rows (the on-disk build writes per-block inverted lists and
    merges them).
    """
    t0 = time.perf_counter()
    vectors = as_vectors(vectors)
    n = len(vectors)
    k = max(1, min(k, n - 1))
    tune_ids, fresh_ids = holdout_ids(n, queries, seed, tail=kind == "hnsw")
    held = np.concatenate([tune_ids, fresh_ids])
    if kind == "hnsw":
        _fill_hnsw(index, vectors, held)
    else:
        (fill or fill_index)(index, vectors, held)
    ev = _Evaluator(index, vectors, tune_ids, k, held)
    if kind == "hnsw":
        found = _tune_hnsw(ev, target)
    elif kind == "ivfpq":
        max_rerank = max(min_rerank, max_rerank)
        depths = sorted({min_rerank, *(d for d in RERANK_DEPTHS if min_rerank <= d <= max_rerank)})
        found = _tune_ivf(ev, target, tuple(depths))
    else:
        raise ValueError(f"nothing to tune for index type {kind!r}")
    timed = sorted((_timed(index, vectors, c, k, ev.q[:TIMED_QUERIES]) for c in found), key=lambda c: c.p50_ms)
    chosen = timed[0]
    fresh = _Evaluator(index, vectors, fresh_ids, k, held) if len(fresh_ids) else ev
    chosen, recall = _confirm(fresh, chosen, target, nlist=_nlist(index), max_rerank=max_rerank)
    if add is None:
        _add(index, vectors, np.sort(held), kind)
    else:
        add(index, vectors, np.sort(held))
    set_knobs(index, chosen)
    return Tuning(target_recall=target, k=k, recall=recall, recall_queries=len(fresh.ids),
                  tuning_queries=len(tune_ids), chosen=chosen, candidates=timed,
                  seconds=time.perf_counter() - t0)


def fill_index(index: Any, vectors: Vectors, held: np.ndarray) -> None:
    """Add every row but ``held`` with its row number as id, a block at a time."""
    held = np.sort(np.asarray(held, dtype=np.int64))
    for start, block in vectors.blocks():
        rows = np.arange(start, start + len(block), dtype=np.int64)
        keep = ~np.isin(rows, held, assume_unique=True)
        index.add_with_ids(np.ascontiguousarray(block[keep]), rows[keep])


def _fill_hnsw(index: Any, vectors: Vectors, held: np.ndarray) -> None:
    """HNSW ids are insertion order: ``held`` is the tail, every row before it is added in order."""
    stop = int(held.min())
    for start, block in vectors.blocks():
        if start >= stop:
            break
        index.add(np.ascontiguousarray(block[: stop - start]))


def _add(index: Any, vectors: Vectors, ids: np.ndarray, kind: str) -> None:
    x = vectors.rows(ids)
    if kind == "hnsw":
        index.add(x)  # the tail, in order
    else:
        index.add_with_ids(x, ids.astype(np.int64))


def _nlist(index: Any) -> int | None:
    ivf = faiss.try_extract_index_ivf(index) if not isinstance(index, faiss.IndexHNSW) else None
    return None if ivf is None else int(ivf.nlist)


def _tune_hnsw(ev: _Evaluator, target: float) -> list[Choice]:
    best = Choice()
    for ef in EF_SEARCH:
        rec = ev.hnsw(max(ef, ev.k + 1))
        best = Choice(ef_search=ef, recall=float(rec.mean()))
        if _lower(rec) >= target:
            return [best]
    raise UserError(f"--target-recall {target}: HNSW reaches recall@{ev.k} {best.recall:.3f} at most "
                    f"(efSearch {best.ef_search}); lower --target-recall or raise --hnsw-m")


def _tune_ivf(ev: _Evaluator, target: float, depths: tuple[int, ...]) -> list[Choice]:
    nlist = faiss.extract_index_ivf(ev.index).nlist
    curve: dict[int, dict[int, np.ndarray]] = {}  # nprobe -> depth -> per-query recall
    nprobe = 1
    while True:
        curve[nprobe] = ev.ivf(nprobe, depths)
        if _lower(curve[nprobe][depths[0]]) >= target or nprobe >= nlist:
            break
        prev = curve.get(nprobe // 2)
        if prev is not None and nprobe >= 64 and all(
                curve[nprobe][d].mean() - prev[d].mean() < 1e-3 for d in depths):
            break  # visiting more lists no longer helps: the PQ codes limit recall
        nprobe = min(2 * nprobe, nlist)
    found = []
    for d in depths:
        meets = [p for p in sorted(curve) if _lower(curve[p][d]) >= target]
        if not meets:
            continue
        hi = meets[0]
        lo = max((p for p in curve if p < hi), default=0)
        while hi - lo > max(1, hi // 8):  # bisect to within 1/8 of nprobe
            mid = (lo + hi) // 2
            curve.setdefault(mid, ev.ivf(mid, depths))
            lo, hi = (lo, mid) if _lower(curve[mid][d]) >= target else (mid, hi)
        found.append(Choice(nprobe=hi, rerank=d, recall=float(curve[hi][d].mean())))
    if not found:
        best_p = max(curve, key=lambda p: curve[p][depths[-1]].mean())
        best = curve[best_p][depths[-1]].mean()
        raise UserError(f"--target-recall {target}: this IVF-PQ index reaches recall@{ev.k} {best:.3f} at most "
                        f"(nprobe {best_p}, rerank {depths[-1]}); lower --target-recall, raise --pq-m (finer codes) "
                        "or --memory-budget-mb (HNSW when it fits)")
    # Drop points dominated by one with fewer lists and no deeper re-rank.
    return [c for c in found if not any(o.nprobe <= c.nprobe and o.rerank < c.rerank for o in found)]


def set_knobs(index: Any, c: Choice) -> None:
    if c.ef_search is not None:
        index.hnsw.efSearch = c.ef_search
    if c.nprobe is not None:
        faiss.extract_index_ivf(index).nprobe = c.nprobe


def _timed(index: Any, vectors: Vectors, c: Choice, k: int, q: np.ndarray) -> Choice:
    """Single-query p50/p99 of one setting, searched and re-ranked the way the server does."""
    set_knobs(index, c)
    ms = []
    for row in q[:, None, :]:
        t = time.perf_counter()
        if c.rerank > 1:
            _, cand = index.search(row, min(k * c.rerank, index.ntotal))
            cc = np.sort(cand[0][cand[0] >= 0])
            s = vectors.rows(cc) @ row[0]
            cc[np.argsort(-s, kind="stable")[:k]]
        else:
            index.search(row, k)
        ms.append((time.perf_counter() - t) * 1000)
    ms = np.array(ms[1:] if len(ms) > 1 else ms)  # the first query warms caches
    return Choice(**{**asdict(c), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))})


def _confirm(ev: _Evaluator, c: Choice, target: float, nlist: int | None, max_rerank: int,
             steps: int = 4) -> tuple[Choice, float]:
    """Recall of ``c`` on fresh queries; a short fall raises the knobs a step (x1.25, next depth) up to ``steps`` times."""
    for i in range(steps + 1):
        if c.ef_search is not None:
            rec = float(ev.hnsw(c.ef_search).mean())
        else:
            rec = float(ev.ivf(c.nprobe, (c.rerank,))[c.rerank].mean())
        if rec >= target or i == steps:
            return c, rec
        if c.ef_search is not None:
            c = Choice(**{**asdict(c), "ef_search": math.ceil(c.ef_search * 1.25)})
        else:
            deeper = [d for d in RERANK_DEPTHS if c.rerank < d <= max_rerank]
            c = Choice(**{**asdict(c), "nprobe": min(nlist or c.nprobe, math.ceil(c.nprobe * 1.25)),
                          "rerank": deeper[0] if deeper else c.rerank})
    return c, rec
