"""The paper's image-frequency rules again after download, with "image" meaning the picture, not the URL.

The filter stage (``filter.py``) can only see URLs, so there "image" means a URL string: one picture
served from many CDN URLs counts as many images and escapes both rules. After download the bytes
are known, so this stage applies the same two rules (Jia et al. 2021) with two identities:

- ``url``: the sample's ``url`` from ``KEY.json`` (what the filter used);
- ``content``: an exact-duplicate hash of the picture. img2dataset records ``sha256`` of the
  ORIGINAL downloaded bytes in ``KEY.json`` (its ``compute_hash="sha256"`` default, computed before
  resizing and re-encoding); we use it when present. Otherwise we hash the STORED image bytes: the
  re-encoded thumbnail of one original under one set of download settings is the same bytes, but a
  stored hash cannot match an original hash, so the stats count which source each sample used.

Rules, both identities, over the shards as a whole (a sample is one (image, alt-text) pair):

1. ``text_shared``: the alt-text belongs to more than ``max_images_per_text`` distinct images;
2. ``image_many_texts``: the image has more than ``max_texts_per_image`` distinct alt-texts.

A sample is dropped when either rule fires under either identity. The stats say how many samples
each identity's rules remove and how many MORE the content identity removed beyond the URL one
(``content_only``). Shards are rewritten into ``out_dir`` under their names, whole samples kept
or dropped, each written atomically; a broken shard keeps what was readable and is counted.

Memory: one small record per sample (two hashes and the text), read in a first pass; a second pass
rewrites the shards.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from openalign.errors import UserError
from openalign.io import atomic_write_text, atomic_write_with
from openalign.media.shards import (
    Members,
    group_image_bytes,
    group_meta,
    read_tar_groups,
    resolve_shards,
    split_member,
    write_tar,
)

STATS_FILE = "image_rules_stats.json"
IDENTITIES = ("url", "content")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ImageRulesConfig:
    max_images_per_text: int = field(default=10, metadata={"help": "drop alt-texts shared by more images"})
    max_texts_per_image: int = field(default=1000, metadata={"help": "drop images with more alt-texts"})


@dataclass
class ImageRulesStats:
    config: dict[str, Any]
    samples_in: int = 0
    samples_out: int = 0
    removed: int = 0
    removed_by: dict[str, int] = field(default_factory=dict)  # "url" / "content" -> samples that identity drops
    by_rule: Counter = field(default_factory=Counter)  # "url:text_shared", "content:image_many_texts", ...
    content_only: int = 0  # dropped by the content identity and not by the URL identity
    distinct: dict[str, int] = field(default_factory=dict)  # identity -> distinct images
    hash_source: Counter = field(default_factory=Counter)  # "original_sha256" / "stored_bytes" / "no_image"
    skipped: Counter = field(default_factory=Counter)  # broken shards

    def to_json(self) -> str:
        d = asdict(self)
        for k in ("by_rule", "hash_source", "skipped"):
            d[k] = dict(getattr(self, k))
        return json.dumps(d, indent=2)


@dataclass(frozen=True)
class Record:
    shard: int
    key: str
    text: str | None
    url: str
    content: str


def sample_text(members: Members) -> str | None:
    """The ``KEY.txt`` alt-text as written (the filter grouped texts exactly, so no normalising)."""
    for m, b in members:
        if split_member(m.name)[1] == "txt":
            return b.decode("utf-8", errors="replace")
    return None


def content_id(members: Members, meta: dict[str, Any], stats: ImageRulesStats | None = None) -> str:
    """img2dataset's sha256 of the original bytes, else sha256 of the stored image bytes."""
    sha = meta.get("sha256")
    if isinstance(sha, str) and _SHA256.match(sha.lower()):
        source, value = "original_sha256", "o:" + sha.lower()
    else:
        data = group_image_bytes(members)
        source = "stored_bytes" if data is not None else "no_image"
        value = "s:" + hashlib.sha256(data).hexdigest() if data is not None else ""
    if stats is not None:
        stats.hash_source[source] += 1
    return value


