"""Text-filter throughput: DuckDB (openalign.corpus.filter) vs a straightforward pandas version (and Spark).

    python bench/filter_throughput.py --pairs 10000000
    python bench/filter_throughput.py --pairs 1000000 --engines duckdb,spark,pandas  # + Spark, local[2]

Generates pairs with a Zipf vocabulary (word rank r has probability ~ 1/r^s), a few hub images
and shared boilerplate captions, writes them to Parquet, then runs each implementation in its own
subprocess (so peak memory is measured per implementation) and checks both keep the same pairs
count and remove the same number per rule. Prints pairs/s for each, the ratio, and peak RSS.
Spark (``--engines ...,spark``) runs the same filter_pairs on a ``--spark-master`` session made
before the clock starts (JVM start-up is printed apart); its peak RSS sums the driver's Python
process and the JVM's process tree (executor Python workers included).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BOILERPLATE = ["click here", "logo", "image", "photo of the day", "advertisement", "thumbnail", "spacer"]


def generate(path: Path, n: int, vocab: int, zipf_s: float, seed: int, chunk: int = 1_000_000) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(vocab)], dtype=object)
    p = 1.0 / np.arange(1, vocab + 1) ** zipf_s
    p /= p.sum()
    writer = None
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        lengths = rng.integers(1, 25, m)
        ids = rng.choice(vocab, size=int(lengths.sum()), p=p)
        toks = words[ids]
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        texts = [" ".join(toks[bounds[i]:bounds[i + 1]]) for i in range(m)]
        for i in np.flatnonzero(rng.random(m) < 0.02):
            texts[i] = BOILERPLATE[rng.integers(len(BOILERPLATE))]
        img = rng.integers(0, int(n * 0.9), m)
        img[rng.random(m) < 0.001] = rng.integers(0, 5)  # hub images (icons) with many alts
        urls = [f"http://img.example.com/{k}.jpg" for k in img]
        pages = [f"http://page.example.com/{k}" for k in rng.integers(0, n // 20 + 1, m)]
        t = pa.table({"url": urls, "text": texts, "page_url": pages})
        writer = writer or pq.ParquetWriter(path, t.schema)
        writer.write_table(t)
    writer.close()


def pandas_filter(path: str, top_n: int, max_imgs: int, max_texts: int, lo: int, hi: int, min_count: int) -> dict:
    """The same rules, written the obvious pandas way (``top_n`` < 0: the minimum-count rule)."""
    import pandas as pd

    df = pd.read_parquet(path)
    rows_in = len(df)
    valid = df[df.url.notna() & (df.url != "") & df.text.notna()]
    pairs = valid.groupby(["url", "text"], sort=False, as_index=False).page_url.min()
    text_rows = valid.text.value_counts()
    toks = pd.Series(text_rows.index, index=text_rows.index).str.lower().str.findall(r"[^\W_]+")
    bigrams = toks.map(lambda t: [f"{a} {b}" for a, b in zip(t, t[1:])])
    grams = (toks + bigrams).explode().dropna()
    counts = (text_rows.reindex(grams.index).groupby(grams.values).sum())
    if top_n < 0:
        k = min_count
    else:  # the N-th most frequent gram's count; every gram tied with it is kept
        ranked = np.sort(counts.values)[::-1]
        k = np.iinfo(np.int64).max if top_n == 0 else (ranked[top_n - 1] if top_n <= len(ranked) else 1)
    vocab = set(counts.index[counts.values >= k])
    rare = set(grams.index[~grams.isin(vocab).values])
    n_images = pairs.groupby("text").url.transform("size")
    n_texts = pairs.groupby("url").text.transform("size")
    n_uni = pairs.text.map(toks.map(len))
    rules = {"text_shared": n_images > max_imgs, "image_many_texts": n_texts > max_texts,
             "rare_token": pairs.text.isin(rare), "length": (n_uni < lo) | (n_uni > hi)}
    alive = pd.Series(True, index=pairs.index)
    removed = {"invalid": rows_in - len(valid), "duplicate": len(valid) - len(pairs)}
    for name, mask in rules.items():
        removed[name] = int((alive & mask).sum())
        alive &= ~mask
    return {"kept": int(alive.sum()), "removed": removed, "rows_in": rows_in}


def filter_config(top_n: int, max_imgs: int, max_texts: int, lo: int, hi: int, min_count: int):
    from openalign.corpus.filter import TextFilterConfig

    return TextFilterConfig(max_images_per_text=max_imgs, max_texts_per_image=max_texts,
                            vocab_top_n=None if top_n < 0 else top_n, min_unigrams=lo, max_unigrams=hi,
                            vocab_min_count=min_count)


def duckdb_filter(path: str, *params: int) -> dict:
    from openalign.corpus.filter import filter_pairs

    out = Path(tempfile.mkdtemp()) / "pairs.parquet"
    passes = int(os.environ.get("BENCH_GRAM_PASSES") or 0)
    s = filter_pairs(path, out, filter_config(*params), memory_limit=os.environ.get("BENCH_MEMORY_LIMIT") or None,
                     temp_dir=os.environ.get("BENCH_TEMP_DIR") or None,
                     compress_spill=os.environ.get("BENCH_COMPRESS_SPILL") == "1",
                     **({"gram_passes": passes} if passes else {}))  # only if asked: older checkouts lack it
    return {"kept": s.kept, "removed": s.removed, "rows_in": s.rows_in, "spilled_mb": s.spilled_bytes / 2**20,
            "gram_passes": getattr(s, "gram_passes", 1)}


def child(impl: str, path: str, params: list[int]) -> None:
    if impl == "spark":
        return spark_child(path, params)
    t0 = time.perf_counter()
    res = {"pandas": pandas_filter, "duckdb": duckdb_filter}[impl](path, *params)
    res["seconds"] = time.perf_counter() - t0
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(res))


def run_child(impl: str, path: Path, params: list[int], env: dict[str, str] | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, "--data", str(path), "--params", *map(str, params)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1],
                "returncode": proc.returncode}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- Spark (apart from the DuckDB/pandas code)


def spark_child(path: str, params: list[int]) -> None:
    """Spark's run in this child: the session first (JVM start-up timed apart), then filter_pairs."""
    from openalign.corpus.filter import filter_pairs, spark_session

    t0 = time.perf_counter()
    spark = spark_session(os.environ["BENCH_SPARK_MASTER"])
    spark.sparkContext.setLogLevel("ERROR")
    startup = time.perf_counter() - t0
    out = Path(tempfile.mkdtemp()) / "pairs.parquet"
    cfg = filter_config(*params)
    t0 = time.perf_counter()
    s = filter_pairs(path, out, cfg, engine="spark", spark=spark)
    seconds = time.perf_counter() - t0
    jvm_mb = _tree_peak_rss_mb(spark.sparkContext._gateway.proc.pid)  # JVM + its Python workers
    spark.stop()
    own_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"kept": s.kept, "removed": s.removed, "rows_in": s.rows_in, "seconds": seconds,
                      "startup_s": startup, "peak_rss_mb": own_mb + jvm_mb}))


