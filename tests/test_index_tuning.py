"""Search knobs tuned to a recall target on held-out vectors: the target holds on fresh queries,
the manifest records what was measured, an out-of-reach target fails clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from openalign.errors import UserError
from openalign.evals.metrics import topk_indices
from openalign.search.index import (IndexContents, IndexParams, knn_recall, normalise_metadata, train_sample_size,
                                    write_index)
from openalign.search.query import SearchIndex
from openalign.search.tuning import drop_ids, holdout_ids

from search_helpers import clustered_vectors

N, DIM = 20_000, 64


def contents(vectors: np.ndarray, params: IndexParams) -> IndexContents:
    meta = normalise_metadata({"path": [f"img{i}.jpg" for i in range(len(vectors))]})
    return IndexContents(vectors=vectors, metadata=meta, model={"name": "vectors", "dir": None, "dim": vectors.shape[1]},
                         params=params)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """20k clustered vectors to index, and 300 fresh ones from the same clusters (never indexed)."""
    x = clustered_vectors(N + 300, DIM, seed=3)
    return x[:N], x[N:]


# Wide clusters, so the knobs matter: here IVF-PQ needs more than one list and a re-rank depth
# above 1 (the floor ``rerank=1`` lets the tuner pick it), HNSW an efSearch above the least tried.
@pytest.mark.parametrize("kind, spread", [("ivfpq", 1.0), ("hnsw", 2.0)])
def test_target_recall_holds_on_fresh_queries_and_manifest_records_it(tmp_path: Path, kind: str, spread: float):
    x = clustered_vectors(N + 300, DIM, spread=spread, seed=3)
    x, fresh = x[:N], x[N:]
    m = write_index(tmp_path / kind, contents(x, IndexParams(index_type=kind, target_recall=0.95, rerank=1)))
    t = m["tuning"]
    assert t["target_recall"] == 0.95 and t["k"] == 10 and t["met"] and t["recall"] >= 0.95
    assert t["recall_queries"] > 0 and t["tuning_queries"] > 0
    chosen, params = t["chosen"], m["index_params"]
    if kind == "ivfpq":  # the chosen knobs are the index's defaults from now on
        assert params["ivf_nprobe"] == chosen["nprobe"] > 1 and params["rerank"] == chosen["rerank"] > 1
    else:
        assert params["hnsw_ef_search"] == chosen["ef_search"] > 16
    assert chosen["p50_ms"] is not None and t["candidates"][0]["p50_ms"] <= t["candidates"][-1]["p50_ms"]

    index = SearchIndex(tmp_path / kind)
    exact = topk_indices(torch.from_numpy(fresh @ x.T), 10).numpy()
    _, approx = index.search_vectors(fresh, 10)
    recall = knn_recall(approx, exact)
    print(f"{kind}: tuned {chosen}; recall@10 held-out {t['recall']:.3f}, fresh queries {recall:.3f}")
    assert recall >= 0.95
    # the server tells what was measured (the page shows it)
    from fastapi.testclient import TestClient

    from openalign.search.query import Searcher
    from openalign.search.server import create_app

    class NoText:  # /api/info needs no encoder; the server insists on one for text queries
        dim = DIM

    info = TestClient(create_app(Searcher.open(tmp_path / kind, NoText()))).get("/api/info").json()
    assert info["recall_at_10"] == pytest.approx(t["recall"]) and info["target_recall"] == 0.95
    assert info["search_params"]["rerank"] == params["rerank"]


def test_out_of_reach_target_is_a_clear_error(tmp_path: Path):
    # Structureless vectors in 4-bit codes (16 values per vector): no re-rank depth finds their true neighbours.
    x = np.random.default_rng(0).normal(size=(N, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    p = IndexParams(index_type="ivfpq", pq_m=1, pq_nbits=4, target_recall=0.999)
    with pytest.raises(UserError, match=r"--target-recall 0\.999: .* reaches recall@10 0\.\d+ at most"):
        write_index(tmp_path / "i", contents(x, p))
    assert not (tmp_path / "i").exists()  # nothing half-written


def test_target_out_of_range_and_zero_turns_tuning_off(tmp_path: Path, data):
    x, _ = data
    with pytest.raises(UserError, match="--target-recall"):
        write_index(tmp_path / "bad", contents(x[:2000], IndexParams(index_type="hnsw", target_recall=1.5)))
    m = write_index(tmp_path / "off", contents(x[:2000], IndexParams(index_type="hnsw", target_recall=0, hnsw_ef_search=77)))
    assert "tuning" not in m and m["index_params"]["hnsw_ef_search"] == 77
    m = write_index(tmp_path / "flat", contents(x[:2000], IndexParams()))
    assert m["index_type"] == "flat" and "tuning" not in m  # exact: nothing to tune


def test_ivf_training_sample_grows_with_lists():
    p = IndexParams(train_size=50_000)
    assert train_sample_size(10_000_000, IndexParams(ivf_nlist=100)) == 50_000
    assert train_sample_size(10_000_000, IndexParams(ivf_nlist=3162)) >= 39 * 3162
    assert train_sample_size(10_000_000, IndexParams(ivf_nlist=65_536)) == 1_000_000  # capped
    assert train_sample_size(30_000, IndexParams(ivf_nlist=3162)) == 30_000  # never more than there is
    assert p.resolved(1_000_000, 640).ivf_nlist * 39 <= train_sample_size(1_000_000, p.resolved(1_000_000, 640))


def test_holdout_sets_are_disjoint_and_held_out_ids_are_dropped():
    a, b = holdout_ids(10_000, 500, seed=0)
    assert len(a) == len(b) == 500 and not set(a.tolist()) & set(b.tolist())
    a, b = holdout_ids(10_000, 500, seed=0, tail=True)
    assert sorted([*a, *b]) == list(range(9_000, 10_000))
    found = np.array([[5, 1, 2], [0, -1, 3]])
    assert drop_ids(found, np.array([5, 3]), 2).tolist() == [[1, 2], [0, -1]]
