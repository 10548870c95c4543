"""Search benchmark: approximate index vs exact brute force, and text-query latency through the HTTP API.

    .venv/bin/python bench/search.py                 # 100k and 1M vectors, tiny + b7-base presets
    .venv/bin/python bench/search.py --sizes 100000 --presets tiny
    .venv/bin/python bench/search.py --streaming --sizes 1000000 [--modes memory,streamed,on-disk]

Part 1, for each size: L2-normalised 640-d vectors (a Gaussian mixture by default: real embeddings
cluster; ``--data uniform`` for structureless noise), the index type ``auto`` picks under the
memory budget (HNSW at 100k, IVF-PQ at 1M with the default 2048 MB), built twice in the same run:
with today's fixed knobs (``target_recall=0``) and with knobs tuned to ``--target-recall`` on
held-out vectors. For each: recall@10 vs exact, single-query latency p50/p99 and queries/s through
``SearchIndex.search_vectors`` (re-rank included), beside exact brute force (FAISS IndexFlatIP).
Part 2, for each preset: a random-init model saved to a temp dir, an index of random vectors, and
``GET /api/search?q=...`` through uvicorn on 127.0.0.1 (text encoder included), measured with the
encoder alone beside it. Each preset runs in a subprocess with a time limit; one that is too slow
or too big is skipped with the reason printed.

``--streaming``: ``index build --embeddings`` at scale. The collection is generated straight into an
embeddings folder (parts of ``--part-size`` float16 vectors, never all in memory), then indexed
in one child process per mode, same data and parameters: ``memory`` (the baseline: every part read
into one float32 array, then built), ``streamed`` (parts streamed, IVF lists in memory) and
``on-disk`` (lists merged into ``index.ivfdata``, memory-mapped when searched). Each prints build
wall time, peak RSS (VmHWM) and peak anonymous RSS (sampled every 50 ms: the file pages of
memory-mapped reads are reclaimable), the index's disk use, recall@10 against exact neighbours
(computed by a blockwise pass over the parts) and single-query p50/p99 through ``SearchIndex``
(the queries run twice: the table shows the second pass, pages cached; the first is printed
below it), and the ratios to the baseline.
"""

from __future__ import annotations

import argparse
import json
import shutil
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


def bench_size(n: int, kind: str, nq: int, budget_mb: float, target: float, workdir: Path) -> dict:
    """One collection, two indexes in the same run: today's fixed knobs (``target_recall=0``) and tuned ones."""
    import faiss

    from openalign.search.index import IndexContents, IndexParams, knn_recall, normalise_metadata, write_index
    from openalign.search.query import SearchIndex

    t0 = time.perf_counter()
    x = make_vectors(n, kind)
    rng = np.random.default_rng(1)
    q = x[rng.choice(n, nq, replace=False)] + 0.3 * rng.standard_normal((nq, DIM), dtype=np.float32) / np.sqrt(DIM)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, e_ids = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)  # exact, no copy of x
    exact = faiss.IndexFlatIP(DIM)
    exact.add(x)
    e_ms = latencies(lambda v: exact.search(v, 10), q)
    exact_s = time.perf_counter() - t0
    del exact
    meta = normalise_metadata(pd_rows(n))
    res = {"n": n, "data": kind, "gen_s": gen_s, "exact_s": exact_s, "exact": summary(e_ms),
           "exact_mb": n * DIM * 4 / 2**20, "target_recall": target, "runs": {}}
    for name, tr in (("before", 0.0), ("tuned", target)):
        out = workdir / f"idx-{n}-{name}"
        t0 = time.perf_counter()
        m = write_index(out, IndexContents(vectors=x, metadata=meta, params=IndexParams(memory_budget_mb=budget_mb, target_recall=tr),
                                           model={"name": "random", "dir": None, "dim": DIM}))
        build_s = time.perf_counter() - t0
        approx = SearchIndex(out)
        a_ms = latencies(lambda v: approx.search_vectors(v, 10), q)
        _, a_ids = approx.search_vectors(q, 10)
        _, raw_ids = approx.search_vectors(q, 10, rerank=1)
        ip = m["index_params"]
        res["runs"][name] = {
            "index_type": m["index_type"], "build_s": build_s, "approx": summary(a_ms),
            "recall@10": knn_recall(a_ids, e_ids), "recall@10_no_rerank": knn_recall(raw_ids, e_ids),
            "knobs": {"nprobe": ip["ivf_nprobe"], "nlist": ip["ivf_nlist"], "ef_search": ip["hnsw_ef_search"],
                      "rerank": ip["rerank"]},
            "tuning": m.get("tuning"), "index_mb": (out / "index.faiss").stat().st_size / 2**20}
        del approx
        shutil.rmtree(out, ignore_errors=True)
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
    e = r["exact"]
    print(f"\n== {r['n']:,} x {DIM}-d ({r['data']}): today's knobs vs tuned to recall@10 >= {r['target_recall']} "
          f"(exact flat would be {r['exact_mb']:.0f} MB)")
    print(f"  {'index':22s} {'knobs':30s} {'recall@10':>9s} {'no rerank':>9s} {'p50 ms':>7s} {'p99 ms':>7s} "
          f"{'q/s':>7s} {'build s':>8s} {'MB':>6s}")
    for name, a in r["runs"].items():
        k = a["knobs"]
        knobs = (f"efSearch {k['ef_search']}" if a["index_type"] == "hnsw" else
                 f"nprobe {k['nprobe']}/{k['nlist']}, rerank {k['rerank']}" if a["index_type"] == "ivfpq" else "-")
        s = a["approx"]
        print(f"  {name + ' ' + a['index_type']:22s} {knobs:30s} {a['recall@10']:9.3f} {a['recall@10_no_rerank']:9.3f} "
              f"{s['p50_ms']:7.2f} {s['p99_ms']:7.2f} {s['qps']:7.0f} {a['build_s']:8.1f} {a['index_mb']:6.0f}")
        if a["tuning"]:
            t = a["tuning"]
            print(f"  {'':22s} tuning: recall {t['recall']:.3f} on {t['recall_queries']} held-out vectors, "
                  f"{len(t['candidates'])} candidate settings timed, {t['seconds']:.0f}s")
    print(f"  {'exact flat':22s} {'':30s} {1.0:9.3f} {'':9s} {e['p50_ms']:7.2f} {e['p99_ms']:7.2f} {e['qps']:7.0f}")


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


