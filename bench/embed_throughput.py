"""Images/s to embed a folder of JPEGs: OpenALIGN's batched pipeline vs a plain transformers loop.

Ours: ``load_bundle`` + ``embed_image_files`` (DataLoader decode workers, PIL+numpy transform,
batched forward), once per lever added on top of the previous one (the lever table). Baseline:
the straightforward loop -- open each batch of files, run ``AlignProcessor`` on them,
``AlignModel.get_image_features``, normalise -- with the same batch size, model and files.
Baseline and every variant run interleaved, round by round, in one process (1 torch thread), so
load from other processes hits them alike; the figures are the median round.

Agreement, for every variant against the fp32 baseline: the largest |difference| of the
embeddings, and top-1 agreement of text->image retrieval (the same fp32 text queries ranked over
the variant's and over fp32's image embeddings; the number of distinct top-1 images is printed,
so a collapsed random model cannot pass trivially) and of image->image nearest neighbours
(leave-one-out, the variant's query against the fp32 gallery). If x% of queries keep their top-1 image, R@1 on
any labels moves by at most 100 - x points, so >= 99.5% agreement bounds the R@1 change by 0.5.
The models have random weights (nothing downloads weights), whose similarities are closer
together than a trained model's, which makes the agreement test harsher, not easier.

    .venv/bin/python bench/embed_throughput.py [--presets tiny,b3-mini] [--image-size 289] [--images 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

# name -> load_bundle options and decode workers; each adds one lever to the one before
VARIANTS: dict[str, dict] = {
    "ours fp32, no workers": {"channels_last": False, "image_precision": "fp32", "workers": 0},
    "+ decode workers": {"channels_last": False, "image_precision": "fp32", "workers": 1},
    "+ channels-last": {"channels_last": True, "image_precision": "fp32", "workers": 1},
    "+ bf16 1x1 convs only": {"channels_last": True, "image_precision": "fp32", "workers": 1, "bf16_pointwise": True},
    "+ bf16 image tower": {"channels_last": True, "image_precision": "bf16", "workers": 1},
}
DEFAULT_IMAGES = {"tiny": 256, "b3-mini": 48, "b7-base": 8}


def make_jpegs(folder: Path, n: int, width: int, height: int) -> list[Path]:
    """Photo-like JPEGs (smooth gradients + noise), so decoding costs what real photos cost."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for i in range(n):
        base = np.stack([(xx * rng.uniform(0.2, 1) + yy * rng.uniform(0.2, 1) + rng.uniform(0, 255)) % 256
                         for _ in range(3)], -1)
        arr = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        paths.append(folder / f"{i:05d}.jpg")
        Image.fromarray(arr).save(paths[-1], quality=90)
    return paths


def save_model(folder: Path, preset: str, image_size: int | None = None) -> Path:
    """``preset`` (random init, seed 0) at ``image_size`` px with a small WordPiece vocabulary, saved our way."""
    sys.path.insert(0, str(ROOT / "tests"))
    from eval_helpers import WORDS

    from openalign.models.dual_encoder import DualEncoder
    from openalign.models.presets import get_preset
    from openalign.models.tokenizer import train_wordpiece

    texts = [" ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 6)) for i in range(200)]
    tok = train_wordpiece(texts, folder / f"tok-{preset}", vocab_size=200, min_frequency=1)
    p = get_preset(preset)
    if image_size:
        p = p.with_towers(image_size=image_size)
    model = DualEncoder.from_preset(p, vocab_size=len(tok), seed=0)
    model.save_pretrained(folder / f"model-{preset}", tokenizer=tok)
    return folder / f"model-{preset}"


def queries(n: int) -> list[str]:
    sys.path.insert(0, str(ROOT / "tests"))
    from eval_helpers import WORDS

    rng = np.random.default_rng(1)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 8)))) for _ in range(n)]


def bf16_pointwise_only(model: torch.nn.Module) -> None:
    """Run the depthwise convs (groups > 1) in fp32 inside a bf16 autocast region: only the 1x1
    (pointwise) convs and the stem/head take bf16."""
    import types

    def fp32_forward(self, x):
        with torch.autocast("cpu", enabled=False):
            return torch.nn.Conv2d.forward(self, x.float())

    for mod in model.modules():
        if isinstance(mod, torch.nn.Conv2d) and mod.groups > 1:
            mod.forward = types.MethodType(fp32_forward, mod)


def load_variant(model_dir: Path, opts: dict):
    from openalign.models.bundle import load_bundle

    bundle = load_bundle(model_dir, channels_last=opts["channels_last"], image_precision=opts["image_precision"])
    if opts.get("bf16_pointwise"):
        bf16_pointwise_only(bundle.model)
        bundle.autocast_bf16 = True  # the measurement only: text is not encoded through this bundle
    return bundle


def run_ours(bundle, paths: list[Path], batch_size: int, workers: int) -> tuple[float, torch.Tensor]:
    from openalign.models.embed import embed_image_files

    t0 = time.perf_counter()
    res = embed_image_files(bundle, paths, batch_size, workers, progress=False)
    return len(paths) / (time.perf_counter() - t0), res.embeddings


