"""Text-filter throughput: DuckDB (openalign.corpus.filter) vs a straightforward pandas version.

    python bench/filter_throughput.py --pairs 10000000

Generates pairs with a Zipf vocabulary (word rank r has probability ~ 1/r^s), a few hub images
and shared boilerplate captions, writes them to Parquet, then runs each implementation in its own
subprocess (so peak memory is measured per implementation) and checks both keep the same pairs
count and remove the same number per rule. Prints pairs/s for each, the ratio, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import re
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


def pandas_filter(path: str, top_n: int, max_imgs: int, max_texts: int, lo: int, hi: int) -> dict:
    """The same rules, written the obvious pandas way."""
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
    counts = counts.rename_axis("g").reset_index(name="cnt").sort_values(["cnt", "g"], ascending=[False, True])
    vocab = set(counts.g.iloc[:top_n])
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


def duckdb_filter(path: str, top_n: int, max_imgs: int, max_texts: int, lo: int, hi: int) -> dict:
    from openalign.corpus.filter import TextFilterConfig, filter_pairs

    out = Path(tempfile.mkdtemp()) / "pairs.parquet"
    s = filter_pairs(path, out, TextFilterConfig(max_imgs, max_texts, top_n, lo, hi))
    return {"kept": s.kept, "removed": s.removed, "rows_in": s.rows_in}


def child(impl: str, path: str, params: list[int]) -> None:
    t0 = time.perf_counter()
    res = {"pandas": pandas_filter, "duckdb": duckdb_filter}[impl](path, *params)
    res["seconds"] = time.perf_counter() - t0
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(res))


def run_child(impl: str, path: Path, params: list[int]) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, "--data", str(path), "--params", *map(str, params)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1],
                "returncode": proc.returncode}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=10_000_000)
    ap.add_argument("--vocab", type=int, default=1_000_000, help="distinct words in the Zipf vocabulary")
    ap.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent s")
    ap.add_argument("--top-n", type=int, default=None, help="vocab_top_n (default: pairs // 2, so the rule bites)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None, help="reuse a generated Parquet file")
    ap.add_argument("--skip", choices=["pandas", "duckdb"], default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--params", nargs=5, type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.data, a.params)
    path = Path(a.data) if a.data else Path(tempfile.mkdtemp()) / f"pairs_{a.pairs}.parquet"
    if not path.exists():
        t0 = time.perf_counter()
        generate(path, a.pairs, a.vocab, a.zipf, a.seed)
        print(f"generated {a.pairs:,} pairs in {time.perf_counter() - t0:.0f}s -> {path}")
    params = [a.top_n or max(a.pairs // 2, 1), 10, 1000, 3, 20]
    results = {impl: run_child(impl, path, params) for impl in ("duckdb", "pandas") if impl != a.skip}
    for impl, r in results.items():
        if "error" in r:
            print(f"{impl:<7} FAILED: {r['error']}")
        else:
            rare = r["removed"]["rare_token"]
            print(f"{impl:<7} {a.pairs / r['seconds']:>12,.0f} pairs/s  {r['seconds']:>8.1f} s  "
                  f"peak RSS {r['peak_rss_mb']:>8,.0f} MiB  kept {r['kept']:,}  "
                  f"rare_token removed {rare:,} ({rare / max(r['rows_in'], 1):.1%} of rows, top_n {params[0]:,})")
    d, p = results.get("duckdb", {}), results.get("pandas", {})
    if "seconds" in d and "seconds" in p:
        print(f"ratio duckdb/pandas: {p['seconds'] / d['seconds']:.1f}x")
        same = d["kept"] == p["kept"] and d["removed"] == p["removed"]
        print(f"same result: {same} (removed per rule: {d['removed']})")
        if not same:
            print(f"pandas removed: {p['removed']}")
            sys.exit(1)


if __name__ == "__main__":
    main()
