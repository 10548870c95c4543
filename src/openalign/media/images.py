"""Images on disk and in shards: which files are images, opening them, and RGB conversion.

The one home for image file extensions and for decoding bytes or paths into PIL images; every
reader (shards, folders, evaluation sets, search sources, dedup) goes through these.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

from PIL import Image

# Members of a WebDataset sample that hold its image (img2dataset's layout), in order of preference.
SHARD_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# Image files found in folders (evaluation sets, search sources, dedup references).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# What a broken image raises inside PIL (truncated, not an image, absurd size).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError)


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def list_images(root: str | Path) -> list[Path]:
    """Every image file under ``root`` (recursively), sorted by path."""
    return sorted(p for p in Path(root).rglob("*") if is_image_file(p) and p.is_file())


def iter_images(root: str | Path) -> Iterator[tuple[str, Path]]:
    """(path relative to ``root``, path) for every image file under ``root``."""
    root = Path(root)
    for p in list_images(root):
        yield p.relative_to(root).as_posix(), p


def open_image(src: str | Path | bytes) -> Image.Image:
    """Open and fully decode an image from a path or bytes (raises one of ``DECODE_ERRORS``)."""
    img = Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src)
    img.load()
    return img


def try_open_rgb(src: str | Path | bytes | None) -> Image.Image | None:
    """The image as RGB, or None when it is missing or cannot be decoded."""
    if src is None:
        return None
    try:
        return to_rgb(open_image(src))
    except DECODE_ERRORS:
        return None


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with transparent areas composited on white (logos, icons, PNG alt-images)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGB", img.size, (255, 255, 255))
        bg.paste(img, mask=img.split()[-1])
        return bg
    return img.convert("RGB")
