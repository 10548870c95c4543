"""Batched image embedding: DataLoader decode workers, a progress bar, corrupt files skipped and counted.

Every evaluation embeds image files through :func:`embed_image_files`, so decoding runs in
``workers`` processes while the model runs in the main one. A file that fails to open or decode is
not fatal: its row is zero, ``ok`` is False, and the caller drops it and reports the count.
An optional on-disk cache (see :mod:`openalign.evals.cache`) reuses embeddings of the same files
by the same model across evaluations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

log = logging.getLogger(__name__)

# What a broken image file raises inside PIL (truncated, not an image, absurd size).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError)


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
    """Decodes and transforms one file per item; returns (index, pixels, ok)."""

    def __init__(self, paths: Sequence[str | Path], transform: Any) -> None:
        self.paths = [str(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, bool]:
        try:
            with Image.open(self.paths[i]) as img:
                img.load()
                return i, self.transform(img), True
        except DECODE_ERRORS:
            size = self.transform.size
            return i, torch.zeros(3, size, size), False


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decode workers must not fight the model for cores


def embed_image_files(
    bundle: Any,
    paths: Sequence[str | Path],
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    desc: str = "embed images",
) -> ImageEmbeddings:
    """Embed image files with ``bundle`` (a ModelBundle: ``transform`` + ``encode_pixels``)."""
    from openalign.evals.cache import EmbeddingCache

    paths = [str(p) for p in paths]
    cache = EmbeddingCache(cache_dir, bundle, paths) if cache_dir else None
    if cache is not None and (hit := cache.load()) is not None:
        log.info("embeddings of %d images loaded from cache %s", len(paths), cache.file)
        return hit
    result = _embed_uncached(bundle, paths, batch_size, workers, progress, desc)
    if cache is not None:
        cache.save(result)
    return result


def _embed_uncached(bundle: Any, paths: list[str], batch_size: int, workers: int, progress: bool,
                    desc: str) -> ImageEmbeddings:
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(
        ImageFileDataset(paths, bundle.transform), batch_size=batch_size, num_workers=workers,
        worker_init_fn=_worker_init if workers else None, shuffle=False,
    )
    emb = torch.zeros(len(paths), bundle.dim)
    ok = torch.zeros(len(paths), dtype=torch.bool)
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        for idx, pixels, good in loader:  # idx (B,), pixels (B, 3, H, W), good (B,)
            if good.any():
                emb[idx[good]] = bundle.encode_pixels(pixels[good]).float()
            ok[idx] = good
            bar.update(len(idx))
    failed = [paths[i] for i in torch.nonzero(~ok).flatten().tolist()]
    for p in failed[:5]:
        log.warning("unreadable image skipped: %s", p)
    if len(failed) > 5:
        log.warning("... and %d more unreadable images skipped", len(failed) - 5)
    return ImageEmbeddings(embeddings=emb, ok=ok, paths=paths, failed=failed)
