"""Extract from Common Crawl WAT files (cc2dataset's input): same rows and rules as the HTML path."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd

from openalign.corpus.extract import ExtractConfig, extract, input_kind

PAGE_URL = "http://site.test/dir/page.html"
BASE = "../assets/"  # relative <base href>: resolves against the page URL
LINKS = [
    {"path": "IMG@/src", "url": "/img/a.jpg", "alt": "  a red   car "},
    {"path": "IMG@/src", "url": "b.png", "alt": "blue sky over hills"},
    {"path": "IMG@/src", "url": "https://cdn.example.org/c.jpg", "alt": "absolute one"},
    {"path": "IMG@/src", "url": "/img/noalt.jpg"},  # no alt: skipped, counted
    {"path": "IMG@/src", "url": "javascript:void(0)", "alt": "script src"},  # non-http: skipped, counted
    {"path": "A@/href", "url": "/about.html", "text": "about us"},  # not an image
    {"path": "IMG@/src", "url": "d.jpg", "alt": "caf\u00e9 & cr\u00e8me"},
]
EXPECTED = {
    ("http://site.test/img/a.jpg", "a red car", PAGE_URL),
    ("http://site.test/assets/b.png", "blue sky over hills", PAGE_URL),
    ("https://cdn.example.org/c.jpg", "absolute one", PAGE_URL),
    ("http://site.test/assets/d.jpg", "café & crème", PAGE_URL),
}
OTHER_URL = "https://other.test/x/y.html"  # a page without <base>
OTHER_ROW = ("https://other.test/x/pic.jpg", "a plain picture", OTHER_URL)


def _envelope(url: str, links: list[dict] | None, base: str | None = None) -> dict:
    """A WAT metadata record's JSON, in Common Crawl's layout (trimmed to what matters)."""
    env: dict = {"Format": "WARC", "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": url}}
    if links is not None:
        head = {"Title": "t", **({"Base": base} if base else {})}
        env["Payload-Metadata"] = {"Actual-Content-Type": "application/http; msgtype=response",
                                   "HTTP-Response-Metadata": {"Headers": {"Content-Type": "text/html"},
                                                              "HTML-Metadata": {"Head": head, "Links": links}}}
    return {"Container": {"Filename": "x.warc.gz", "Compressed": True}, "Envelope": env}


def _write_wat(path: Path, payloads: list[tuple[str, bytes]]) -> list[int]:
    """Metadata records with warcio's WARCWriter (gzip, one member each); returns each record's end offset."""
    from warcio.warcwriter import WARCWriter

    ends = []
    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        w.write_record(w.create_warcinfo_record(path.name, {"software": "test"}))
        for url, body in payloads:
            w.write_record(w.create_warc_record(url, "metadata", payload=io.BytesIO(body),
                                                warc_content_type="application/json"))
            ends.append(fh.tell())
    return ends


def _standard_wat(path: Path) -> list[int]:
    return _write_wat(path, [
        (PAGE_URL, json.dumps(_envelope(PAGE_URL, LINKS, BASE)).encode()),
        ("http://site.test/req", json.dumps(_envelope("http://site.test/req", None)).encode()),  # a request: no HTML
        ("http://site.test/bad", b"this is not JSON {"),
        (OTHER_URL, json.dumps(_envelope(OTHER_URL, [{"path": "IMG@/src", "url": "pic.jpg",
                                                       "alt": "a plain picture"}])).encode()),
    ])


def _rows(path: Path) -> set[tuple]:
    df = pd.read_parquet(path)
    assert list(df.columns) == ["url", "text", "page_url"]
    return set(map(tuple, df.itertuples(index=False)))


def test_wat_rows_and_counts(tmp_path: Path) -> None:
    wat = tmp_path / "CC-MAIN-x.warc.wat.gz"
    _standard_wat(wat)
    assert input_kind(wat) == "wat"
    stats = extract([wat], tmp_path / "c.parquet")
    assert _rows(tmp_path / "c.parquet") == EXPECTED | {OTHER_ROW}
    assert stats.pages == 2 and stats.candidates == 5
    assert dict(stats.skipped) == {"img_without_alt": 1, "non_http_src": 1, "bad_wat_record": 1}
    report = json.loads((tmp_path / "extract_stats.json").read_text())
    assert report["skipped"]["bad_wat_record"] == 1 and report["broken_files"] == []


def test_wat_detected_by_content(tmp_path: Path) -> None:
    """A WAT named like a WARC: its JSON metadata records are read all the same."""
    (tmp_path / "crawl").mkdir()
    wat = tmp_path / "crawl" / "renamed.warc.gz"
    _standard_wat(wat)
    extract([tmp_path / "crawl"], tmp_path / "c.parquet")
    assert _rows(tmp_path / "c.parquet") == EXPECTED | {OTHER_ROW}


def test_wat_matches_html_path(tmp_path: Path) -> None:
    """The same page as HTML (via the HTML path) and as WAT links gives the same rows and counts."""
    imgs = "".join(f'<img src="{lk["url"]}"' + (f' alt="{lk["alt"].replace("&", "&amp;")}"' if "alt" in lk else "")
                   + ">" for lk in LINKS if lk["path"] == "IMG@/src")
    html = (f'<html><head><link rel="canonical" href="{PAGE_URL}"><base href="{BASE}"></head><body>{imgs}'
            '<a href="/about.html">about us</a></body></html>')
    (tmp_path / "page.html").write_text(html, encoding="utf-8")
    html_stats = extract([tmp_path / "page.html"], tmp_path / "h.parquet", stats_path=tmp_path / "h.json")
    _write_wat(tmp_path / "p.wat.gz", [(PAGE_URL, json.dumps(_envelope(PAGE_URL, LINKS, BASE)).encode())])
    wat_stats = extract([tmp_path / "p.wat.gz"], tmp_path / "w.parquet", stats_path=tmp_path / "w.json")
    assert _rows(tmp_path / "h.parquet") == _rows(tmp_path / "w.parquet") == EXPECTED
    assert pd.read_parquet(tmp_path / "h.parquet").equals(pd.read_parquet(tmp_path / "w.parquet"))  # order too
    assert html_stats.to_dict() == wat_stats.to_dict()


def test_alt_too_long_and_huge_record(tmp_path: Path) -> None:
    links = [{"path": "IMG@/src", "url": "/a.jpg", "alt": "x" * 50}, {"path": "IMG@/src", "url": "/b.jpg", "alt": "ok"}]
    _write_wat(tmp_path / "a.wat", [(PAGE_URL, json.dumps(_envelope(PAGE_URL, links)).encode()),
                                    ("http://h.test/", json.dumps(_envelope("http://h.test/", links + [
                                        {"path": "IMG@/src", "url": "/pad.jpg", "alt": "y" * 5000}])).encode())])
    stats = extract([tmp_path / "a.wat"], tmp_path / "c.parquet", ExtractConfig(max_alt_chars=20, max_page_bytes=4000))
    assert _rows(tmp_path / "c.parquet") == {("http://site.test/b.jpg", "ok", PAGE_URL)}
    assert stats.skipped["alt_too_long"] == 1 and stats.skipped["huge_page"] == 1


def test_truncated_wat_counted_rows_before_kept(tmp_path: Path) -> None:
    pad = [{"path": "A@/href", "url": f"/l{i}.html", "text": "link text " * 20} for i in range(40)]
    pages = [(f"http://t.test/{i}.html", json.dumps(_envelope(f"http://t.test/{i}.html", [
        {"path": "IMG@/src", "url": f"i{i}.jpg", "alt": f"picture number {i}"}] + pad)).encode()) for i in range(3)]
    mid = tmp_path / "mid.wat.gz"  # cut inside the third record
    ends = _write_wat(mid, pages)
    mid.write_bytes(mid.read_bytes()[: (ends[1] + ends[2]) // 2])
    between = tmp_path / "between.wat.gz"  # cut just after the second record: a few bytes of the third's gzip header
    ends = _write_wat(between, pages)
    between.write_bytes(between.read_bytes()[: ends[1] + 6])
    good = tmp_path / "good.wat.gz"
    _write_wat(good, pages[:1])
    stats = extract([mid, between, good], tmp_path / "c.parquet")
    df = pd.read_parquet(tmp_path / "c.parquet")
    rows = [(f"http://t.test/i{i}.jpg", f"picture number {i}", f"http://t.test/{i}.html") for i in (0, 1, 0, 1, 0)]
    assert list(map(tuple, df.itertuples(index=False))) == rows  # mid: 2 pages, between: 2 pages, good: 1
    assert stats.skipped["broken_wat"] == 2 and stats.broken_files == [str(mid), str(between)]
    assert json.loads((tmp_path / "extract_stats.json").read_text())["broken_files"] == [str(mid), str(between)]
