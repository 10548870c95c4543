"""``index build --embeddings`` streams the parts: the same index as the in-memory build, on-disk
IVF lists that queries memory-map, Python allocations far below the collection's size, and a
writer lock that keeps two concurrent ``index add`` runs from losing each other's additions."""

from __future__ import annotations

import threading
import time
import tracemalloc
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest
from search_helpers import clustered_vectors

from openalign.search.index import IndexContents, IndexParams, append_contents, normalise_metadata, write_index
from openalign.search.parts import build_index_from_parts, contents_from_parts, read_parts, write_vector_parts
from openalign.search.query import Query, Searcher, SearchIndex

N, DIM, PARTS = 20_000, 64, 4
MODEL = {"name": "vectors", "dir": None, "dim": DIM, "fingerprint": "test-vectors"}
# Small training sample and blocks, so that streaming visibly holds a fraction of the collection.
PARAMS = IndexParams(index_type="ivfpq", ivf_nlist=32, train_size=2048, ivf_nprobe=4, rerank=4, target_recall=0,
                     tune_queries=100)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """20k clustered 64-d vectors written as 4 parts (float16, as `openalign embed` stores them), and 200 fresh queries."""
    x = clustered_vectors(N + 200, DIM, spread=0.8, seed=11)
    x, fresh = x[:N].astype(np.float16).astype(np.float32), x[N:]
    emb = tmp_path_factory.mktemp("stream") / "emb"
    size = N // PARTS
    meta = lambda k: pd.DataFrame({"path": [f"img{i}.jpg" for i in range(k * size, (k + 1) * size)]})
    write_vector_parts(emb, MODEL, N, size, ((x[k * size : (k + 1) * size], meta(k)) for k in range(PARTS)))
    return emb, x, fresh


def reference(emb: Path, out: Path, p: IndexParams) -> dict:
    """The in-memory build: every vector loaded as float32, then written."""
    return write_index(out, contents_from_parts(read_parts(emb), p))


def same_results(a: Path, b: Path, q: np.ndarray, knobs: IndexParams) -> None:
    sa, ia = SearchIndex(a, knobs).search_vectors(q, 10)
    sb, ib = SearchIndex(b, knobs).search_vectors(q, 10)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(sa, sb)


@pytest.mark.parametrize("target", [0.0, pytest.param(0.9, marks=pytest.mark.slow)])  # tuned: a minute more
def test_streamed_and_on_disk_builds_equal_the_in_memory_build(data, tmp_path: Path, target: float):
    emb, _, fresh = data
    p = IndexParams(**{**PARAMS.__dict__, "target_recall": target})
    ref = reference(emb, tmp_path / "memory", p)
    streamed = build_index_from_parts(emb, tmp_path / "streamed", p, chunk=3000)
    on_disk = build_index_from_parts(emb, tmp_path / "disk", IndexParams(**{**p.__dict__, "on_disk": True}), chunk=3000)
    assert not streamed["index_params"]["on_disk"] and on_disk["index_params"]["on_disk"]
    assert (tmp_path / "disk" / "index.ivfdata").is_file() and not (tmp_path / "streamed" / "index.ivfdata").exists()
    def measured(m: dict) -> set:  # the settings that met the target and their recall (timings are noise)
        return {(c["nprobe"], c["rerank"], c["recall"]) for c in m["tuning"]["candidates"]}

    for m in (streamed, on_disk):  # same ids and metadata; the tuner measured the same recall everywhere
        assert m["count"] == N and m["stats"] == ref["stats"]
        for k in ("ivf_nlist", "pq_m") if target else ("ivf_nlist", "pq_m", "ivf_nprobe", "rerank"):
            assert m["index_params"][k] == ref["index_params"][k], k
        if target:  # which of them was fastest is a timing, and may differ
            assert measured(m) == measured(ref) and m["tuning"]["recall"] >= target
    knobs = IndexParams(**{k: v for k, v in ref["index_params"].items() if k in IndexParams.__dataclass_fields__})
    for d in ("streamed", "disk"):
        np.testing.assert_array_equal(np.load(tmp_path / d / "embeddings.npy"), np.load(tmp_path / "memory" / "embeddings.npy"))
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / d / "metadata.parquet"),
                                      pd.read_parquet(tmp_path / "memory" / "metadata.parquet"))
        same_results(tmp_path / "memory", tmp_path / d, fresh, knobs)
    # the searcher maps the on-disk lists from the folder they were swapped into
    loaded = SearchIndex(tmp_path / "disk")  # held: the lists belong to it
    lists = faiss.extract_index_ivf(loaded.index).invlists
    assert isinstance(faiss.downcast_InvertedLists(lists), faiss.OnDiskInvertedLists)


def test_lists_go_on_disk_by_themselves_when_they_exceed_the_budget(data, tmp_path: Path):
    emb = data[0]
    # 20k x (8-byte codes + 8-byte ids) = 0.3 MB of lists; centroids and codebooks 0.07 MB
    m = build_index_from_parts(emb, tmp_path / "i", IndexParams(**{**PARAMS.__dict__, "memory_budget_mb": 0.2,
                                                                   "index_type": "auto"}))
    assert m["index_type"] == "ivfpq" and m["index_params"]["on_disk"]
    assert (tmp_path / "i" / "index.ivfdata").stat().st_size >= N * 16