def baseline(model_dir: Path):
    from transformers import AlignModel, AlignProcessor

    model = AlignModel.from_pretrained(str(model_dir)).eval()
    processor = AlignProcessor.from_pretrained(str(model_dir))

    def embed(batch: list[Path]) -> torch.Tensor:
        images = [Image.open(p).convert("RGB") for p in batch]
        pix = processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            return F.normalize(model.get_image_features(pixel_values=pix).pooler_output, dim=-1)

    def run(paths: list[Path], batch_size: int) -> tuple[float, torch.Tensor]:
        t0 = time.perf_counter()
        out = torch.cat([embed(paths[i : i + batch_size]) for i in range(0, len(paths), batch_size)])
        return len(paths) / (time.perf_counter() - t0), out

    return run


def top1_agreement(text: torch.Tensor, ref: torch.Tensor, other: torch.Tensor) -> float:
    """Percent of text queries whose top-1 image is the same over ``other`` as over ``ref``."""
    return 100.0 * float(((text @ ref.T).argmax(1) == (text @ other.T).argmax(1)).float().mean())


def image_top1_agreement(ref: torch.Tensor, other: torch.Tensor) -> float:
    """Image->image, leave-one-out: percent of images whose nearest other image is the same when the
    query is embedded by ``other`` (the gallery stays fp32 ``ref``)."""
    eye = torch.eye(len(ref), dtype=torch.bool)
    a = (ref @ ref.T).masked_fill(eye, -2).argmax(1)
    b = (other @ ref.T).masked_fill(eye, -2).argmax(1)
    return 100.0 * float((a == b).float().mean())


def bench_preset(preset: str, args: argparse.Namespace, tmp: Path, paths: list[Path]) -> list[dict]:
    from openalign.models.bundle import load_bundle

    model_dir = save_model(tmp, preset, args.image_size)
    run_base = baseline(model_dir)
    names = [v for v in args.variants.split(",")] if args.variants else list(VARIANTS)
    bundles = {name: load_variant(model_dir, VARIANTS[name]) for name in names}
    run_base(paths[: args.batch_size], args.batch_size)  # warm-up
    for name, b in bundles.items():
        run_ours(b, paths[: args.batch_size], args.batch_size, 0)
    rates: dict[str, list[float]] = {"baseline": [], **{n: [] for n in names}}
    embs: dict[str, torch.Tensor] = {}
    for _ in range(args.rounds):
        ips, embs["baseline"] = run_base(paths, args.batch_size)
        rates["baseline"].append(ips)
        for name, b in bundles.items():
            ips, embs[name] = run_ours(b, paths, args.batch_size, VARIANTS[name]["workers"])
            rates[name].append(ips)
    text = load_bundle(model_dir).encode_texts(queries(args.queries))  # fp32 text tower for every variant
    base = float(np.median(rates["baseline"]))
    ref = embs["baseline"]
    nn = (ref @ ref.T).masked_fill(torch.eye(len(ref), dtype=torch.bool), -2)
    top2 = nn.topk(2, dim=1).values
    print(f"{preset}: fp32 top-1 hits {len(set((text @ ref.T).argmax(1).tolist()))} distinct images of {len(paths)} "
          f"(text->image), {len(set(nn.argmax(1).tolist()))} (image->image, median top-1/top-2 margin "
          f"{float((top2[:, 0] - top2[:, 1]).median()):.1e})", flush=True)
    rows = []
    for name, rate in rates.items():
        ips = float(np.median(rate))
        rows.append({"preset": preset, "variant": name, "images_per_s": ips, "ratio": ips / base,
                     "max_diff": float((embs[name] - embs["baseline"]).abs().max()),
                     "top1_agree": top1_agreement(text, embs["baseline"], embs[name]),
                     "img_agree": image_top1_agreement(embs["baseline"], embs[name])})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,b3-mini", help="comma-separated; b7-base is slow on a CPU")
    ap.add_argument("--image-size", type=int, default=289, help="crop size the models are built for")
    ap.add_argument("--images", type=int, default=0, help="JPEGs per preset (0: a per-preset default)")
    ap.add_argument("--size", default="512x384", help="WxH of the generated JPEGs")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    ap.add_argument("--queries", type=int, default=200, help="text queries for the top-1 agreement")
    ap.add_argument("--variants", default="", help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    args = ap.parse_args()
    torch.set_num_threads(1)
    width, height = (int(v) for v in args.size.split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "jpegs").mkdir()
        presets = args.presets.split(",")
        n_max = max(args.images or DEFAULT_IMAGES.get(p, 32) for p in presets)
        all_paths = make_jpegs(tmp / "jpegs", n_max, width, height)
        for preset in presets:
            n = args.images or DEFAULT_IMAGES.get(preset, 32)
            rows += bench_preset(preset, args, tmp, all_paths[:n])
            print(f"{preset}: {n} JPEGs {width}x{height} -> {args.image_size} px, batch {args.batch_size}, "
                  f"torch threads {torch.get_num_threads()}, median of {args.rounds} interleaved rounds", flush=True)
    print("\n| preset | variant | images/s | vs baseline | max abs diff vs fp32 | top-1 agreement text->image "
          "| top-1 agreement image->image |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['preset']} | {r['variant']} | {r['images_per_s']:.2f} | {r['ratio']:.2f}x | "
              f"{r['max_diff']:.1e} | {r['top1_agree']:.1f}% | {r['img_agree']:.1f}% |")


if __name__ == "__main__":
    main()
