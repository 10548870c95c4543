"""On-disk embedding cache keyed by model identity + image transform + file list.

The key hashes (a) the model: for a model directory, the name, size and mtime of its config and
weight files; for an in-memory model, its parameters; (b) the eval transform; (c) every image
path with its size and mtime. Any change re-embeds. Files are safetensors (no pickle) written
atomically, so evaluations of the same model on the same files (zero-shot, linear probe, kNN)
share one embedding pass.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

CACHE_FORMAT = "openalign-embeddings/1"
_MODEL_FILES = ("config.json", "preprocessor_config.json", "image_projection.safetensors")


def model_identity(bundle: Any) -> str:
    """A string naming the model's weights: file stats for a directory, a parameter hash otherwise."""
    path = Path(getattr(bundle, "name", "") or "")
    if path.is_dir():
        parts = []
        for f in sorted(path.iterdir()):
            if f.name in _MODEL_FILES or f.suffix in (".safetensors", ".bin"):
                st = f.stat()
                parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
        return f"dir:{path.resolve()}|" + "|".join(parts)
    h = hashlib.sha256()
    for name, tensor in bundle.model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return f"params:{h.hexdigest()}"


def _stat(p: str) -> str:
    try:
        st = os.stat(p)
        return f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return "missing"


def cache_key(bundle: Any, paths: Sequence[str]) -> str:
    h = hashlib.sha256()
    h.update(CACHE_FORMAT.encode())
    h.update(model_identity(bundle).encode())
    transform = bundle.transform
    h.update(json.dumps(asdict(transform) if is_dataclass(transform) else repr(transform), sort_keys=True).encode())
    for p in paths:
        h.update(f"\n{os.path.abspath(p)}|{_stat(p)}".encode())
    return h.hexdigest()[:32]


class EmbeddingCache:
    """One cache entry: ``<cache_dir>/<key>.safetensors`` (+ ``.json`` listing failed files)."""

    def __init__(self, cache_dir: str | Path, bundle: Any, paths: Sequence[str]) -> None:
        self.paths = list(paths)
        key = cache_key(bundle, self.paths)
        self.file = Path(cache_dir) / f"{key}.safetensors"
        self.meta_file = self.file.with_suffix(".json")

    def load(self):  # -> ImageEmbeddings | None
        from safetensors.torch import load_file

        from openalign.evals.embed import ImageEmbeddings

        if not (self.file.is_file() and self.meta_file.is_file()):
            return None
        try:
            tensors = load_file(str(self.file))
            meta = json.loads(self.meta_file.read_text())
        except (OSError, ValueError):
            return None  # a damaged entry is recomputed, never trusted
        emb, ok = tensors["embeddings"], tensors["ok"].bool()
        if emb.shape[0] != len(self.paths):
            return None
        return ImageEmbeddings(embeddings=emb, ok=ok, paths=self.paths, failed=meta.get("failed", []),
                               from_cache=True)

    def save(self, result: Any) -> None:
        from safetensors.torch import save_file

        from openalign.io import atomic_write_text, atomic_write_with

        self.file.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"embeddings": result.embeddings.contiguous(), "ok": result.ok.to(torch.uint8).contiguous()}
        atomic_write_with(self.file, lambda tmp: save_file(tensors, tmp))
        meta = {"format": CACHE_FORMAT, "count": len(self.paths), "failed": result.failed}
        atomic_write_text(self.meta_file, json.dumps(meta) + "\n")
