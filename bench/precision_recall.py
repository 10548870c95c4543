"""Held-out R@K of a *trained* model in each reduced precision of ``ModelBundle``, against fp32.

The speed benches (``embed_throughput.py``, ``query_latency.py``) measure agreement on random
weights, where every embedding sits close to every other and top-1 flips at tiny perturbations.
The issue's bar is a held-out R@1 within 0.5 points of fp32, which needs a model that has learned
something: this script loads trained model directories (``make demo`` writes one to
``demo-out/run/model``; any ``openalign train`` output works) and a Karpathy-JSON held-out split,
embeds the images once per image precision and the captions once per text precision (the same
``encode_pixels`` / ``encode_texts`` paths the server and ``openalign embed`` use), and prints
I2T / T2I R@1/5/10 for every (image, text) precision pair, the change in points against fp32,
the smallest cosine to the fp32 embedding, and the share of queries whose top-1 is unchanged.

    .venv/bin/python bench/precision_recall.py [--model demo-out/run/model ...] \
        [--karpathy demo-out/data/heldout/karpathy.json --images demo-out/data/heldout/images]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo-out"

IMAGE_PRECISIONS = ("fp32", "bf16")
TEXT_PRECISIONS = ("fp32", "bf16", "int8")


def embed_split(model_dir: str, karpathy: str, images: str) -> dict:
    from openalign.evals.retrieval import _drop_failed
    from openalign.media.karpathy import read_karpathy
    from openalign.models.bundle import load_bundle
    from openalign.models.embed import embed_image_files

    bundle = load_bundle(model_dir, image_precision="fp32", text_precision="fp32")
    data = read_karpathy(karpathy, images)
    img: dict[str, torch.Tensor] = {}
    for prec in IMAGE_PRECISIONS:
        bundle.image_precision = prec  # encode_pixels reads it per call
        res = embed_image_files(bundle, data.image_paths, batch_size=64, progress=False)
        img[prec] = res.embeddings[res.ok]
        ok = res.ok.tolist()
    data = _drop_failed(data, ok)
    txt = {prec: bundle.encode_texts(data.texts, precision=prec) for prec in TEXT_PRECISIONS}
    return {"images": img, "texts": txt, "text_to_image": data.text_to_image, "name": Path(model_dir).as_posix()}


def top1_agreement(q: torch.Tensor, q_ref: torch.Tensor, gallery: torch.Tensor, gallery_ref: torch.Tensor) -> float:
    """% of queries whose top-1 gallery item is the same as with fp32 queries and gallery."""
    return float(((q @ gallery.t()).argmax(1) == (q_ref @ gallery_ref.t()).argmax(1)).float().mean() * 100)


def compare(emb: dict) -> list[dict]:
    from openalign.evals.metrics import retrieval_metrics

    t2i = emb["text_to_image"]
    ref_img, ref_txt = emb["images"]["fp32"], emb["texts"]["fp32"]
    ref = retrieval_metrics(ref_img, ref_txt, t2i)
    rows = []
    for ip in IMAGE_PRECISIONS:
        for tp in TEXT_PRECISIONS:
            im, tx = emb["images"][ip], emb["texts"][tp]
            m = retrieval_metrics(im, tx, t2i)
            rows.append({
                "image": ip, "text": tp, "metrics": m,
                "delta": {k: m[k] - ref[k] for k in m},
                "min_cos_image": float((im * ref_img).sum(1).min()),
                "min_cos_text": float((tx * ref_txt).sum(1).min()),
                "top1_t2i": top1_agreement(tx, ref_txt, im, ref_img),
                "top1_i2t": top1_agreement(im, ref_img, tx, ref_txt),
            })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", help="trained model directory (repeatable)")
    ap.add_argument("--karpathy", default=str(DEMO / "data" / "heldout" / "karpathy.json"))
    ap.add_argument("--images", default=str(DEMO / "data" / "heldout" / "images"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="", help="also write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = args.model or [str(DEMO / "run" / "model")]
    for m in models:
        if not Path(m, "config.json").is_file():
            sys.exit(f"error: {m}: no config.json; run `make demo` first or pass --model DIR of a trained model")
    from openalign.models.bundle import cpu_has_native_bf16

    print(f"native bf16 on this CPU: {cpu_has_native_bf16()}; held-out split: {args.karpathy}")
    out = {}
    for m in models:
        emb = embed_split(m, args.karpathy, args.images)
        rows = compare(emb)
        out[m] = rows
        n_img, n_txt = len(emb["images"]["fp32"]), len(emb["texts"]["fp32"])
        print(f"\n{m}: {n_img} images, {n_txt} captions")
        print("| image | text | I2T R@1 | T2I R@1 | T2I R@10 | mean recall | ΔI2T R@1 | ΔT2I R@1 | Δmean | "
              "min cos img | min cos txt | top-1 same T2I | top-1 same I2T |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            mm, d = r["metrics"], r["delta"]
            print(f"| {r['image']} | {r['text']} | {mm['image_to_text_R@1']:.2f} | {mm['text_to_image_R@1']:.2f} | "
                  f"{mm['text_to_image_R@10']:.2f} | {mm['mean_recall']:.2f} | {d['image_to_text_R@1']:+.2f} | "
                  f"{d['text_to_image_R@1']:+.2f} | {d['mean_recall']:+.2f} | {r['min_cos_image']:.5f} | "
                  f"{r['min_cos_text']:.5f} | {r['top1_t2i']:.1f}% | {r['top1_i2t']:.1f}% |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
