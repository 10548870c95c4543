"""Shared fixtures for the search tests: a colour/shape image collection and an encoder that 'knows' it.

``ToyEncoder`` is a constructed embedding: colour and shape are separate directions, so the
paper's arithmetic (red circle + "blue" - "red") has a known right answer. Images are real PNGs,
embedded by measuring their dominant colour and how much of their bounding box the shape fills.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220)}
SHAPES = ("circle", "square", "triangle")
AXES = {**{c: i for i, c in enumerate(COLOURS)}, **{s: 3 + i for i, s in enumerate(SHAPES)}}
DIM = 16  # 6 semantic axes + 10 for per-image/per-word detail


def draw(colour: str, shape: str, size: int = 64, seed: int = 0) -> Image.Image:
    rng = random.Random(seed)
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    r = rng.randint(size // 4, size // 3)
    cx, cy = rng.randint(r + 2, size - r - 2), rng.randint(r + 2, size - r - 2)
    box = [cx - r, cy - r, cx + r, cy + r]
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return im


def make_collection(root: Path, per_kind: int = 3) -> list[tuple[str, str]]:
    """Write ``per_kind`` images of every colour x shape (+ NAME.txt captions); return (colour, shape) per file order."""
    root.mkdir(parents=True, exist_ok=True)
    kinds = []
    for ci, c in enumerate(COLOURS):
        for si, s in enumerate(SHAPES):
            for j in range(per_kind):
                name = f"{c}_{s}_{j}"
                draw(c, s, seed=100 * ci + 10 * si + j).save(root / f"{name}.png")
                (root / f"{name}.txt").write_text(f"a {c} {s}")
                kinds.append((c, s))
    return sorted(kinds, key=lambda k: k)  # folder_records sorts by file name == this order


def _detail(key: str, scale: float) -> np.ndarray:
    seed = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    v = np.zeros(DIM, np.float32)
    v[6:] = np.random.default_rng(seed).normal(size=DIM - 6) * scale
    return v


def _norm(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


class ToyTransform:
    """PIL -> (3, 32, 32) float tensor in [0, 1] (picklable, for DataLoader workers)."""

    def __call__(self, img: Image.Image, rng=None) -> torch.Tensor:
        arr = np.asarray(img.convert("RGB").resize((32, 32), Image.NEAREST), dtype=np.float32) / 255.0
        return torch.from_numpy(arr.transpose(2, 0, 1).copy())


class ToyEncoder:
    """Constructed embeddings: axis per colour, axis per shape, small per-item detail."""

    name = "toy-colour-shape"
    dim = DIM
    transform = ToyTransform()

    def encode_texts(self, texts) -> torch.Tensor:
        out = []
        for t in texts:
            v = _detail("text:" + t, 0.05)
            for w in t.lower().split():
                if w in AXES:
                    v[AXES[w]] += 1.0
            out.append(_norm(v))
        return torch.from_numpy(np.stack(out))

    def encode_pixels(self, px: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.stack([self._one(p.numpy()) for p in px]))

    def encode_images(self, images) -> torch.Tensor:
        return self.encode_pixels(torch.stack([self.transform(im) for im in images]))

    def _one(self, p: np.ndarray) -> np.ndarray:
        ink = p.min(0) < 0.9  # (H, W) non-white
        v = _detail("img:" + hashlib.sha256(p.tobytes()).hexdigest(), 0.1)
        if ink.any():
            mean = p[:, ink].mean(1)  # (3,) mean colour of the shape
            v[int(np.argmax(mean))] += 1.0  # r, g, b -> red, green, blue axes
            ys, xs = np.nonzero(ink)
            fill = ink.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
            v[3 + int(np.argmin([abs(fill - 0.785), abs(fill - 1.0), abs(fill - 0.5)]))] += 1.0
        return _norm(v)


def clustered_vectors(n: int, dim: int, n_clusters: int = 256, spread: float = 0.6, seed: int = 0) -> np.ndarray:
    """L2-normalised vectors around random centres (embeddings have structure; uniform noise has none)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, n_clusters, n)] + spread * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
