"""Image sources to index: a folder, WebDataset shards, or a Parquet table of paths/URLs + captions.

Each source is a torch Dataset yielding one item per image: the eval-transformed pixels, the
metadata row (path/url, caption, width, height) and a small JPEG thumbnail, or the reason it was
skipped. Items are decoded in DataLoader workers; :func:`openalign.models.embed.collate_items` keeps good and bad apart.
"""

from __future__ import annotations

import io
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import torch
from PIL import Image

from openalign.errors import UserError
from openalign.media.images import IMAGE_SUFFIXES, list_images, open_image, to_rgb
from openalign.media.shards import (
    decode_image,
    iter_samples,
    resolve_shards,
    sample_caption,
)

MAX_DOWNLOAD_BYTES = 50 * 2**20
PATH_COLUMNS = ("path", "image_path", "filepath", "file")
URL_COLUMNS = ("url", "image_url")
CAPTION_COLUMNS = ("caption", "text", "alt", "txt")


@dataclass(frozen=True)
class Record:
    path: str | None = None
    url: str | None = None
    caption: str | None = None


def folder_records(root: str | Path) -> list[Record]:
    """Every image under ``root`` (sorted); a ``NAME.txt`` beside ``NAME.jpg`` is its caption."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--images {root}: not a folder; pass a folder of .jpg/.png/.webp images")
    files = list_images(root)
    if not files:
        raise UserError(f"--images {root}: no images ({', '.join(IMAGE_SUFFIXES)}) found; check the folder")
    out = []
    for f in files:
        side = f.with_suffix(".txt")
        cap = side.read_text(encoding="utf-8", errors="replace").strip() if side.is_file() else None
        out.append(Record(path=str(f.resolve()), caption=cap or None))
    return out


def parquet_records(file: str | Path) -> list[Record]:
    """Rows of a Parquet table with a path column (relative to the file) or a URL column, and an optional caption."""
    file = Path(file)
    if not file.is_file():
        raise UserError(f"--parquet {file}: file not found")
    df = pd.read_parquet(file)
    pcol = next((c for c in PATH_COLUMNS if c in df), None)
    ucol = next((c for c in URL_COLUMNS if c in df), None)
    ccol = next((c for c in CAPTION_COLUMNS if c in df), None)
    if pcol is None and ucol is None:
        raise UserError(f"--parquet {file}: no image column; add one of {', '.join(PATH_COLUMNS + URL_COLUMNS)}")
    out = []
    for row in df.itertuples(index=False):
        r = row._asdict()
        path = r.get(pcol) if pcol else None
        if path is not None and not Path(path).is_absolute():
            path = str((file.parent / path).resolve())
        cap = r.get(ccol) if ccol else None
        out.append(Record(path=path or None, url=(r.get(ucol) if ucol else None) or None,
                          caption=str(cap).strip() if cap is not None and str(cap).strip() else None))
    return out


def open_record(rec: Record) -> Image.Image:
    """Read a record's image from its local path, a file:// URL or an http(s) URL."""
    if rec.path:
        data = Path(rec.path).read_bytes()
    elif rec.url and rec.url.startswith("file://"):
        data = Path(rec.url[len("file://"):]).read_bytes()
    elif rec.url:
        with urllib.request.urlopen(rec.url, timeout=10) as resp:  # noqa: S310 (user-supplied URL list)
            data = resp.read(MAX_DOWNLOAD_BYTES + 1)
        if len(data) > MAX_DOWNLOAD_BYTES:
            raise ValueError("image larger than 50 MB")
    else:
        raise ValueError("record has neither path nor url")
    return open_image(data)


def make_item(img: Image.Image, rec: Record, transform: Callable, thumb_size: int) -> dict[str, Any]:
    rgb = to_rgb(img)
    item: dict[str, Any] = {"pixels": transform(rgb), "path": rec.path, "url": rec.url, "caption": rec.caption,
                            "width": rgb.width, "height": rgb.height, "thumb": b""}
    if thumb_size > 0:
        t = rgb.copy()
        t.thumbnail((thumb_size, thumb_size), Image.BILINEAR)
        buf = io.BytesIO()
        t.save(buf, format="JPEG", quality=85)
        item["thumb"] = buf.getvalue()
    return item


class RecordDataset(torch.utils.data.Dataset):
    """Map-style dataset over :class:`Record` s (folder or Parquet sources)."""

    def __init__(self, records: list[Record], transform: Callable, thumb_size: int = 192) -> None:
        self.records, self.transform, self.thumb_size = records, transform, thumb_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        try:
            return make_item(open_record(rec), rec, self.transform, self.thumb_size)
        except Exception as exc:  # a bad image is skipped and counted, never fatal
            return {"error": "unreadable_image", "detail": f"{rec.path or rec.url}: {exc}"}


class ShardDataset(torch.utils.data.IterableDataset):
    """WebDataset shards in img2dataset's layout; DataLoader workers take every n-th shard."""

    def __init__(self, urls: list[str], transform: Callable, thumb_size: int = 192) -> None:
        super().__init__()
        self.urls, self.transform, self.thumb_size = urls, transform, thumb_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        for url in self.urls[wid::nw]:
            for _, item in shard_items(url, self.transform, self.thumb_size):
                yield item


def shard_items(url: str, transform: Callable, thumb_size: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(position in the shard, pipeline item) for every sample of one shard; a missing caption is fine
    (the image is still indexed), a bad image is an error item, a broken shard ends with one (position -1)."""
    counts: Counter = Counter()
    for pos, sample in enumerate(iter_samples([url], counts)):
        rec = Record(path=f"{url}#{sample.get('__key__')}", caption=sample_caption(sample) or None)
        img, reason = decode_image(sample)
        if reason is not None:
            yield pos, {"error": reason, "detail": rec.path}
            continue
        try:
            yield pos, make_item(img, rec, transform, thumb_size)
        except Exception as exc:  # a bad image is skipped and counted, never fatal
            yield pos, {"error": "corrupt_image", "detail": f"{rec.path}: {exc}"}
    if counts.get("broken_shard_errors"):
        yield -1, {"error": "broken_shard", "detail": f"{url}: {counts['broken_shard_errors']} read error(s)"}


def make_source(images: str | None = None, shards: str | None = None, parquet: str | None = None,
                transform: Callable | None = None, thumb_size: int = 192) -> tuple[torch.utils.data.Dataset, int | None]:
    """The dataset for exactly one of ``images`` / ``shards`` / ``parquet``, and its length if known."""
    given = [x for x in (images, shards, parquet) if x]
    if len(given) != 1:
        raise UserError("index: give exactly one of --images DIR, --shards PATTERN, --parquet FILE")
    if images:
        ds = RecordDataset(folder_records(images), transform, thumb_size)
        return ds, len(ds)
    if parquet:
        ds = RecordDataset(parquet_records(parquet), transform, thumb_size)
        return ds, len(ds)
    return ShardDataset(resolve_shards(shards), transform, thumb_size), None
