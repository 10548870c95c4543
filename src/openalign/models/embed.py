"""The one image-embedding pipeline, and the one model identity.

Every consumer that embeds many images (evaluations, search indexes, ``openalign embed`` later)
goes through :func:`embed_batches`: a DataLoader whose workers decode and transform items while
the main process runs the model; items that fail to decode are skipped and counted, never fatal.
Items are dicts: ``{"pixels": (3, H, W), ...metadata}`` or ``{"error": reason, "detail": ...}``.

:func:`embed_image_files` is that pipeline over a list of files, with an optional on-disk cache
(safetensors, written atomically, no pickle) keyed by :func:`model_identity`, the device and
precision, the transform, and every file's path, size and mtime, so evaluations of one model on the same files share one pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from openalign.io import atomic_write_text, atomic_write_with
from openalign.media.images import DECODE_ERRORS, open_image

log = logging.getLogger(__name__)

CACHE_FORMAT = "openalign-embeddings/2"
# Files of a model directory whose bytes name the model (config + weights + preprocessing).
_MODEL_FILES = ("config.json", "preprocessor_config.json", "processor_config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


# ---------------------------------------------------------------- identity


def model_identity(bundle: Any) -> dict[str, Any]:
    """Name, directory, dim, preset and a fingerprint of the weights.

    For a model directory the fingerprint hashes each config/weight file's name, size and first
    and last MiB (cheap on multi-GB checkpoints, changes when the file is rewritten by training);
    for an in-memory model it hashes every parameter; None when neither is available.
    """
    name = getattr(bundle, "name", "") or ""
    d = Path(name) if name else None
    is_dir = d is not None and d.is_dir()
    preset = getattr(getattr(bundle, "model", None), "preset", None)
    ident: dict[str, Any] = {"name": name or "unnamed", "dim": int(bundle.dim),
                             "dir": str(d.resolve()) if is_dir else None,
                             "preset": getattr(preset, "name", None)}
    if is_dir:
        ident["fingerprint"] = _dir_fingerprint(d)
    elif hasattr(getattr(bundle, "model", None), "state_dict"):
        ident["fingerprint"] = _param_fingerprint(bundle.model)
    else:
        ident["fingerprint"] = None
    return ident


def _dir_fingerprint(d: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(d.iterdir()):
        if f.name in _MODEL_FILES or f.suffix in _WEIGHT_SUFFIXES:
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with open(f, "rb") as fh:
                h.update(fh.read(2**20))
                if size > 2**21:
                    fh.seek(-(2**20), os.SEEK_END)
                    h.update(fh.read())
    return h.hexdigest()[:16]


def _param_fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- the pipeline


def collate_items(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good items' pixels; keep their metadata and the skipped items' reasons."""
    good = [it for it in items if "error" not in it]
    return {
        "pixels": torch.stack([it.pop("pixels") for it in good]) if good else None,
        "rows": good,
        "errors": [(it["error"], it.get("detail", "")) for it in items if "error" in it],
    }


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decode workers must not fight the model for cores


def embed_batches(bundle: Any, dataset: torch.utils.data.Dataset, batch_size: int = 32, num_workers: int = 2,
                  total: int | None = None, progress: bool = True,
                  desc: str = "embedding") -> Iterator[dict[str, Any]]:
    """Batches of ``{"vectors": (B, D) float32 array or None, "rows": [...], "errors": [...]}``.

    ``rows`` are the good items' metadata (their pixels removed), in dataset order.
    """
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=collate_items, shuffle=False,
                                         worker_init_fn=_worker_init if num_workers else None)
    with tqdm(total=total, unit="img", desc=desc, leave=False, disable=not progress) as bar:
        for batch in loader:
            pixels = batch["pixels"]
            vecs = bundle.encode_pixels(pixels).float().numpy() if pixels is not None else None
            bar.update(len(batch["rows"]) + len(batch["errors"]))
            yield {"vectors": vecs, "rows": batch["rows"], "errors": batch["errors"]}


# ---------------------------------------------------------------- image files (+ cache)


@dataclass
class ImageEmbeddings:
    """(N, D) L2-normalised embeddings in file order; rows of unreadable files are zero."""

    embeddings: torch.Tensor
    ok: torch.Tensor  # (N,) bool
    paths: list[str]
    failed: list[str] = field(default_factory=list)
    from_cache: bool = False

    @property
    def num_failed(self) -> int:
        return len(self.failed)


