"""A loaded model with its tokenizer and image transform: what every consumer (eval, search) needs.

``load_bundle(dir)`` accepts a directory written by ``openalign train`` or the
``kakaobrain/align-base`` layout (config.json, weights, tokenizer files, preprocessor_config.json),
honouring its preprocessing.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from openalign.models.dual_encoder import DualEncoder
from openalign.models.preprocess import ImageTransform, transform_from_processor_config
from openalign.models.tokenizer import MAX_TEXT_LEN, load_tokenizer, tokenize


@dataclass
class ModelBundle:
    model: DualEncoder
    tokenizer: Any
    transform: ImageTransform  # eval transform (centre crop)
    name: str = ""
    device: str = "cpu"
    max_text_len: int = MAX_TEXT_LEN
    autocast_bf16: bool = False

    @property
    def dim(self) -> int:
        return self.model.embed_dim

    def _ctx(self):
        if self.autocast_bf16:
            return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)

        return contextlib.nullcontext()

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """(N,) strings -> (N, D) float32 L2-normalised embeddings on the CPU."""
        out = []
        for i in range(0, len(texts), batch_size):
            enc = tokenize(self.tokenizer, list(texts[i : i + batch_size]), self.max_text_len)
            with self._ctx():
                out.append(self.model.encode_texts(enc["input_ids"].to(self.device),
                                                   enc["attention_mask"].to(self.device)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    @torch.inference_mode()
    def encode_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with self._ctx():
            return self.model.encode_images(pixel_values.to(self.device)).float().cpu()

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> torch.Tensor:
        """(N,) PIL images -> (N, D) float32 L2-normalised embeddings on the CPU."""
        out = []
        for i in range(0, len(images), batch_size):
            out.append(self.encode_pixels(torch.stack([self.transform(im) for im in images[i : i + batch_size]])))
        return torch.cat(out) if out else torch.zeros(0, self.dim)


def load_bundle(path: str | Path, device: str = "cpu", bf16: bool = False) -> ModelBundle:
    path = Path(path)
    model = DualEncoder.from_pretrained(path).to(device).eval()
    tokenizer = load_tokenizer(path)
    pp = _image_processor_config(path)
    if pp is not None:
        transform = transform_from_processor_config(pp, train=False)
    elif model.preset is not None:
        transform = ImageTransform(size=model.preset.image_size, resize=model.preset.resize_size)
    else:
        raise FileNotFoundError(f"{path}: no preprocessor_config.json; save the model with `openalign train` "
                                "or copy the file from the model's hub page")
    return ModelBundle(model=model, tokenizer=tokenizer, transform=transform, name=str(path), device=device,
                       autocast_bf16=bf16)


def _image_processor_config(path: Path) -> dict | None:
    """The image processor settings: ``preprocessor_config.json`` (align-base, transformers 4) or the
    ``image_processor`` section of ``processor_config.json`` (what transformers 5 writes)."""
    pp = path / "preprocessor_config.json"
    if pp.is_file():
        return json.loads(pp.read_text())
    proc = path / "processor_config.json"
    if proc.is_file():
        section = json.loads(proc.read_text()).get("image_processor")
        if isinstance(section, dict):
            return section
    return None
