"""Search benchmark: approximate index vs exact brute force, and text-query latency through the HTTP API.

    .venv/bin/python bench/search.py                 # 100k and 1M vectors, tiny + b7-base presets
    .venv/bin/python bench/search.py --sizes 100000 --presets tiny

Part 1, for each size: L2-normalised 640-d vectors (a Gaussian mixture by default: real embeddings
cluster; ``--data uniform`` for structureless noise), the index type ``auto`` picks under the
memory budget (HNSW at 100k, IVF-PQ at 1M with the default 2048 MB), single-query latency p50/p99
and queries/s of it vs exact brute force (FAISS IndexFlatIP) in the same run, and recall@10 vs exact.
Part 2, for each preset: a random-init model saved to a temp dir, an index of random vectors, and
``GET /api/search?q=...`` through uvicorn on 127.0.0.1 (text encoder included), measured with the
encoder alone beside it. Each preset runs in a subprocess with a time limit; one that is too slow
or too big is skipped with the reason printed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 640


def make_vectors(n: int, kind: str, seed: int = 0, n_clusters: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    if kind == "clustered":
        centres = rng.standard_normal((n_clusters, DIM), dtype=np.float32)
        x *= 0.8
        for i in range(0, n, 100_000):  # in chunks: no second n x 640 array
            x[i : i + 100_000] += centres[rng.integers(0, n_clusters, min(100_000, n - i))]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def latencies(fn, queries: np.ndarray) -> np.ndarray:
    out = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q[None])
        out.append(time.perf_counter() - t0)
    return np.array(out) * 1000  # ms


def summary(ms: np.ndarray) -> dict:
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "qps": float(1000 / ms.mean())}


def bench_size(n: int, kind: str, nq: int, budget_mb: float, workdir: Path) -> dict:
    import faiss

    from openalign.search.index import IndexContents, IndexParams, knn_recall, normalise_metadata, write_index
    from openalign.search.query import SearchIndex

    t0 = time.perf_counter()
    x = make_vectors(n, kind)
    rng = np.random.default_rng(1)
    q = x[rng.choice(n, nq, replace=False)] + 0.3 * rng.standard_normal((nq, DIM), dtype=np.float32) / np.sqrt(DIM)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    gen_s = time.perf_counter() - t0
    meta = normalise_metadata(pd_rows(n))
    t0 = time.perf_counter()
    m = write_index(workdir / f"idx-{n}", IndexContents(vectors=x, metadata=meta, params=IndexParams(memory_budget_mb=budget_mb),
                                                        model={"name": "random", "dir": None, "dim": DIM}))
    build_s = time.perf_counter() - t0
    approx = SearchIndex(workdir / f"idx-{n}")
    exact = faiss.IndexFlatIP(DIM)
    exact.add(x)
    del x
    a_ms = latencies(lambda v: approx.search_vectors(v, 10), q)
    e_ms = latencies(lambda v: exact.search(v, 10), q)
    _, e_ids = exact.search(q, 10)
    _, a_ids = approx.search_vectors(q, 10)
    _, raw_ids = approx.search_vectors(q, 10, rerank=1)
    res = {"n": n, "data": kind, "index_type": m["index_type"], "gen_s": gen_s, "build_s": build_s,
           "approx": summary(a_ms), "exact": summary(e_ms), "recall@10": knn_recall(a_ids, e_ids),
           "recall@10_no_rerank": knn_recall(raw_ids, e_ids),
           "index_mb": (workdir / f"idx-{n}" / "index.faiss").stat().st_size / 2**20,
           "exact_mb": n * DIM * 4 / 2**20}
    del exact, approx
    return res


def pd_rows(n: int) -> dict:
    return {"path": [None] * n}


def e2e_child(preset: str, nq: int) -> dict:
    """Runs in a subprocess: random-init model -> temp dir -> index -> uvicorn -> timed text queries."""
    import threading

    import httpx
    import uvicorn

    from openalign.models.bundle import load_bundle
    from openalign.models.dual_encoder import DualEncoder
    from openalign.models.tokenizer import train_wordpiece
    from openalign.search.index import IndexContents, normalise_metadata, write_index
    from openalign.search.query import Searcher
    from openalign.search.server import create_app

    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{preset}-"))
    t0 = time.perf_counter()
    words = "red green blue yellow circle square triangle photo of a the small big dog cat car shoes".split()
    tok = train_wordpiece([" ".join(words[i:] + words[:i]) for i in range(len(words))] * 4, tmp / "tok",
                          vocab_size=300, min_frequency=1)
    DualEncoder.from_preset(preset, vocab_size=len(tok), seed=0).save_pretrained(tmp / "model", tokenizer=tok)
    bundle = load_bundle(tmp / "model")
    setup_s = time.perf_counter() - t0
    n = 10_000
    x = np.random.default_rng(0).standard_normal((n, bundle.dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    write_index(tmp / "index", IndexContents(vectors=x, metadata=normalise_metadata({"path": [None] * n}),
                                             model={"name": preset, "dir": str(tmp / "model"), "dim": bundle.dim}))
    app = create_app(Searcher.open(tmp / "index", bundle))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    queries = [f"a photo of a {words[i % 5]} {words[5 + i % 3]}" for i in range(nq)]
    bundle.encode_texts(["warm up"])
    enc_ms = [_timed(lambda t=t: bundle.encode_texts([t])) for t in queries]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
        c.get("/api/search", params={"q": "warm up", "k": 10})
        http_ms = [_timed(lambda t=t: c.get("/api/search", params={"q": t, "k": 10}).raise_for_status()) for t in queries]
    server.should_exit = True
    th.join(timeout=10)
    params = sum(p.numel() for p in bundle.model.parameters())
    return {"preset": preset, "params_m": params / 1e6, "setup_s": setup_s, "index_n": n,
            "http": summary(np.array(http_ms)), "encoder_only": summary(np.array(enc_ms))}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def run_e2e(preset: str, nq: int, limit_s: int) -> dict:
    cmd = [sys.executable, __file__, "--e2e-child", preset, "--queries", str(nq)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return {"preset": preset, "skipped": f"took longer than {limit_s}s (model creation + save + load on this machine)"}
    if p.returncode != 0:
        tail = (p.stderr or "").strip().splitlines()[-1:] or ["?"]
        return {"preset": preset, "skipped": f"exit {p.returncode}: {tail[0]} (out of memory?)"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def print_size(r: dict) -> None:
    a, e = r["approx"], r["exact"]
    print(f"\n== {r['n']:,} x {DIM}-d ({r['data']}) : {r['index_type']} vs exact flat "
          f"(build {r['build_s']:.1f}s, index {r['index_mb']:.0f} MB vs {r['exact_mb']:.0f} MB flat)")
    print(f"  {'':10s} {'p50 ms':>9s} {'p99 ms':>9s} {'queries/s':>10s}")
    print(f"  {r['index_type']:10s} {a['p50_ms']:9.3f} {a['p99_ms']:9.3f} {a['qps']:10.1f}")
    print(f"  {'exact':10s} {e['p50_ms']:9.3f} {e['p99_ms']:9.3f} {e['qps']:10.1f}")
    print(f"  ratio      p50 {e['p50_ms'] / a['p50_ms']:.1f}x faster, p99 {e['p99_ms'] / a['p99_ms']:.1f}x, "
          f"qps {a['qps'] / e['qps']:.1f}x;  recall@10 {r['recall@10']:.3f} "
          f"(without exact re-rank {r['recall@10_no_rerank']:.3f})")


def print_e2e(r: dict) -> None:
    if "skipped" in r:
        print(f"\n== HTTP text query, preset {r['preset']}: SKIPPED ({r['skipped']})")
        return
    h, e = r["http"], r["encoder_only"]
    print(f"\n== HTTP text query, preset {r['preset']} ({r['params_m']:.1f}M params, random init, "
          f"{r['index_n']:,}-image flat index; setup {r['setup_s']:.1f}s)")
    print(f"  GET /api/search   p50 {h['p50_ms']:.2f} ms  p99 {h['p99_ms']:.2f} ms  {h['qps']:.1f} q/s")
    print(f"  encoder alone     p50 {e['p50_ms']:.2f} ms  p99 {e['p99_ms']:.2f} ms  {e['qps']:.1f} q/s")
    print(f"  ratio             HTTP/encoder p50 {h['p50_ms'] / e['p50_ms']:.2f}x "
          f"(+{h['p50_ms'] - e['p50_ms']:.2f} ms for HTTP, JSON and the index)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--data", default="clustered", choices=["clustered", "uniform"])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--memory-budget-mb", type=float, default=2048)
    ap.add_argument("--presets", default="tiny,b7-base")
    ap.add_argument("--preset-limit-s", type=int, default=180)
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--e2e-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.e2e_child:
        print(json.dumps(e2e_child(args.e2e_child, args.queries)))
        return
    t0 = time.perf_counter()
    results: dict = {"sizes": [], "e2e": []}
    with tempfile.TemporaryDirectory(prefix="bench-search-") as d:
        for n in [int(s) for s in args.sizes.split(",") if s]:
            r = bench_size(n, args.data, args.queries, args.memory_budget_mb, Path(d))
            results["sizes"].append(r)
            print_size(r)
            sys.stdout.flush()
    for preset in [p for p in args.presets.split(",") if p]:
        r = run_e2e(preset, min(args.queries, 100), args.preset_limit_s)
        results["e2e"].append(r)
        print_e2e(r)
        sys.stdout.flush()
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
