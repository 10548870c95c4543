"""Index storage: type choice, approximate recall vs exact, atomic writes, append."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from openalign.errors import UserError
from openalign.evals.metrics import topk_indices
from openalign.search.index import (IndexContents, IndexParams, append_contents, choose_index_type, knn_recall,
                                    normalise_metadata, write_index)
from openalign.search.query import SearchIndex

from search_helpers import clustered_vectors

# Stated floors for recall@10 against exact search (clustered 64-d vectors, 20k of them).
RECALL_FLOOR = {"hnsw": 0.95, "ivfpq": 0.90}


def contents(vectors: np.ndarray, params: IndexParams = IndexParams(), start: int = 0) -> IndexContents:
    meta = normalise_metadata([{"path": f"img{start + i}.jpg", "caption": f"c{start + i}", "width": 10, "height": 10}
                               for i in range(len(vectors))])
    return IndexContents(vectors=vectors, metadata=meta, model={"name": "vectors", "dir": None, "dim": vectors.shape[1]},
                         params=params)


def test_auto_type_by_size_and_budget():
    p = IndexParams()
    assert choose_index_type(1_000, 640, p) == "flat"
    assert choose_index_type(100_000, 640, p) == "hnsw"
    assert choose_index_type(1_000_000, 640, p) == "ivfpq"
    assert choose_index_type(100_000, 640, IndexParams(memory_budget_mb=100)) == "ivfpq"
    with pytest.raises(UserError, match="--memory-budget-mb"):
        choose_index_type(1_000_000, 640, IndexParams(memory_budget_mb=1))


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_recall_at_10_vs_exact(tmp_path: Path, kind: str):
    x = clustered_vectors(20_000, 64, seed=1)
    q = clustered_vectors(200, 64, seed=1)[:200]  # same centres, fresh noise
    q = q + 0.05 * np.random.default_rng(2).normal(size=q.shape).astype(np.float32)
    write_index(tmp_path / kind, contents(x, IndexParams(index_type=kind)))
    index = SearchIndex(tmp_path / kind)
    assert index.manifest["index_type"] == kind
    exact = topk_indices(torch.from_numpy(q / np.linalg.norm(q, axis=1, keepdims=True) @ x.T), 10).numpy()
    _, approx = index.search_vectors(q, 10)
    recall = knn_recall(approx, exact)
    print(f"{kind}: recall@10 vs exact = {recall:.3f} (floor {RECALL_FLOOR[kind]})")
    assert recall >= RECALL_FLOOR[kind]


def test_flat_is_exact_and_ids_are_rows(tmp_path: Path):
    x = clustered_vectors(500, 32)
    write_index(tmp_path / "i", contents(x))
    index = SearchIndex(tmp_path / "i")
    scores, ids = index.search_vectors(x[:5], 3)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert index.record(3)["path"] == "img3.jpg" and index.manifest["count"] == 500


def test_crash_before_swap_keeps_previous_index(tmp_path: Path):
    out = tmp_path / "idx"
    write_index(out, contents(clustered_vectors(100, 16)))

    def crash(_tmp: Path) -> None:
        raise RuntimeError("simulated crash mid-build")

    with pytest.raises(RuntimeError):
        write_index(out, contents(clustered_vectors(300, 16, seed=5)), _before_swap=crash)
    assert SearchIndex(out).count == 100
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".idx.build")]


def test_killed_process_mid_build_leaves_previous_index(tmp_path: Path):
    out = tmp_path / "idx"
    write_index(out, contents(clustered_vectors(100, 16)))
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_search_index import contents
        from search_helpers import clustered_vectors
        from openalign.search.index import write_index
        write_index({str(out)!r}, contents(clustered_vectors(300, 16)), _before_swap=lambda t: os._exit(9))
    """)
    rc = subprocess.run([sys.executable, "-c", script], timeout=120).returncode
    assert rc == 9
    assert SearchIndex(out).count == 100  # the half-written temp folder is ignored
    write_index(out, contents(clustered_vectors(300, 16)))  # and a new build still succeeds
    assert SearchIndex(out).count == 300


def test_interrupted_swap_recovers_old_copy(tmp_path: Path):
    out = tmp_path / "idx"
    write_index(out, contents(clustered_vectors(100, 16)))
    out.rename(tmp_path / ".idx.old")  # the instant between the two renames
    assert SearchIndex(out).count == 100


@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_add_appends_without_retraining(tmp_path: Path, kind: str):
    x = clustered_vectors(3_000, 32)
    out = tmp_path / "idx"
    write_index(out, contents(x[:2_000], IndexParams(index_type=kind)))
    before = SearchIndex(out).manifest
    new = contents(x[2_000:], start=2_000)
    new.caption_vectors, new.caption_ids = x[2_000:2_010], np.arange(10)
    m = append_contents(out, new)
    index = SearchIndex(out)
    assert m["count"] == index.count == 3_000 and m["created"] == before["created"]
    assert m["index_params"] == before["index_params"]
    _, ids = index.search_vectors(x[2_500], 1)
    assert ids[0, 0] == 2_500 and index.record(2_500)["path"] == "img2500.jpg"
    assert index.captions.ntotal == 10


def test_append_rejects_other_dim(tmp_path: Path):
    write_index(tmp_path / "i", contents(clustered_vectors(50, 16)))
    with pytest.raises(UserError, match="dim"):
        append_contents(tmp_path / "i", contents(clustered_vectors(5, 8)))


def test_missing_index_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="manifest.json"):
        SearchIndex(tmp_path / "nope")
