"""Text-query latency of the b7-base text tower (BERT-base), fp32 vs the fast paths of ``ModelBundle``.

One query at a time, as a search server sees them: ``bundle.encode_texts([q])`` per query, every
variant interleaved query by query in one process (1 torch thread), p50/p99 over all queries and
rounds. Variants are ``load_bundle`` options: ``text_precision`` fp32 / bf16 (a bf16 copy of the
weights) / int8 (dynamic quantisation of BERT's linears), the old ``bf16=True`` (autocast), and
``compile_text`` (torch.compile with frozen weights, queries padded to 16/32/64 tokens).

Agreement with fp32: the smallest cosine between a variant's and fp32's embedding of the same
query, and top-1 agreement of text->text retrieval over a gallery of fp32 caption embeddings
(x% agreement bounds the R@1 change on any labels by 100 - x points). Random weights (nothing
downloads weights); the WordPiece vocabulary is small, the embedding table has BERT's 30,522 rows.

With ``--http`` the chosen fast path and fp32 are also timed through the API
(``GET /api/search?q=...`` on ``create_app``, in-process httpx client, a 64-image index).

    .venv/bin/python bench/query_latency.py [--preset b7-base] [--rounds 3] [--http]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

# name -> ModelBundle options
VARIANTS: dict[str, dict] = {
    "fp32": {"text_precision": "fp32"},
    "bf16 autocast (bf16=True)": {"autocast_bf16": True},
    "bf16 weights": {"text_precision": "bf16"},
    "int8 dynamic": {"text_precision": "int8"},
    "fp32 + compile": {"text_precision": "fp32", "compile_text": True},
    "bf16 weights + compile": {"text_precision": "bf16", "compile_text": True},
}


def make_queries(n: int, seed: int) -> list[str]:
    sys.path.insert(0, str(ROOT / "tests"))
    from eval_helpers import WORDS

    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 11)))) for _ in range(n)]


def make_bundles(preset: str, names: list[str]):
    from openalign.models.bundle import ModelBundle
    from openalign.models.dual_encoder import DualEncoder
    from openalign.models.preprocess import ImageTransform
    from openalign.models.tokenizer import train_wordpiece

    with tempfile.TemporaryDirectory() as tmp:
        tok = train_wordpiece(make_queries(400, 7), Path(tmp) / "tok", vocab_size=200, min_frequency=1)
    model = DualEncoder.from_preset(preset, seed=0).eval()  # vocab: the preset's 30,522
    transform = ImageTransform(size=model.preset.image_size, resize=model.preset.resize_size)
    return {n: ModelBundle(model=model, tokenizer=tok, transform=transform, name=f"{preset}-random",
                           **VARIANTS[n]) for n in names}


def pct(ts: list[float], q: float) -> float:
    return 1e3 * float(np.percentile(ts, q))


def time_queries(fns: dict, queries: list[str], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(rounds):
        for q in queries:
            for n, fn in fns.items():
                t0 = time.perf_counter()
                fn(q)
                times[n].append(time.perf_counter() - t0)
    return times


def http_latency(bundles: dict, names: list[str], queries: list[str], rounds: int) -> dict[str, list[float]]:
    """Through the API: one index (random 640-d vectors), one app per variant, in-process httpx."""
    import httpx
    from fastapi.testclient import TestClient
    from PIL import Image

    from openalign.search.build import build_index
    from openalign.search.query import Searcher, SearchIndex
    from openalign.search.server import create_app

    class RandomImages:  # a stand-in image encoder for building the index (only its vectors matter)
        def __init__(self, dim: int, transform) -> None:
            self.dim, self.transform, self.name, self.model = dim, transform, "random-images", torch.nn.Linear(1, 1)

        def encode_pixels(self, px: torch.Tensor) -> torch.Tensor:
            g = torch.Generator().manual_seed(int(px.sum().item() * 1000) % (2**31))
            return torch.nn.functional.normalize(torch.randn(len(px), self.dim, generator=g), dim=-1)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        for i in range(64):
            Image.new("RGB", (32, 32), (i * 4, 255 - i * 4, (i * 37) % 256)).save(tmp / "images" / f"{i:03d}.png")
        first = bundles[names[0]]
        build_index(tmp / "index", None, images=str(tmp / "images"), num_workers=0, index_captions=False,
                    encoder=RandomImages(first.dim, first.transform))
        clients = {n: TestClient(create_app(Searcher(SearchIndex(tmp / "index"), encoder=bundles[n])))
                   for n in names}

        def get(client):
            def fn(q: str) -> None:
                r = client.get("/api/search", params={"q": q, "k": 10})
                if r.status_code != 200:
                    raise httpx.HTTPStatusError(r.text[:300], request=r.request, response=r)
            return fn

        fns = {n: get(c) for n, c in clients.items()}
        for fn in fns.values():
            fn(queries[0])
        return time_queries(fns, queries, rounds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="b7-base")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gallery", type=int, default=500, help="fp32 caption embeddings for the top-1 agreement")
    ap.add_argument("--variants", default="", help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    ap.add_argument("--http", action="store_true", help="also time GET /api/search (fp32 vs --http-variant)")
    ap.add_argument("--http-variant", default="bf16 weights + compile")
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    t0 = time.perf_counter()
    bundles = make_bundles(args.preset, names)
    queries = make_queries(args.queries, 0)
    for n, b in bundles.items():  # build copies, compile every length bucket: not on the clock
        t = time.perf_counter()
        b.warm_up()
        print(f"warm-up {n}: {time.perf_counter() - t:.1f} s", flush=True)
    ref = bundles[names[0]]
    gallery = ref.encode_texts(make_queries(args.gallery, 1), precision="fp32")
    ref_q = ref.encode_texts(queries, batch_size=1, precision="fp32")
    times = time_queries({n: (lambda q, b=b: b.encode_texts([q])) for n, b in bundles.items()}, queries,
                         args.rounds)
    print(f"\n{args.preset}: {len(queries)} queries x {args.rounds} rounds, one query per call, "
          f"torch threads {torch.get_num_threads()} (setup {time.perf_counter() - t0:.0f} s)")
    sims = ref_q @ gallery.T
    top2 = sims.topk(2, dim=1).values
    print(f"fp32 query->gallery cosines: mean {float(sims.mean()):.4f}, median top-1/top-2 margin "
          f"{float((top2[:, 0] - top2[:, 1]).median()):.2e} (random weights: texts sit close together, "
          "so top-1 flips at tiny perturbations)")
    print("\n| text tower | p50 ms | p99 ms | vs fp32 p50 | min cosine vs fp32 | top-1 agreement |")
    print("|---|---:|---:|---:|---:|---:|")
    base = pct(times[names[0]], 50)
    for n, b in bundles.items():
        emb = torch.cat([b.encode_texts([q]) for q in queries])
        cos = float((emb * ref_q).sum(-1).min())
        agree = 100.0 * float(((emb @ gallery.T).argmax(1) == (ref_q @ gallery.T).argmax(1)).float().mean())
        print(f"| {n} | {pct(times[n], 50):.1f} | {pct(times[n], 99):.1f} | {base / pct(times[n], 50):.2f}x | "
              f"{cos:.5f} | {agree:.1f}% |")
    if args.http:
        http_names = [names[0], args.http_variant]
        ht = http_latency(bundles, http_names, queries, args.rounds)
        print("\n| GET /api/search (k=10) | p50 ms | p99 ms |")
        print("|---|---:|---:|")
        for n in http_names:
            print(f"| {n} | {pct(ht[n], 50):.1f} | {pct(ht[n], 99):.1f} |")


if __name__ == "__main__":
    main()
