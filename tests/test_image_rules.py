"""Image rules after download, "image" by URL and by content hash, against a plain-Python reference."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from openalign.cli.main import main
from openalign.corpus.image_rules import (
    STATS_FILE,
    ImageRulesConfig,
    image_rules_shards,
)

CFG = ImageRulesConfig(max_images_per_text=2, max_texts_per_image=2)


def _pic(n: int) -> bytes:
    return b"\xff\xd8fake-jpeg-" + bytes([n]) * 40  # bytes only: the stage never decodes


def _write_shard(path: Path, samples: list[dict], garbage: bool = False) -> None:
    with tarfile.open(path, "w") as tar:
        for s in samples:
            for ext, data in (("jpg", s["bytes"]), ("txt", s["text"].encode()), ("json", json.dumps(s["meta"]).encode())):
                info = tarfile.TarInfo(f"{s['key']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    if garbage:  # a damaged tail: readable samples are kept, the shard is counted broken
        with open(path, "r+b") as fh:
            fh.seek(-1024, 2)
            fh.write(b"\x01" * 512)


def _corpus(original_sha: bool) -> list[list[dict]]:
    """Three shards. Picture 1 sits behind 3 CDN urls with 3 texts (only content sees > 2 texts);
    'shared words' goes with 3 different pictures (both identities drop it); 'one cdn picture'
    goes with picture 9 behind 3 urls (url drops it, content does not); the rest are plain."""
    rows = [(1, "http://cdn-a/p1.jpg", "first caption"), (1, "http://cdn-b/p1.jpg", "second caption"),
            (1, "http://cdn-c/p1.jpg", "third caption"),
            (2, "http://x/2.jpg", "shared words"), (3, "http://x/3.jpg", "shared words"),
            (4, "http://x/4.jpg", "shared words"),
            (9, "http://a/9.jpg", "one cdn picture"), (9, "http://b/9.jpg", "one cdn picture"),
            (9, "http://c/9.jpg", "one cdn picture"),
            (5, "http://x/5.jpg", "plain five"), (6, "http://x/6.jpg", "plain six"),
            (7, "http://x/7.jpg", "plain seven"), (7, "http://x/7.jpg", "plain seven again")]
    samples = []
    for i, (pic, url, text) in enumerate(rows):
        data = _pic(pic)
        meta = {"url": url, "caption": text}
        if original_sha:  # img2dataset's hash of the original download, here of a notional original
            meta["sha256"] = hashlib.sha256(b"original" + data).hexdigest()
        samples.append({"key": f"{i:09d}", "bytes": data, "text": text, "meta": meta})
    return [samples[0:5], samples[5:9], samples[9:]]


def _reference(samples: list[dict], cfg: ImageRulesConfig) -> tuple[set[str], set[str]]:
    """Keys dropped by the URL identity and by the content identity, counted the plain way."""

    def content(s: dict) -> str:
        return s["meta"].get("sha256") or hashlib.sha256(s["bytes"]).hexdigest()

    def drops(ident) -> set[str]:
        out = set()
        for s in samples:
            imgs = {ident(o) for o in samples if o["text"] == s["text"]}
            texts = {o["text"] for o in samples if ident(o) == ident(s)}
            if len(imgs) > cfg.max_images_per_text or len(texts) > cfg.max_texts_per_image:
                out.add(s["key"])
        return out

    return drops(lambda s: s["meta"]["url"]), drops(content)


@pytest.mark.parametrize("original_sha", [True, False])
def test_matches_reference_and_counts_content_extra(tmp_path: Path, original_sha: bool) -> None:
    shards = _corpus(original_sha)
    for i, s in enumerate(shards):
        _write_shard(tmp_path / f"{i:05d}.tar", s)
    flat = [s for sh in shards for s in sh]
    by_url, by_content = _reference(flat, CFG)
    stats = image_rules_shards(str(tmp_path), tmp_path / "out", CFG)

    kept = set()
    for i in range(3):
        with tarfile.open(tmp_path / "out" / f"{i:05d}.tar") as tar:
            names = tar.getnames()
        keys = {n.split(".")[0] for n in names}
        assert all(f"{k}.{e}" in names for k in keys for e in ("jpg", "txt", "json"))  # whole samples
        kept |= keys
    assert kept == {s["key"] for s in flat} - by_url - by_content
    assert by_content - by_url == {"000000000", "000000001", "000000002"}  # picture 1's three urls
    assert stats.content_only == 3 and stats.removed_by == {"url": len(by_url), "content": len(by_content)}
    assert (stats.samples_in, stats.samples_out) == (13, len(kept))
    assert stats.by_rule["url:text_shared"] == 6 and stats.by_rule["content:image_many_texts"] == 3
    assert stats.hash_source == {("original_sha256" if original_sha else "stored_bytes"): 13}
    saved = json.loads((tmp_path / "out" / STATS_FILE).read_text())
    assert saved["content_only"] == 3 and saved["distinct"] == {"url": 12, "content": 8}


def test_default_thresholds_keep_everything_and_broken_shard_counted(tmp_path: Path) -> None:
    shards = _corpus(True)
    _write_shard(tmp_path / "00000.tar", shards[0] + shards[1])
    _write_shard(tmp_path / "00001.tar", shards[2], garbage=True)
    stats = image_rules_shards(str(tmp_path), tmp_path / "out")
    assert stats.removed == 0 and stats.skipped["broken_shard"] == 1
    assert stats.samples_out == stats.samples_in >= 9
    with tarfile.open(tmp_path / "out" / "00001.tar") as tar:  # rewritten cleanly
        assert len(tar.getnames()) == 3 * (stats.samples_in - 9)


def test_cli_prints_stats(tmp_path: Path, capsys) -> None:
    for i, s in enumerate(_corpus(False)):
        _write_shard(tmp_path / f"{i:05d}.tar", s)
    rc = main(["data", "image-rules", str(tmp_path), "--out", str(tmp_path / "o"),
               "--max-images-per-text", "2", "--max-texts-per-image", "2"])
    out = capsys.readouterr().out
    assert rc == 0 and "content only (more than the url rule) 3" in out
    assert json.loads((tmp_path / "o" / STATS_FILE).read_text())["samples_out"] == 4
