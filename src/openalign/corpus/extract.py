"""Image/alt-text candidates from HTML files, WARC/WAT files and URL+text tables, written as Parquet.

Every ``<img>`` with a non-empty ``alt`` gives one candidate: ``src`` resolved against the page's
``<base href>`` (itself resolved against the page URL), kept only when http(s). Alt-texts are
whitespace-normalised; nothing else is filtered here (that is ``filter``'s job).

Page URL: a WARC record's ``WARC-Target-URI``; for an HTML file, ``page_url_prefix`` + its path
relative to the input folder when given, else its ``<link rel=canonical>``, else its ``file://`` URI
(relative ``src`` then resolve to ``file://`` and are skipped as non-http).

Common Crawl WAT files (``.wat``/``.wat.gz``, or any archive's ``metadata`` records with a JSON
payload) give the same rows as the page's HTML would: each ``IMG@/src`` link of
``Envelope.Payload-Metadata.HTTP-Response-Metadata.HTML-Metadata.Links`` goes through the same
per-image rules as an ``<img>``, resolved against ``Head.Base`` and the ``WARC-Target-URI``.

Tables (Parquet, CSV, JSONL) need a URL column and a text column (``text``, ``alt`` or ``caption``);
cc2dataset's ``url, alt, page_url`` output is read as is.

Skipped and counted, never a crash: broken HTML, bytes that do not decode, pages over
``max_page_bytes``, images without alt/src, non-http srcs, WAT records that are not JSON, unreadable
files and table rows. A truncated or damaged WAT/WARC ends that file; it is counted and named in
``broken_files``, and the rows read before the damage are kept.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator
from urllib.parse import urljoin, urlsplit

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from openalign.errors import UserError
from openalign.io import atomic_write_text

log = logging.getLogger(__name__)

HTML_EXTS = (".html", ".htm", ".xhtml")
WARC_EXTS = (".warc", ".warc.gz", ".arc", ".arc.gz")
WAT_EXTS = (".wat", ".wat.gz")  # Common Crawl: NAME.warc.wat.gz
TABLE_EXTS = (".parquet", ".csv", ".jsonl", ".json", ".jsonl.gz", ".csv.gz")
COLUMNS = ("url", "text", "page_url")
_CHARSET_RE = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_\-:.]+)""", re.I)


@dataclass(frozen=True)
class ExtractConfig:
    max_page_bytes: int = field(default=5_000_000, metadata={"help": "pages above this many bytes are skipped"})
    max_alt_chars: int = 2000  # longer alts are truncated candidates of no use: skipped
    page_url_prefix: str | None = field(default=None, metadata={  # page URL = prefix + path relative to the input
        "help": "HTML files: page URL = prefix + path under the input folder"})
    url_column: str | None = field(default=None, metadata={"help": "tables: image URL column (default: url)"})
    text_column: str | None = field(default=None, metadata={
        "help": "tables: alt-text column (default: text, alt or caption)"})
    batch_rows: int = 50_000


@dataclass
class ExtractStats:
    files: int = 0
    pages: int = 0
    candidates: int = 0
    skipped: Counter = field(default_factory=Counter)
    broken_files: list[str] = field(default_factory=list)  # archives that ended early (truncated, damaged)

    def to_dict(self) -> dict:
        return {"files": self.files, "pages": self.pages, "candidates": self.candidates, "skipped": dict(self.skipped),
                "broken_files": list(self.broken_files)}


def input_kind(path: Path) -> str | None:
    name = path.name.lower()
    for kind, exts in (("wat", WAT_EXTS), ("warc", WARC_EXTS), ("html", HTML_EXTS), ("table", TABLE_EXTS)):
        if name.endswith(exts):
            return kind
    return None