class ImageFileDataset(torch.utils.data.Dataset):
    """One pipeline item per file: ``{"pixels", "index"}`` or ``{"error", "detail", "index"}``."""

    def __init__(self, paths: Sequence[str | Path], transform: Any) -> None:
        self.paths = [str(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            return {"pixels": self.transform(open_image(self.paths[i])), "index": i}
        except DECODE_ERRORS:
            return {"error": "unreadable_image", "detail": self.paths[i], "index": i}


def embed_image_files(bundle: Any, paths: Sequence[str | Path], batch_size: int = 64, workers: int = 0,
                      progress: bool = True, cache_dir: str | Path | None = None,
                      desc: str = "embed images") -> ImageEmbeddings:
    """Embed image files with ``bundle`` (``transform`` + ``encode_pixels``), through the cache if given."""
    paths = [str(p) for p in paths]
    cache = EmbeddingCache(cache_dir, bundle, paths) if cache_dir else None
    if cache is not None and (hit := cache.load()) is not None:
        log.info("embeddings of %d images loaded from cache %s", len(paths), cache.file)
        return hit
    emb = torch.zeros(len(paths), bundle.dim)
    ok = torch.zeros(len(paths), dtype=torch.bool)
    for b in embed_batches(bundle, ImageFileDataset(paths, bundle.transform), batch_size, workers, len(paths),
                           progress, desc):
        if b["vectors"] is not None:
            idx = torch.tensor([r["index"] for r in b["rows"]])
            emb[idx] = torch.from_numpy(b["vectors"])
            ok[idx] = True
    failed = [paths[i] for i in torch.nonzero(~ok).flatten().tolist()]
    for p in failed[:5]:
        log.warning("unreadable image skipped: %s", p)
    if len(failed) > 5:
        log.warning("... and %d more unreadable images skipped", len(failed) - 5)
    result = ImageEmbeddings(embeddings=emb, ok=ok, paths=paths, failed=failed)
    if cache is not None:
        cache.save(result)
    return result


def compute_identity(bundle: Any) -> dict[str, str]:
    """Where and in which precision the embeddings were computed: bf16 or another device gives other
    numbers, so a cache entry made one way is never served for the other."""
    model = getattr(bundle, "model", None)
    param = next(model.parameters(), None) if hasattr(model, "parameters") else None
    dtype = str(param.dtype) if param is not None else "unknown"
    ident = {"device": str(getattr(bundle, "device", "cpu")),
             "dtype": "autocast-bf16" if getattr(bundle, "autocast_bf16", False) else dtype}
    image_precision = getattr(bundle, "image_precision", "fp32")
    if image_precision != "fp32":  # fp32 keys stay as they were: existing caches remain valid
        ident["image_precision"] = str(image_precision)
    return ident


def _stat(p: str) -> str:
    try:
        st = os.stat(p)
        return f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return "missing"


def cache_key(bundle: Any, paths: Sequence[str]) -> str:
    h = hashlib.sha256()
    h.update(CACHE_FORMAT.encode())
    h.update(json.dumps(model_identity(bundle), sort_keys=True).encode())
    h.update(json.dumps(compute_identity(bundle), sort_keys=True).encode())
    transform = bundle.transform
    h.update(json.dumps(asdict(transform) if is_dataclass(transform) else repr(transform), sort_keys=True).encode())
    for p in paths:
        h.update(f"\n{os.path.abspath(p)}|{_stat(p)}".encode())
    return h.hexdigest()[:32]


class EmbeddingCache:
    """One cache entry: ``<cache_dir>/<key>.safetensors`` (+ ``.json`` listing failed files)."""

    def __init__(self, cache_dir: str | Path, bundle: Any, paths: Sequence[str]) -> None:
        self.paths = list(paths)
        self.file = Path(cache_dir) / f"{cache_key(bundle, self.paths)}.safetensors"
        self.meta_file = self.file.with_suffix(".json")

    def load(self) -> ImageEmbeddings | None:
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

    def save(self, result: ImageEmbeddings) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"embeddings": result.embeddings.contiguous(), "ok": result.ok.to(torch.uint8).contiguous()}
        atomic_write_with(self.file, lambda tmp: save_file(tensors, tmp))
        meta = {"format": CACHE_FORMAT, "count": len(self.paths), "failed": result.failed}
        atomic_write_text(self.meta_file, json.dumps(meta) + "\n")
