"""Generated fixtures for the evaluation tests: images, Karpathy JSON, ImageFolder, CSV, toy models."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

WORDS = ["red", "green", "blue", "circle", "square", "small", "large", "photo", "of", "a", "the", "on", "sky"]


def write_image(path: Path, index: int, fmt: str = "PNG", size: int = 24) -> Path:
    """A solid image whose pixel (0, 0) encodes ``index`` (R = index % 256, G = index // 256)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (index % 256, index // 256, 7)).save(path, fmt)
    return path


def write_corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return path


def write_karpathy(root: Path, n_test: int = 10, n_train: int = 3, caps: int = 5, corrupt: int = 0) -> Path:
    """root/images/img_i.png + root/karpathy.json; captions of image i read 'caption c of image i'."""
    images = []
    for i in range(n_test + n_train):
        name = f"img_{i}.png"
        if i < corrupt:
            write_corrupt(root / "images" / "sub" / name)
        else:
            write_image(root / "images" / "sub" / name, i)
        images.append({"filename": name, "filepath": "sub", "split": "test" if i < n_test else "train",
                       "sentences": [{"raw": f"caption {c} of image {i}"} for c in range(caps)]})
    path = root / "karpathy.json"
    path.write_text(json.dumps({"images": images}))
    return path


@dataclass(frozen=True)
class IndexTransform:
    """Picklable fake transform: the image's encoded index in every pixel of a (3, size, size) tensor."""

    size: int = 4

    def __call__(self, img: Image.Image) -> torch.Tensor:
        r, g, _ = img.convert("RGB").getpixel((0, 0))
        return torch.full((3, self.size, self.size), float(r + 256 * g))


class PerfectBundle:
    """A fake ModelBundle with perfect embeddings: image i and every text naming 'image i' -> one-hot i."""

    def __init__(self, dim: int, text_index=None) -> None:
        self.dim = dim
        self.transform = IndexTransform()
        self.name = f"perfect-{dim}"
        self.text_index = text_index or (lambda t: int(t.rsplit(" ", 1)[-1]))
        self.model = torch.nn.Linear(1, 1)  # for the cache's parameter hash

    def _onehot(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(idx.long() % self.dim, self.dim).float()

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._onehot(pixels[:, 0, 0, 0])

    def encode_texts(self, texts, batch_size: int = 256) -> torch.Tensor:
        return self._onehot(torch.tensor([self.text_index(t) for t in texts]))


def save_tiny_model(out: Path, seed: int = 0) -> Path:
    """The tiny preset with a small WordPiece vocabulary, saved with save_pretrained (our layout)."""
    from openalign.models.dual_encoder import DualEncoder
    from openalign.models.tokenizer import train_wordpiece

    texts = [" ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 6)) for i in range(200)]
    tok = train_wordpiece(texts, out / "tok", vocab_size=200, min_frequency=1)
    model = DualEncoder.from_preset("tiny", vocab_size=len(tok), seed=seed)
    model.save_pretrained(out / "model", tokenizer=tok)
    return out / "model"


def class_index(text: str) -> int:
    """'a photo of a class3 thing.' -> 3 (the PerfectBundle's reading of prompts)."""
    import re

    return int(re.search(r"class(\d+)", text).group(1))


def write_image_folder(root: Path, n_classes: int = 4, per_class: int = 3, corrupt: int = 0) -> Path:
    """root/class<c>/<i>.png whose encoded index is the class (so a PerfectBundle classifies perfectly)."""
    for c in range(n_classes):
        for i in range(per_class):
            write_image(root / f"class{c}" / f"{i}.png", c)
    for i in range(corrupt):
        write_corrupt(root / "class0" / f"bad{i}.jpg")
    return root


def write_csv(root: Path, n_classes: int = 4, per_class: int = 3, numeric: bool = False) -> Path:
    lines = ["path,label"]
    for c in range(n_classes):
        for i in range(per_class):
            write_image(root / "imgs" / f"{c}_{i}.png", c)
            lines.append(f"imgs/{c}_{i}.png,{c if numeric else f'class{c}'}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"
