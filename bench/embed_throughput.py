"""Images/s to embed a folder of JPEGs: OpenALIGN's batched pipeline vs a plain transformers loop.

Ours: ``load_bundle`` + ``embed_image_files`` (DataLoader decode workers, PIL+numpy transform,
batched forward). Baseline: the straightforward loop -- open each batch of files, run
``AlignProcessor`` on them, ``AlignModel.get_image_features``, normalise -- with the same batch
size, model and files, in the same run. Prints both figures, the ratio, and the largest difference
between the two sets of embeddings (they must agree).

    .venv/bin/python bench/embed_throughput.py [--images 512] [--size 512x384] [--workers 2] [--preset tiny]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


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


def save_model(folder: Path, preset: str) -> Path:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from eval_helpers import save_tiny_model  # a small WordPiece vocab + the preset, saved our way

    if preset != "tiny":
        raise SystemExit("only --preset tiny is wired up here (the bench must stay under ~2 minutes on a CPU)")
    return save_tiny_model(folder)


def run_ours(model_dir: Path, paths: list[Path], batch_size: int, workers: int) -> tuple[float, torch.Tensor]:
    from openalign.models.embed import embed_image_files
    from openalign.models.bundle import load_bundle

    bundle = load_bundle(model_dir)
    embed_image_files(bundle, paths[:batch_size], batch_size, 0, progress=False)  # warm-up
    t0 = time.perf_counter()
    res = embed_image_files(bundle, paths, batch_size, workers, progress=False)
    return len(paths) / (time.perf_counter() - t0), res.embeddings


def run_baseline(model_dir: Path, paths: list[Path], batch_size: int) -> tuple[float, torch.Tensor]:
    from transformers import AlignModel, AlignProcessor

    model = AlignModel.from_pretrained(str(model_dir)).eval()
    processor = AlignProcessor.from_pretrained(str(model_dir))

    def embed(batch: list[Path]) -> torch.Tensor:
        images = [Image.open(p).convert("RGB") for p in batch]
        pix = processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            return F.normalize(model.get_image_features(pixel_values=pix).pooler_output, dim=-1)

    embed(paths[:batch_size])  # warm-up
    t0 = time.perf_counter()
    out = torch.cat([embed(paths[i : i + batch_size]) for i in range(0, len(paths), batch_size)])
    return len(paths) / (time.perf_counter() - t0), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--size", default="512x384", help="WxH of the generated JPEGs")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--preset", default="tiny")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "jpegs").mkdir()
        paths = make_jpegs(tmp / "jpegs", args.images, width, height)
        model_dir = save_model(tmp, args.preset)
        base_ips, base_emb = run_baseline(model_dir, paths, args.batch_size)
        ours_ips, ours_emb = run_ours(model_dir, paths, args.batch_size, args.workers)
    diff = float((ours_emb - base_emb).abs().max())
    print(f"images: {args.images} JPEGs {width}x{height}, preset {args.preset}, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}, decode workers {args.workers}")
    print(f"baseline (AlignProcessor + AlignModel.get_image_features loop): {base_ips:8.1f} images/s")
    print(f"openalign (embed_image_files, batched + workers):               {ours_ips:8.1f} images/s")
    print(f"ratio openalign / baseline: {ours_ips / base_ips:.2f}x   max |embedding difference|: {diff:.2e}")


if __name__ == "__main__":
    main()