def list_inputs(inputs: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """(file, root) pairs: files as given, folders walked recursively for known extensions."""
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found.extend((f, p) for f in sorted(p.rglob("*")) if f.is_file() and input_kind(f))
        elif p.is_file():
            if input_kind(p) is None:
                raise UserError(f"{p}: unknown input type; use .html/.htm, .warc(.gz), .wat(.gz), .parquet, .csv or .jsonl")
            found.append((p, p.parent))
        else:
            raise UserError(f"{p}: no such file or folder; pass HTML/WARC files, tables or folders of them")
    if not found:
        raise UserError(f"{', '.join(map(str, inputs))}: no HTML, WARC, WAT or table files found")
    return found


# ---------------------------------------------------------------- HTML


def decode_page(body: bytes, declared: str | None, stats: ExtractStats) -> str | None:
    """Bytes -> text with the declared charset (HTTP header or <meta>), else strict UTF-8."""
    if declared is None:
        m = _CHARSET_RE.search(body[:4096])
        declared = m.group(1).decode("ascii", "ignore") if m else None
    try:
        return body.decode(declared or "utf-8")
    except (UnicodeDecodeError, LookupError):
        if declared and declared.lower().replace("-", "") != "utf8":
            try:
                return body.decode("utf-8")
            except UnicodeDecodeError:
                pass
        stats.skipped["undecodable_page"] += 1
        return None


def images_from_html(html: str, page_url: str, stats: ExtractStats, max_alt_chars: int) -> Iterator[tuple[str, str]]:
    """(absolute http(s) src, normalised alt) for each usable <img>."""
    from selectolax.lexbor import LexborHTMLParser  # lazy: the optional [web] extra

    if "\x00" in html:
        stats.skipped["broken_html"] += 1
        return
    try:
        tree = LexborHTMLParser(html)
        base_node = tree.css_first("base[href]")
        base = page_base(page_url, base_node.attributes.get("href") if base_node else None)
        imgs = tree.css("img")
    except Exception:
        stats.skipped["broken_html"] += 1
        return
    for img in imgs:
        cand = image_candidate(base, img.attributes.get("src"), img.attributes.get("alt"), stats, max_alt_chars)
        if cand is not None:
            yield cand


def page_base(page_url: str, base_href: str | None) -> str:
    """The URL relative srcs resolve against: ``<base href>`` (itself relative to the page), else the page."""
    href = (base_href or "").strip()
    return urljoin(page_url, href) if href else page_url


def image_candidate(base: str, src: str | None, alt: str | None, stats: ExtractStats,
                    max_alt_chars: int) -> tuple[str, str] | None:
    """One image's (absolute http(s) url, normalised alt), or None with the reason counted.

    The one place the per-image rules live: HTML ``<img>`` and WAT ``IMG@/src`` links both come here.
    """
    alt = " ".join((alt or "").split())
    src = (src or "").strip()
    if not alt:
        stats.skipped["img_without_alt"] += 1
    elif not src:
        stats.skipped["img_without_src"] += 1
    elif len(alt) > max_alt_chars:
        stats.skipped["alt_too_long"] += 1
    else:
        url = _resolve(base, src)
        if url is not None:
            return url, alt
        stats.skipped["non_http_src"] += 1
    return None


def _resolve(base: str, src: str) -> str | None:
    try:
        url = urljoin(base, src)
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        return None
    return url if scheme in ("http", "https") else None


def _page_rows(body: bytes, page_url: str, declared: str | None, cfg: ExtractConfig,
               stats: ExtractStats) -> Iterator[tuple[str, str, str]]:
    if len(body) > cfg.max_page_bytes:
        stats.skipped["huge_page"] += 1
        return
    html = decode_page(body, declared, stats)
    if html is None:
        return
    stats.pages += 1
    for url, alt in images_from_html(html, page_url, stats, cfg.max_alt_chars):
        yield url, alt, page_url


def _html_file_url(path: Path, root: Path, body: bytes, cfg: ExtractConfig) -> str:
    if cfg.page_url_prefix:
        return cfg.page_url_prefix.rstrip("/") + "/" + path.relative_to(root).as_posix()
    m = re.search(rb"""<link[^>]+rel=["']?canonical["']?[^>]*href=["']([^"']+)["']""", body[:65536], re.I)
    if m:
        return m.group(1).decode("utf-8", "replace")
    return path.resolve().as_uri()


def rows_from_html_file(path: Path, root: Path, cfg: ExtractConfig, stats: ExtractStats) -> Iterator[tuple[str, str, str]]:
    if path.stat().st_size > cfg.max_page_bytes:
        stats.skipped["huge_page"] += 1
        return
    body = path.read_bytes()
    yield from _page_rows(body, _html_file_url(path, root, body, cfg), None, cfg, stats)


def rows_from_warc(path: Path, cfg: ExtractConfig, stats: ExtractStats) -> Iterator[tuple[str, str, str]]:
    """HTML responses and WAT metadata records of a WARC, ARC or WAT file.

    A truncated or damaged archive ends the file: counted (``broken_wat``/``broken_warc``) and named
    in ``stats.broken_files``; rows from the records before the damage are kept.
    """
    from warcio.archiveiterator import ArchiveIterator  # lazy: the optional [web] extra

    kind = "wat" if input_kind(path) == "wat" else "warc"
    with open(path, "rb") as fh:
        try:
            records = ArchiveIterator(fh, arc2warc=True)
            end = 0
            for record in records:
                if record.rec_type == "response" and record.http_headers is not None:
                    yield from _response_rows(record, cfg, stats)
                elif record.rec_type == "metadata" and (kind == "wat" or "json" in _ctype(record)):
                    kind = "wat"
                    yield from _wat_rows(record, cfg, stats)
                if kind == "wat":
                    records.read_to_end(record)
                    end = records.get_record_offset() + records.get_record_length()
            if kind == "wat":  # a gzip cut between members ends silently in warcio: leftover bytes tell
                fh.seek(end)
                if fh.read(4096).strip():
                    raise _Truncated(f"{path.stat().st_size - end} bytes after the last whole record")
        except Exception as exc:  # truncated gzip, bad record headers
            log.warning("%s: archive unreadable after %d pages (%s)", path, stats.pages, exc)
            stats.skipped[f"broken_{kind}"] += 1
            stats.broken_files.append(str(path))


class _Truncated(Exception):
    """A WAT record or file that ends before its declared length."""


def _ctype(record) -> str:
    return (record.rec_headers.get_header("Content-Type") or "").lower()


def _response_rows(record, cfg: ExtractConfig, stats: ExtractStats) -> Iterator[tuple[str, str, str]]:
    ctype = record.http_headers.get_header("Content-Type") or ""
    if "html" not in ctype.lower():
        return
    page_url = record.rec_headers.get_header("WARC-Target-URI") or ""
    body = record.content_stream().read(cfg.max_page_bytes + 1)
    m = re.search(r"charset=([A-Za-z0-9_\-:.]+)", ctype, re.I)
    yield from _page_rows(body, page_url, m.group(1) if m else None, cfg, stats)


def _wat_rows(record, cfg: ExtractConfig, stats: ExtractStats) -> Iterator[tuple[str, str, str]]:
    """One WAT metadata record (cc2dataset's input) -> rows, by the same per-image rules as HTML."""
    body = record.content_stream().read(cfg.max_page_bytes + 1)
    declared = record.rec_headers.get_header("Content-Length")
    if declared and declared.isdigit() and len(body) < min(int(declared), cfg.max_page_bytes + 1):
        raise _Truncated(f"record of {declared} bytes ends after {len(body)}")
    if len(body) > cfg.max_page_bytes:
        stats.skipped["huge_page"] += 1
        return
    try:
        meta = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict) or not isinstance(meta.get("Envelope"), dict):
        stats.skipped["bad_wat_record"] += 1
        return
    env = meta["Envelope"]
    html = _dig(env, "Payload-Metadata", "HTTP-Response-Metadata", "HTML-Metadata")
    if not isinstance(html, dict):
        return  # request, warcinfo, non-HTML response: nothing to take, as for WARC
    page_url = str(_dig(env, "WARC-Header-Metadata", "WARC-Target-URI")
                   or record.rec_headers.get_header("WARC-Target-URI") or "")
    links = html.get("Links") or []
    base_href = _dig(html, "Head", "Base")
    try:
        base = page_base(page_url, base_href if isinstance(base_href, str) else None)
    except ValueError:
        stats.skipped["bad_wat_record"] += 1
        return
    stats.pages += 1
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("path") == "IMG@/src":
            cand = image_candidate(base, _str(link.get("url")), _str(link.get("alt")), stats, cfg.max_alt_chars)
            if cand is not None:
                yield (*cand, page_url)