def collect(shards: list[str], stats: ImageRulesStats) -> list[Record]:
    """First pass: one record per sample. A sample without url or image is its own image."""
    records: list[Record] = []
    for i, shard in enumerate(shards):
        for key, members in read_tar_groups(shard, stats.skipped).items():
            meta = group_meta(members)
            unique = f"{i}/{key}"  # no identity known: an image of its own
            url = meta.get("url")
            content = content_id(members, meta, stats)
            records.append(Record(i, key, sample_text(members), url if isinstance(url, str) and url else "#" + unique,
                                  content or "#" + unique))
    return records


def dropped_by(records: list[Record], cfg: ImageRulesConfig, identity: str) -> dict[int, str]:
    """Record index -> the first rule that drops it when "image" means ``identity``."""
    images_of_text: dict[str, set[str]] = defaultdict(set)
    texts_of_image: dict[str, set[str | None]] = defaultdict(set)
    for r in records:
        img = getattr(r, identity)
        texts_of_image[img].add(r.text)
        if r.text is not None:
            images_of_text[r.text].add(img)
    out: dict[int, str] = {}
    for n, r in enumerate(records):
        img = getattr(r, identity)
        if r.text is not None and len(images_of_text[r.text]) > cfg.max_images_per_text:
            out[n] = "text_shared"
        elif len(texts_of_image[img]) > cfg.max_texts_per_image:
            out[n] = "image_many_texts"
    return out


def image_rules_shards(shards: str | list[str], out_dir: str | Path, cfg: ImageRulesConfig = ImageRulesConfig(),
                       on_shard: Callable[[str], None] | None = None) -> ImageRulesStats:
    """Copy ``shards`` into ``out_dir`` without the samples the image rules drop; write the stats file."""
    urls = resolve_shards(shards if isinstance(shards, list) else str(shards))
    names = [Path(u).name for u in urls]
    if len(set(names)) != len(names):
        raise UserError(f"{shards}: two shards share a file name; image-rules writes them under their names "
                        "into one folder")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = ImageRulesStats(config=asdict(cfg))
    records = collect(urls, stats)
    drops = {ident: dropped_by(records, cfg, ident) for ident in IDENTITIES}
    for ident, d in drops.items():
        stats.removed_by[ident] = len(d)
        stats.by_rule.update(f"{ident}:{rule}" for rule in d.values())
        stats.distinct[ident] = len({getattr(r, ident) for r in records})
    stats.content_only = len(drops["content"].keys() - drops["url"].keys())
    drop_keys: dict[int, set[str]] = defaultdict(set)
    for n in drops["url"].keys() | drops["content"].keys():
        drop_keys[records[n].shard].add(records[n].key)
    stats.samples_in, stats.removed = len(records), sum(len(v) for v in drop_keys.values())
    stats.samples_out = stats.samples_in - stats.removed
    for i, url in enumerate(urls):
        groups = read_tar_groups(url, Counter())  # already counted in the first pass
        kept = {k: v for k, v in groups.items() if k not in drop_keys[i]}
        atomic_write_with(out / names[i], lambda tmp, kept=kept: write_tar(tmp, kept))
        if on_shard:
            on_shard(url)
    atomic_write_text(out / STATS_FILE, stats.to_json())
    return stats


def format_image_rules_stats(stats: ImageRulesStats) -> str:
    lines = [f"samples in         {stats.samples_in:>10,}", f"samples kept       {stats.samples_out:>10,}",
             f"removed by url     {stats.removed_by.get('url', 0):>10,}",
             f"removed by content {stats.removed_by.get('content', 0):>10,}",
             f"content only (more than the url rule) {stats.content_only:,}",
             f"distinct images: {stats.distinct.get('url', 0):,} urls, {stats.distinct.get('content', 0):,} contents",
             f"content hashes from: {dict(stats.hash_source)}"]
    if stats.skipped:
        lines.append(f"skipped: {dict(stats.skipped)}")
    return "\n".join(lines)
