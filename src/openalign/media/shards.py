"""WebDataset shards in img2dataset's layout: expand patterns, iterate samples, group members, decode.

``KEY.jpg|jpeg|png|webp`` + ``KEY.txt`` (+ ``KEY.json``). Shard specs take brace patterns
(``shards/{00000..00099}.tar``), several specs joined by ``::``, local paths or ``pipe:`` URLs.
Streaming readers use the ``webdataset`` library (:func:`iter_samples`); stages that rewrite a
shard whole (download's post-filter, dedup) read it with :func:`read_tar_groups` and write it back
with :func:`write_tar`. Both split a member name into key and extension the same way as
webdataset: at the first dot of the file name, never of a folder name.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import braceexpand
from PIL import Image
from webdataset.tariterators import tarfile_samples

from openalign.errors import UserError
from openalign.media.images import DECODE_ERRORS, SHARD_IMAGE_EXTS, open_image

log = logging.getLogger(__name__)
Members = list[tuple[tarfile.TarInfo, bytes]]


def expand_urls(spec: str | list[str]) -> list[str]:
    """Expand brace patterns: ``a/{000..002}.tar::b.tar`` -> 4 urls."""
    specs = spec if isinstance(spec, list) else spec.split("::")
    urls: list[str] = []
    for s in specs:
        urls.extend(braceexpand.braceexpand(s.strip()))
    if not urls:
        raise ValueError(f"shard spec {spec!r} names no shards")
    return urls


def is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def resolve_shards(spec: str | list[str], flag: str = "--shards") -> list[str]:
    """Expand ``spec`` (a folder of ``*.tar`` or a pattern); every local shard must exist."""
    if isinstance(spec, (str, Path)) and Path(spec).is_dir():
        urls = sorted(str(p) for p in Path(spec).glob("*.tar"))
        if not urls:
            raise UserError(f"{flag} {spec}: no .tar shards in the folder; pass a shard folder or a pattern")
        return urls
    try:
        urls = expand_urls(spec if isinstance(spec, list) else str(spec))
    except ValueError as exc:
        raise UserError(f"{flag} {spec!r}: {exc}; pass a path or brace pattern like dir/{{00000..00009}}.tar") from None
    missing = [u for u in urls if is_local(u) and not Path(u).is_file()]
    if missing:
        raise UserError(f"{missing[0]}: shard not found ({len(missing)} of {len(urls)} missing); "
                        f"check the {flag} path or brace pattern")
    return urls


BROKEN_SHARD_PREFIX = "broken_shard:"  # + the shard's url: skip summaries name the damaged file


def iter_samples(urls: list[str], counts: Counter) -> Iterator[dict[str, Any]]:
    """Raw samples (undecoded) from ``urls`` in order; broken shards counted, named and skipped.

    ``counts["broken_shard_errors"]`` counts read errors; ``counts["broken_shard:<url>"]`` names
    the shard each came from (webdataset appends the url to the exception's arguments).
    """

    def handler(exn: Exception) -> bool:
        counts["broken_shard_errors"] += 1
        url = _url_of(exn, urls)
        if url is not None:
            counts[BROKEN_SHARD_PREFIX + url] += 1
        return True  # skip and go on

    yield from tarfile_samples(({"url": u} for u in urls), handler=handler)


def _url_of(exn: Exception, urls: list[str]) -> str | None:
    """The shard url webdataset attached to a read error (it appends it to ``exn.args``)."""
    known = set(urls)
    for arg in reversed(getattr(exn, "args", ()) or ()):
        if isinstance(arg, str) and arg in known:
            return arg
        if isinstance(arg, str) and " @ " in arg and arg.rsplit(" @ ", 1)[-1] in known:
            return arg.rsplit(" @ ", 1)[-1]
    return None


def sample_image_bytes(sample: dict[str, Any]) -> bytes | None:
    return next((sample[e] for e in SHARD_IMAGE_EXTS if e in sample), None)


def sample_caption(sample: dict[str, Any]) -> str | None:
    """The stripped ``KEY.txt`` caption; None when missing, "" when empty."""
    txt = sample.get("txt")
    if txt is None:
        return None
    return txt.decode("utf-8", errors="replace").strip() if isinstance(txt, bytes) else str(txt).strip()


def decode_image(sample: dict[str, Any]) -> tuple[Image.Image | None, str | None]:
    """(image, None) or (None, reason) for a sample's image member."""
    data = sample_image_bytes(sample)
    if data is None:
        return None, "missing_image"
    try:
        return open_image(data), None
    except DECODE_ERRORS:
        return None, "corrupt_image"


def decode_sample(sample: dict[str, Any]) -> tuple[Image.Image | None, str | None, str | None]:
    """Return (image, caption, reason_skipped) for training; reason is None for a good sample."""
    if sample_image_bytes(sample) is None:
        return None, None, "missing_image"
    caption = sample_caption(sample)
    if caption is None:
        return None, None, "missing_caption"
    if not caption:
        return None, None, "empty_caption"
    img, reason = decode_image(sample)
    return (img, caption, None) if reason is None else (None, None, reason)


def split_member(name: str) -> tuple[str, str]:
    """``dir.v2/000001.jpg`` -> (``dir.v2/000001``, ``jpg``): the key keeps its folders, the extension
    starts at the first dot of the file name (webdataset's rule)."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def read_tar_groups(shard: str | Path, counts: Counter) -> dict[str, Members]:
    """key -> members in file order; a broken tar keeps what was readable before the damage."""
    groups: dict[str, Members] = {}
    try:
        with tarfile.open(shard) as tar:
            for m in tar:
                if m.isfile():
                    groups.setdefault(split_member(m.name)[0], []).append((m, tar.extractfile(m).read()))
            end = tar.offset
        if _nonzero_after(shard, end):  # tarfile stops quietly at a damaged header
            raise tarfile.ReadError(f"unreadable data after byte {end}")
    except (tarfile.TarError, OSError, EOFError) as exc:
        log.warning("%s: broken shard (%s); kept the samples read before the damage", shard, exc)
        counts["broken_shard"] += 1
    return groups


def _nonzero_after(path: str | Path, offset: int) -> bool:
    with open(path, "rb") as fh:
        fh.seek(offset)
        while chunk := fh.read(1 << 20):
            if chunk.strip(b"\0"):
                return True
    return False


def group_image_bytes(members: Members) -> bytes | None:
    return next((b for m, b in members if split_member(m.name)[1] in SHARD_IMAGE_EXTS), None)


def group_meta(members: Members) -> dict[str, Any]:
    """The sample's ``KEY.json`` metadata ({} when missing or unreadable)."""
    for m, b in members:
        if split_member(m.name)[1] == "json":
            try:
                return json.loads(b)
            except (json.JSONDecodeError, UnicodeDecodeError):
                return {}
    return {}


def write_tar(path: str | Path, groups: dict[str, Members]) -> None:
    with tarfile.open(path, "w") as tar:
        for members in groups.values():
            for info, data in members:
                tar.addfile(info, io.BytesIO(data))