def _dig(obj: object, *keys: str) -> object:
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


# ---------------------------------------------------------------- tables


def _table_columns(path: Path, names: list[str], cfg: ExtractConfig) -> tuple[str, str, str | None]:
    url = cfg.url_column or "url"
    text = cfg.text_column or next((c for c in ("text", "alt", "caption") if c in names), "text")
    for col, flag in ((url, "--url-column"), (text, "--text-column")):
        if col not in names:
            raise UserError(f"{path}: field {col!r} missing (columns: {', '.join(names)}); pass {flag} NAME")
    return url, text, "page_url" if "page_url" in names else None


def _table_batches(path: Path, cfg: ExtractConfig) -> Iterator[tuple[list[str], Iterator[dict]]]:
    """(column names, record dict iterator) for a Parquet, CSV or JSONL table."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        return names, (r for b in pf.iter_batches(batch_size=cfg.batch_rows) for r in b.to_pylist())
    if ".csv" in name:
        reader = pacsv.open_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True,
                                                                           column_types=None))
        names = reader.schema.names
        return names, (r for b in reader for r in b.to_pylist())
    return _jsonl_records(path)


def _jsonl_records(path: Path) -> tuple[list[str], Iterator[dict]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        first = next((line for line in fh if line.strip()), None)
    if first is None:
        return [], iter(())
    try:
        names = list(json.loads(first).keys())
    except (json.JSONDecodeError, AttributeError):
        raise UserError(f"{path}: first line is not a JSON object; write one {{\"url\": ..., \"text\": ...}} per line")

    def records() -> Iterator[dict]:
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        rec = None
                    yield rec if isinstance(rec, dict) else {"__bad__": True}

    return names, records()


def rows_from_table(path: Path, cfg: ExtractConfig, stats: ExtractStats) -> Iterator[tuple[str, str, str | None]]:
    names, records = _table_batches(path, cfg)
    if not names:
        return
    url_col, text_col, page_col = _table_columns(path, names, cfg)
    for rec in records:
        if rec.get("__bad__"):
            stats.skipped["bad_table_row"] += 1
            continue
        url, text = rec.get(url_col), rec.get(text_col)
        url = str(url).strip() if url is not None else ""
        text = " ".join(str(text).split()) if text is not None else ""
        if not url:
            stats.skipped["row_without_url"] += 1
        elif not text:
            stats.skipped["row_without_alt"] += 1
        else:
            page = rec.get(page_col) if page_col else None
            yield url, text, (str(page) if page is not None else None)


# ---------------------------------------------------------------- driver


def _rows_from_file(path: Path, root: Path, cfg: ExtractConfig, stats: ExtractStats) -> Iterator[tuple]:
    kind = input_kind(path)
    if kind == "html":
        return rows_from_html_file(path, root, cfg, stats)
    if kind in ("warc", "wat"):
        return rows_from_warc(path, cfg, stats)
    return rows_from_table(path, cfg, stats)


class _ParquetSink:
    """Buffered rows -> one Parquet file, written to a temp name and renamed on close."""

    def __init__(self, out: Path, batch_rows: int) -> None:
        self.schema = pa.schema([(c, pa.string()) for c in COLUMNS])
        self.out, self.batch_rows = out, batch_rows
        self.tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        out.parent.mkdir(parents=True, exist_ok=True)
        self.writer = pq.ParquetWriter(self.tmp, self.schema)
        self.buf: list[tuple] = []

    def add(self, row: tuple) -> None:
        self.buf.append(row)
        if len(self.buf) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            cols = list(zip(*self.buf))
            self.writer.write_table(pa.table({c: pa.array(v, pa.string()) for c, v in zip(COLUMNS, cols)},
                                             schema=self.schema))
            self.buf = []

    def close(self, ok: bool) -> None:
        self.flush() if ok else None
        self.writer.close()
        if ok:
            os.replace(self.tmp, self.out)
        elif self.tmp.exists():
            self.tmp.unlink()


def extract(inputs: Iterable[str | Path], out: str | Path, cfg: ExtractConfig = ExtractConfig(),
            stats_path: str | Path | None = None, on_file: Callable[[Path], None] | None = None) -> ExtractStats:
    """Write ``out`` (Parquet: url, text, page_url) and ``extract_stats.json`` beside it."""
    files = list_inputs(list(inputs))
    out = Path(out)
    stats = ExtractStats()
    sink = _ParquetSink(out, cfg.batch_rows)
    ok = False
    try:
        for path, root in files:
            stats.files += 1
            try:
                for row in _rows_from_file(path, root, cfg, stats):
                    sink.add(row)
                    stats.candidates += 1
            except UserError:
                raise
            except Exception as exc:  # unreadable file: count it, keep going
                log.warning("%s: skipped (%s)", path, exc)
                stats.skipped["unreadable_file"] += 1
            if on_file:
                on_file(path)
        ok = True
    finally:
        sink.close(ok)
    report = {**stats.to_dict(), "config": asdict(cfg), "output": str(out)}
    atomic_write_text(Path(stats_path) if stats_path else out.parent / "extract_stats.json", json.dumps(report, indent=2))
    return stats