# ---------------------------------------------------------------- --streaming


def write_collection(emb: Path, n: int, part_size: int, seed: int = 0, n_clusters: int = 1000) -> None:
    """The clustered collection of :func:`make_vectors`, generated a part at a time into an embeddings folder."""
    from openalign.search.parts import write_vector_parts

    centres = np.random.default_rng(seed).standard_normal((n_clusters, DIM), dtype=np.float32)

    def parts():
        for k, lo in enumerate(range(0, n, part_size)):
            rng = np.random.default_rng([seed, k])
            m = min(part_size, n - lo)
            x = 0.8 * rng.standard_normal((m, DIM), dtype=np.float32) + centres[rng.integers(0, n_clusters, m)]
            yield x / np.linalg.norm(x, axis=1, keepdims=True), None

    write_vector_parts(emb, {"name": "random", "dir": None, "dim": DIM, "fingerprint": "bench"}, n, part_size, parts())


def part_blocks(emb: Path):
    """(first row, float32 block) over the parts in row order."""
    start = 0
    for f in sorted((emb / "img_emb").glob("part-*.npy")):
        x = np.load(f).astype(np.float32)
        yield start, x
        start += len(x)


def stream_queries(emb: Path, nq: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``nq`` collection vectors plus small noise, and their exact top-10 by a blockwise pass."""
    import faiss

    rng = np.random.default_rng(1)
    ids = np.sort(rng.choice(n, nq, replace=False))
    q = np.zeros((nq, DIM), np.float32)
    for start, x in part_blocks(emb):
        sel = (ids >= start) & (ids < start + len(x))
        q[sel] = x[ids[sel] - start]
    q += 0.3 * rng.standard_normal((nq, DIM), dtype=np.float32) / np.sqrt(DIM)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    heap = faiss.ResultHeap(nq, 10, keep_max=True)
    for start, x in part_blocks(emb):
        d, i = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(d, i + start)
    heap.finalize()
    return q, heap.I


class PeakAnon:
    """Samples this process's anonymous RSS (heap, not file-backed pages) every 50 ms."""

    def __init__(self) -> None:
        import threading

        self.peak, self.stop = 0, False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop:
            self.peak = max(self.peak, _status_kb("RssAnon"))
            time.sleep(0.05)

    def done(self) -> int:
        self.stop = True
        self.thread.join()
        return self.peak


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def stream_child(mode: str, emb: Path, out: Path, queries: Path, budget_mb: float, target: float) -> dict:
    """One build in a fresh process (so peak RSS is this build's), then its recall and latency."""
    from openalign.search.index import IndexParams, knn_recall, write_index
    from openalign.search.parts import build_index_from_parts, contents_from_parts, read_parts
    from openalign.search.query import SearchIndex

    p = IndexParams(memory_budget_mb=budget_mb, target_recall=target, on_disk=mode == "on-disk")
    anon = PeakAnon()
    t0 = time.perf_counter()
    if mode == "memory":
        m = write_index(out, contents_from_parts(read_parts(emb), p))
    else:
        m = build_index_from_parts(emb, out, p)
    build_s = time.perf_counter() - t0
    peak_anon_kb, peak_kb = anon.done(), _status_kb("VmHWM")
    z = np.load(queries)
    q, e_ids = z["q"], z["ids"]
    idx = SearchIndex(out)
    cold = latencies(lambda v: idx.search_vectors(v, 10), q)  # first touch of lists and re-rank rows
    ms = latencies(lambda v: idx.search_vectors(v, 10), q)  # the same queries again: pages cached
    _, a_ids = idx.search_vectors(q, 10)
    ip = m["index_params"]
    files = {f.name: f.stat().st_size for f in out.iterdir()}
    return {"mode": mode, "n": m["count"], "build_s": build_s, "peak_rss_mb": peak_kb / 1024,
            "peak_anon_mb": peak_anon_kb / 1024, "disk_mb": sum(files.values()) / 2**20,
            "lists_mb": (files.get("index.faiss", 0) + files.get("index.ivfdata", 0)) / 2**20,
            "recall@10": knn_recall(a_ids, e_ids), **summary(ms), "cold": summary(cold),
            "knobs": f"nprobe {ip['ivf_nprobe']}/{ip['ivf_nlist']}, rerank {ip['rerank']}, pq_m {ip['pq_m']}",
            "tuning_s": (m.get("tuning") or {}).get("seconds"), "tuned_recall": (m.get("tuning") or {}).get("recall")}


def bench_streaming(n: int, modes: list[str], args, workdir: Path) -> list[dict]:
    emb = workdir / f"emb-{n}"
    t0 = time.perf_counter()
    write_collection(emb, n, args.part_size)
    q, ids = stream_queries(emb, args.queries, n)
    np.savez(workdir / "queries.npz", q=q, ids=ids)
    print(f"\n== streaming build, {n:,} x {DIM}-d clustered, {args.part_size:,}-vector float16 parts "
          f"({time.perf_counter() - t0:.0f}s to write parts and exact neighbours); budget {args.memory_budget_mb} MB, "
          f"target recall@10 {args.target_recall}", flush=True)
    rows = []
    for mode in modes:
        out = workdir / f"idx-{n}-{mode}"
        cmd = [sys.executable, __file__, "--stream-child", mode, "--emb", str(emb), "--out", str(out),
               "--memory-budget-mb", str(args.memory_budget_mb), "--target-recall", str(args.target_recall),
               "--queries-file", str(workdir / "queries.npz")]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            tail = (p.stderr or "").strip().splitlines()[-1:] or ["?"]
            print(f"  {mode}: FAILED (exit {p.returncode}: {tail[0]})", flush=True)
            continue
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
        shutil.rmtree(out, ignore_errors=True)
        print_stream_row(rows[-1], rows[0], first=len(rows) == 1)
    shutil.rmtree(emb, ignore_errors=True)
    return rows


def print_stream_row(r: dict, base: dict, first: bool) -> None:
    if first:
        print(f"  {'mode':9s} {'build s':>8s} {'peak RSS MB':>11s} {'peak anon MB':>12s} {'disk MB':>8s} "
              f"{'recall@10':>9s} {'p50 ms':>7s} {'p99 ms':>7s}  knobs")
    print(f"  {r['mode']:9s} {r['build_s']:8.1f} {r['peak_rss_mb']:11.0f} {r['peak_anon_mb']:12.0f} {r['disk_mb']:8.0f} "
          f"{r['recall@10']:9.3f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f}  {r['knobs']}", flush=True)
    print(f"  {'':9s} first pass over the queries (cold pages): p50 {r['cold']['p50_ms']:.2f} ms, "
          f"p99 {r['cold']['p99_ms']:.2f} ms", flush=True)
    if not first:
        print(f"  {'':9s} vs {base['mode']}: build {r['build_s'] / base['build_s']:.2f}x, peak anon RSS "
              f"{r['peak_anon_mb'] / base['peak_anon_mb']:.2f}x, p50 {r['p50_ms'] / base['p50_ms']:.2f}x", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--data", default="clustered", choices=["clustered", "uniform"])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--memory-budget-mb", type=float, default=2048)
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--presets", default="tiny,b7-base")
    ap.add_argument("--preset-limit-s", type=int, default=180)
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--streaming", action="store_true", help="index build --embeddings: in memory vs streamed vs on disk")
    ap.add_argument("--modes", default="memory,streamed,on-disk")
    ap.add_argument("--part-size", type=int, default=100_000)
    ap.add_argument("--e2e-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--stream-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--emb", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--queries-file", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.e2e_child:
        print(json.dumps(e2e_child(args.e2e_child, args.queries)))
        return
    if args.stream_child:
        print(json.dumps(stream_child(args.stream_child, Path(args.emb), Path(args.out), Path(args.queries_file),
                                      args.memory_budget_mb, args.target_recall)))
        return
    t0 = time.perf_counter()
    results: dict = {"sizes": [], "e2e": [], "streaming": []}
    if args.streaming:
        with tempfile.TemporaryDirectory(prefix="bench-stream-") as d:
            for n in [int(s) for s in args.sizes.split(",") if s]:
                results["streaming"] += bench_streaming(n, args.modes.split(","), args, Path(d))
        print(f"\ntotal {time.perf_counter() - t0:.0f}s")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")
        return
    with tempfile.TemporaryDirectory(prefix="bench-search-") as d:
        for n in [int(s) for s in args.sizes.split(",") if s]:
            r = bench_size(n, args.data, args.queries, args.memory_budget_mb, args.target_recall, Path(d))
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
