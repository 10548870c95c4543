"""Shared fixtures: tiny generated shards and a tokenizer, built once per session."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}
SHAPES = ["square", "circle"]


def draw(colour: str, shape: str, size: int = 48) -> Image.Image:
    from PIL import ImageDraw

    img = Image.new("RGB", (size, size), (128, 128, 128))
    d = ImageDraw.Draw(img)
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    (d.rectangle if shape == "square" else d.ellipse)(box, fill=COLOURS[colour])
    return img


def write_shards(out: Path, n: int, per_shard: int = 16, seed: int = 0, corrupt: int = 0, empty: int = 0) -> str:
    """WebDataset shards of coloured shapes (img2dataset layout); returns a brace pattern."""
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    n_shards = (n + per_shard - 1) // per_shard
    k = 0
    for s in range(n_shards):
        with wds.TarWriter(str(out / f"{s:05d}.tar")) as w:
            for _ in range(min(per_shard, n - k)):
                c, sh = rng.choice(list(COLOURS)), rng.choice(SHAPES)
                buf = io.BytesIO()
                draw(c, sh).save(buf, format="JPEG")
                jpg = buf.getvalue()
                txt = f"a {c} {sh}"
                if k < corrupt:
                    jpg = b"not a jpeg"
                elif k < corrupt + empty:
                    txt = "   "
                w.write({"__key__": f"{k:09d}", "jpg": jpg, "txt": txt, "json": json.dumps({"colour": c, "shape": sh})})
                k += 1
    return str(out / f"{{00000..{n_shards - 1:05d}}}.tar")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tinydata")
    shards = write_shards(root / "shards", 64, per_shard=16)
    from openalign.models.tokenizer import train_wordpiece

    texts = [f"a {c} {s}" for c in COLOURS for s in SHAPES] * 5
    train_wordpiece(texts, root / "tok", vocab_size=200, min_frequency=1)
    return {"root": root, "shards": shards, "tokenizer": str(root / "tok")}