def test_streaming_never_holds_all_vectors(tmp_path: Path):
    # 256-d, so that the vectors dominate what does not grow with the collection (the tuner's
    # candidate lists for its 2 x 100 held-out queries, one part's metadata, imported modules)
    dim, parts = 256, 8
    x = clustered_vectors(N, dim, spread=0.8, seed=4)
    model = {**MODEL, "dim": dim}
    write_vector_parts(tmp_path / "emb", model, N, N // parts,
                       ((x[k * N // parts : (k + 1) * N // parts], None) for k in range(parts)))
    emb, everything = tmp_path / "emb", N * dim * 4  # all vectors as float32: what the in-memory build holds
    p = IndexParams(**{**PARAMS.__dict__, "on_disk": True, "target_recall": 0.9, "pq_m": 32})
    tracemalloc.start()
    try:
        build_index_from_parts(emb, tmp_path / "s", p, chunk=2000)
        _, streamed_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        read_parts(emb)
        _, memory_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"peak Python allocations: streamed {streamed_peak / 2**20:.2f} MB, "
          f"read_parts {memory_peak / 2**20:.2f} MB, all vectors {everything / 2**20:.2f} MB")
    assert memory_peak > everything  # tracemalloc sees numpy's buffers: the reference really loads it all
    assert streamed_peak < 0.5 * everything


def test_query_and_add_on_an_on_disk_index(data, tmp_path: Path):
    emb, _, fresh = data
    out = tmp_path / "disk"
    build_index_from_parts(emb, out, IndexParams(**{**PARAMS.__dict__, "on_disk": True}))

    class Vectors:  # an encoder that is never called: queries by indexed image id
        dim = DIM

    hits = Searcher.open(out, Vectors()).search(Query(image_id=123), k=5)
    assert hits[0].id == 123 and hits[0].path == "img123.jpg" and abs(hits[0].score - 1) < 1e-3
    old = SearchIndex(out)
    new = IndexContents(vectors=fresh[:50], metadata=normalise_metadata({"path": [f"new{i}.jpg" for i in range(50)]}),
                        model=MODEL)
    m = append_contents(out, new)
    assert m["count"] == N + 50 and m["index_params"]["on_disk"]
    build_index_from_parts(emb, tmp_path / "memory", PARAMS)  # the same, lists in memory: the reference
    append_contents(tmp_path / "memory", new)
    _, ids = SearchIndex(out).search_vectors(fresh[:50], 10)
    np.testing.assert_array_equal(ids, SearchIndex(tmp_path / "memory").search_vectors(fresh[:50], 10)[1])
    assert (ids[:, 0] == np.arange(N, N + 50)).mean() >= 0.9  # new vectors find themselves
    # a version opened before the add still answers from its own lists (mapped, though swapped out)
    assert old.count == N and old.search_vectors(fresh[:5], 1)[1].max() < N


def test_concurrent_adds_keep_both_additions(tmp_path: Path, caplog):
    x = clustered_vectors(2000, DIM, seed=2)
    out = tmp_path / "i"
    write_index(out, IndexContents(vectors=x[:1000], metadata=normalise_metadata({"path": [None] * 1000}), model=MODEL,
                                   params=IndexParams(index_type="flat")))
    first_inside, order = threading.Event(), []

    def slow(tmp: Path) -> None:  # the first writer holds the lock for a while before its swap
        first_inside.set()
        time.sleep(1.0)

    def add(lo: int, hook=None) -> None:
        new = IndexContents(vectors=x[lo : lo + 100], metadata=normalise_metadata({"path": [f"{lo}-{i}" for i in range(100)]}),
                            model=MODEL)
        append_contents(out, new, _before_swap=hook)
        order.append(lo)

    a = threading.Thread(target=add, args=(1000, slow))
    a.start()
    assert first_inside.wait(30)
    b = threading.Thread(target=add, args=(1100,))
    b.start()
    a.join(60)
    b.join(60)
    assert order == [1000, 1100]  # the second waited for the first
    idx = SearchIndex(out)
    assert idx.count == 1200
    paths = set(idx.meta["path"].dropna())
    assert {f"1000-{i}" for i in range(100)} <= paths and {f"1100-{i}" for i in range(100)} <= paths
    assert "another `openalign index build/add` is writing this index; waiting" in caplog.text


def test_cli_index_build_embeddings_on_disk(data, tmp_path: Path, capsys):
    from openalign.cli.main import main

    emb, x, _ = data
    out = tmp_path / "idx"
    assert main(["index", "build", "--embeddings", str(emb), "--out", str(out), "--on-disk", "--ivf-nlist", "32",
                 "--train-size", "2048", "--target-recall", "0"]) == 0
    assert '"count": 20000' in capsys.readouterr().out
    idx = SearchIndex(out)
    assert idx.manifest["index_type"] == "ivfpq" and idx.manifest["index_params"]["on_disk"]
    assert (idx.search_vectors(x[:20], 1)[1][:, 0] == np.arange(20)).mean() >= 0.9  # approximate: most find themselves