def _tree_peak_rss_mb(root: int) -> float:
    """Sum of peak RSS (VmHWM) over ``root`` and its live descendants, from /proc (Linux)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue  # a process that ended while we looked
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += [c for c, p in parent.items() if p == pid and c not in tree]
    total_kb = 0
    for pid in tree:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total_kb += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
    return total_kb / 1024


def run_spark_child(path: Path, params: list[int], master: str, driver_memory: str) -> dict:
    # local mode runs the executors inside the driver JVM: its heap is set before the JVM starts
    env = {**os.environ, "BENCH_SPARK_MASTER": master,
           "PYSPARK_SUBMIT_ARGS": f"--driver-memory {driver_memory} pyspark-shell",
           "PYSPARK_PYTHON": sys.executable}
    return run_child("spark", path, params, env=env)


def report_spark(results: dict[str, dict], master: str) -> bool:
    """Spark's start-up, the DuckDB/Spark ratio and whether Spark removed what DuckDB removed."""
    d, s = results.get("duckdb", {}), results.get("spark", {})
    if "seconds" not in s:
        return "spark" not in results
    print(f"spark   {master}: JVM start-up {s['startup_s']:.1f} s, not in the time above")
    if "seconds" not in d:
        return True
    print(f"ratio duckdb/spark: {s['seconds'] / d['seconds']:.1f}x")
    same = d["kept"] == s["kept"] and d["removed"] == s["removed"]
    print(f"spark same result as duckdb: {same}")
    if not same:
        print(f"spark removed: {s['removed']}")
    return same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=10_000_000)
    ap.add_argument("--vocab", type=int, default=1_000_000, help="distinct words in the Zipf vocabulary")
    ap.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent s")
    ap.add_argument("--top-n", type=int, default=None,
                    help="rare = outside the top N grams (default: the filter's default rule, seen < --min-count times)")
    ap.add_argument("--min-count", type=int, default=3, help="vocab_min_count when --top-n is not given")
    ap.add_argument("--memory-limit", default=None, help="DuckDB memory_limit, e.g. 4GB (it spills past it)")
    ap.add_argument("--temp-dir", default=None, help="DuckDB spill folder (default: beside its output)")
    ap.add_argument("--compress-spill", action="store_true", help="intermediate tables in a compressed DuckDB file")
    ap.add_argument("--gram-passes", type=int, default=None, help="count the grams in N passes (default: the filter's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None, help="reuse a generated Parquet file")
    ap.add_argument("--skip", choices=["pandas", "duckdb"], default=None)
    ap.add_argument("--engines", default="duckdb,pandas", help="comma list of duckdb, spark, pandas")
    ap.add_argument("--spark-master", default="local[2]", help="Spark master for the spark engine")
    ap.add_argument("--spark-driver-memory", default="4g", help="driver JVM heap (in local mode: all of Spark's)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--params", nargs=6, type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.data, a.params)
    path = Path(a.data) if a.data else Path(tempfile.mkdtemp()) / f"pairs_{a.pairs}.parquet"
    if not path.exists():
        t0 = time.perf_counter()
        generate(path, a.pairs, a.vocab, a.zipf, a.seed)
        print(f"generated {a.pairs:,} pairs in {time.perf_counter() - t0:.0f}s -> {path}")
    params = [-1 if a.top_n is None else a.top_n, 10, 1000, 3, 20, a.min_count]
    rule = f"min_count {a.min_count}" if a.top_n is None else f"top_n {a.top_n:,}"
    os.environ["BENCH_MEMORY_LIMIT"], os.environ["BENCH_TEMP_DIR"] = a.memory_limit or "", a.temp_dir or ""
    os.environ["BENCH_COMPRESS_SPILL"] = "1" if a.compress_spill else ""
    os.environ["BENCH_GRAM_PASSES"] = str(a.gram_passes or "")
    engines = [e.strip() for e in a.engines.split(",") if e.strip() and e.strip() != a.skip]
    if unknown := set(engines) - {"duckdb", "spark", "pandas"}:
        ap.error(f"--engines: unknown {', '.join(sorted(unknown))}; use duckdb, spark, pandas")
    results = {impl: run_spark_child(path, params, a.spark_master, a.spark_driver_memory) if impl == "spark"
               else run_child(impl, path, params) for impl in engines}
    for impl, r in results.items():
        if "error" in r:
            print(f"{impl:<7} FAILED: {r['error']}")
        else:
            rare = r["removed"]["rare_token"]
            print(f"{impl:<7} {a.pairs / r['seconds']:>12,.0f} pairs/s  {r['seconds']:>8.1f} s  "
                  f"peak RSS {r['peak_rss_mb']:>8,.0f} MiB  kept {r['kept']:,}  "
                  f"rare_token removed {rare:,} ({rare / max(r['rows_in'], 1):.1%} of rows, {rule})"
                  + (f"  spilled {r['spilled_mb']:,.0f} MiB" if r.get("spilled_mb") else "")
                  + (f"  grams in {r['gram_passes']} passes" if r.get("gram_passes", 1) > 1 else ""))
    spark_ok = report_spark(results, a.spark_master)
    d, p = results.get("duckdb", {}), results.get("pandas", {})
    if "seconds" in d and "seconds" in p:
        print(f"ratio duckdb/pandas: {p['seconds'] / d['seconds']:.1f}x")
        same = d["kept"] == p["kept"] and d["removed"] == p["removed"]
        print(f"same result: {same} (removed per rule: {d['removed']})")
        if not same:
            print(f"pandas removed: {p['removed']}")
            sys.exit(1)
    if not spark_ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
