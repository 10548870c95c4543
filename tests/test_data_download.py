"""Download: img2dataset against an HTTP server on 127.0.0.1 with every failure case."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from openalign.corpus.download import DownloadConfig, download, failure_reason, to_fetchable

pytest.importorskip("img2dataset")

SIZES = {"ok0": (320, 240), "ok1": (260, 400), "tiny": (120, 90), "side200": (400, 200), "wide": (900, 250),
         "ratio3": (750, 250), "tall": (210, 700)}


def _jpeg(size: tuple[int, int], seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, ((seed * 40) % 256, 120, 200)).save(buf, "JPEG")
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        name = self.path.strip("/").split(".")[0]
        if name == "redirect":
            self.send_response(302)
            self.send_header("Location", "/ok0.jpg")
            self.end_headers()
            return
        if name == "slow":
            time.sleep(4)
        body = {"corrupt": b"\xff\xd8\xff\xe0 definitely not a jpeg" * 10, "slow": _jpeg((300, 300))}.get(name)
        if body is None and name in SIZES:
            body = _jpeg(SIZES[name], len(name))
        if body is None:
            self.send_error(404)
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on a slow response

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def _read_shards(folder: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def test_download_with_failures(server: str, tmp_path: Path) -> None:
    local = tmp_path / "local.jpg"
    local.write_bytes(_jpeg((300, 280), 7))
    names = ["ok0", "ok1", "tiny", "side200", "wide", "ratio3", "tall", "corrupt", "missing", "slow", "redirect"]
    rows = [(f"{server}/{n}.jpg", f"caption for {n}", "http://page.test/") for n in names]
    rows += [(str(local), "a local file", None), ("ftp://x.test/a.jpg", "ftp is not fetched", None)]
    pd.DataFrame(rows, columns=["url", "text", "page_url"]).to_parquet(tmp_path / "pairs.parquet")
    cfg = DownloadConfig(timeout=2, threads=4, samples_per_shard=4, image_size=64)
    stats = download(tmp_path / "pairs.parquet", tmp_path / "shards", cfg)

    samples = _read_shards(tmp_path / "shards")
    captions = sorted(s["txt"].decode() for s in samples.values())
    assert captions == ["a local file", "caption for ok0", "caption for ok1", "caption for redirect"]
    for s in samples.values():
        meta = json.loads(s["json"])
        assert set(s) == {"jpg", "txt", "json"} and meta["caption"] == s["txt"].decode()
        assert min(Image.open(io.BytesIO(s["jpg"])).size) == 64  # resized, ratio kept
    assert dict(stats.failures) == {"too_small": 2, "aspect_ratio": 3, "corrupt_image": 1, "http_404": 1,
                                    "timeout": 1, "unsupported_url": 1}
    assert stats.written == 4 and stats.pairs == len(rows)
    report = json.loads((tmp_path / "shards" / "download_stats.json").read_text())
    assert report["failures"]["aspect_ratio"] == 3 and report["written"] == 4
    assert not list(tmp_path.glob(".shards.work-*"))


def test_failure_reasons_and_urls(tmp_path: Path) -> None:
    assert failure_reason("HTTP Error 404: Not Found") == "http_404"
    assert failure_reason("<urlopen error timed out>") == "timeout"
    assert failure_reason("Image decoding error") == "corrupt_image"
    assert to_fetchable("rel/a.jpg", tmp_path) == (tmp_path / "rel/a.jpg").as_uri()
    assert to_fetchable("ftp://h/a.jpg", tmp_path) is None
    assert to_fetchable("https://h/a.jpg", tmp_path) == "https://h/a.jpg"
