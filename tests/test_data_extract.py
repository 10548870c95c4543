"""Extract: HTML files, WARC files and tables -> candidates Parquet, with skip counts."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest

from openalign.corpus.extract import ExtractConfig, extract
from openalign.errors import UserError

PAGE = """<!doctype html><html><head><title>t</title>{base}</head><body>
<img src="/img/a.jpg" alt="  a red   car ">
<img src="b.png" alt="blue sky over hills">
<img src="https://cdn.example.org/c.jpg" alt="absolute one">
<img src="data:image/png;base64,AAAA" alt="inline data">
<img src="javascript:void(0)" alt="script src">
<img src="/img/noalt.jpg">
<img src="/img/emptyalt.jpg" alt="   ">
<img alt="no source at all">
<p>unclosed <div><img src='d.jpg' alt='caf\u00e9 &amp; cr\u00e8me'>
</body></html>"""


def _page(base: str = "") -> str:
    return PAGE.format(base=base)


def _expected(page_url: str, base: str | None = None) -> set[tuple[str, str, str]]:
    from urllib.parse import urljoin

    b = urljoin(page_url, base) if base else page_url
    return {(urljoin(b, "/img/a.jpg"), "a red car", page_url), (urljoin(b, "b.png"), "blue sky over hills", page_url),
            ("https://cdn.example.org/c.jpg", "absolute one", page_url), (urljoin(b, "d.jpg"), "café & crème", page_url)}


def _rows(path: Path) -> set[tuple]:
    df = pd.read_parquet(path)
    assert list(df.columns) == ["url", "text", "page_url"]
    return set(map(tuple, df.itertuples(index=False)))


def _write_warc(path: Path, pages: list[tuple[str, bytes, str]]) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        for url, body, ctype in pages:
            headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.0")
            w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers))


def test_html_files_resolve_src_and_count_skips(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "sub").mkdir(parents=True)
    (site / "sub" / "p1.html").write_text(_page(), encoding="utf-8")
    (site / "p2.html").write_text(_page('<base href="https://static.example.com/assets/">'), encoding="utf-8")
    (site / "bad.html").write_bytes(b"<html><img src='x.jpg' alt='caf\xe9 latin1 no charset'>\xff\xfe")
    (site / "huge.html").write_text("<img src='a.jpg' alt='huge page'>" + "x" * 5000)
    out = tmp_path / "cand.parquet"
    stats = extract([site], out, ExtractConfig(page_url_prefix="https://www.example.com/", max_page_bytes=4000))
    exp = _expected("https://www.example.com/sub/p1.html") | _expected(
        "https://www.example.com/p2.html", "https://static.example.com/assets/")
    assert _rows(out) == exp
    sk = stats.skipped
    assert (sk["undecodable_page"], sk["huge_page"]) == (1, 1)
    assert (sk["img_without_alt"], sk["img_without_src"], sk["non_http_src"]) == (4, 2, 4)
    report = json.loads((tmp_path / "extract_stats.json").read_text())
    assert report["candidates"] == 8 and report["pages"] == 2


def test_declared_charset_and_canonical_url(tmp_path: Path) -> None:
    body = ("<html><head><meta charset='iso-8859-1'><link rel='canonical' href='http://x.org/a/'></head>"
            "<img src='i.jpg' alt='caf\u00e9 au lait'></html>").encode("latin-1")
    (tmp_path / "p.htm").write_bytes(body)
    extract([tmp_path / "p.htm"], tmp_path / "o.parquet")
    assert _rows(tmp_path / "o.parquet") == {("http://x.org/a/i.jpg", "café au lait", "http://x.org/a/")}


def test_warc_pages(tmp_path: Path) -> None:
    warc = tmp_path / "crawl.warc.gz"
    _write_warc(warc, [
        ("http://site.test/dir/page.html", _page().encode(), "text/html; charset=utf-8"),
        ("http://site.test/img.jpg", b"\xff\xd8 not html", "image/jpeg"),
        ("http://site.test/latin.html", "<img src='l.jpg' alt='d\u00e9j\u00e0 vu'>".encode("cp1252"),
         "text/html; charset=windows-1252"),
        ("http://site.test/broken.html", b"<img src='q.jpg' alt='bad \xff\xfe bytes'>", "text/html"),
        ("http://site.test/nul.html", b"<img src='n.jpg' alt='nul\x00byte'>", "text/html"),
    ])
    stats = extract([warc], tmp_path / "c.parquet")
    exp = _expected("http://site.test/dir/page.html") | {
        ("http://site.test/l.jpg", "déjà vu", "http://site.test/latin.html")}
    assert _rows(tmp_path / "c.parquet") == exp
    assert stats.skipped["undecodable_page"] == 1 and stats.skipped["broken_html"] == 1


def test_truncated_warc_counted_not_crash(tmp_path: Path) -> None:
    warc = tmp_path / "t.warc.gz"
    _write_warc(warc, [(f"http://s.test/{i}.html", _page().encode(), "text/html")for i in range(3)])
    data = warc.read_bytes()
    warc.write_bytes(data[: len(data) * 2 // 3])
    (tmp_path / "garbage.warc").write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4)
    stats = extract([warc, tmp_path / "garbage.warc"], tmp_path / "c.parquet")
    assert stats.skipped["broken_warc"] == 1 and stats.pages >= 1


def test_tables_cc2dataset_csv_jsonl(tmp_path: Path) -> None:
    cc = pd.DataFrame({"url": ["http://a/1.jpg", "http://a/2.jpg", None, "http://a/4.jpg"],
                       "alt": ["one  two three", "", "no url", "four"],
                       "page_url": ["http://a/", "http://a/", "http://a/", None], "uid": ["u1", "u2", "u3", "u4"]})
    cc.to_parquet(tmp_path / "cc.parquet")
    (tmp_path / "t.csv").write_text("url,caption\nhttp://b/1.jpg,\"hello, world\"\n")
    (tmp_path / "t.jsonl").write_text('{"url": "http://c/1.jpg", "text": "json row"}\nnot json\n\n')
    stats = extract([tmp_path / "cc.parquet", tmp_path / "t.csv", tmp_path / "t.jsonl"], tmp_path / "o.parquet")
    assert _rows(tmp_path / "o.parquet") == {
        ("http://a/1.jpg", "one two three", "http://a/"), ("http://a/4.jpg", "four", None),
        ("http://b/1.jpg", "hello, world", None), ("http://c/1.jpg", "json row", None)}
    assert dict(stats.skipped) == {"row_without_alt": 1, "row_without_url": 1, "bad_table_row": 1}


def test_bad_input_is_one_line_user_error(tmp_path: Path) -> None:
    pd.DataFrame({"link": ["x"], "alt": ["y"]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(UserError) as e:
        extract([tmp_path / "t.parquet"], tmp_path / "o.parquet")
    msg = str(e.value)
    assert "t.parquet" in msg and "'url'" in msg and "--url-column" in msg and "\n" not in msg
    assert not (tmp_path / "o.parquet").exists()
    with pytest.raises(UserError, match="nothing.txt"):
        extract([tmp_path / "nothing.txt"], tmp_path / "o.parquet")
