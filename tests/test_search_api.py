"""HTTP API: results, error codes (400/413/404/422, never 500), thumbnails only by id, a bounded load test."""

from __future__ import annotations

import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from openalign.search.build import build_index
from openalign.search.query import Searcher
from openalign.search.server import create_app

from search_helpers import ToyEncoder, draw, make_collection


def png(colour: str, shape: str) -> bytes:
    buf = io.BytesIO()
    draw(colour, shape, seed=11).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("apisearch")
    make_collection(root / "images", per_kind=3)
    build_index(root / "index", None, images=str(root / "images"), num_workers=0, encoder=ToyEncoder())
    return create_app(Searcher.open(root / "index", ToyEncoder()), max_upload_bytes=200_000)


@pytest.fixture(scope="module")
def client(app) -> TestClient:
    return TestClient(app, raise_server_exceptions=False)


def captions(resp) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [r["caption"] for r in resp.json()["results"]]


def test_text_json_upload_and_id_queries(client: TestClient):
    assert captions(client.get("/api/search", params={"q": "red square", "k": 3})) == ["a red square"] * 3
    body = {"image_id": 0, "terms": [{"text": "green", "weight": 1}, {"text": "blue", "weight": -1}], "k": 3}
    first = client.get("/api/images/0").json()["caption"]
    assert first == "a blue circle"
    assert captions(client.post("/api/search", json=body)) == ["a green circle"] * 3
    up = client.post("/api/search/image", files={"file": ("q.png", png("red", "circle"), "image/png")},
                     data={"terms": '[{"text": "blue", "weight": 1}, {"text": "red", "weight": -1}]', "k": "3"})
    assert captions(up) == ["a blue circle"] * 3
    assert captions(client.get("/api/images/4/captions", params={"k": 1})) == ["a blue square"]


def test_thumbnail_page_and_openapi(client: TestClient):
    r = client.get("/api/images/2/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    assert "OpenALIGN image search" in client.get("/").text
    assert client.get("/static/app.js").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/search", "/api/search/image", "/api/images/{image_id}/thumbnail"} <= set(paths)


@pytest.mark.parametrize("method,url,kwargs,status", [
    ("post", "/api/search/image", {"files": {"file": ("x.png", b"this is not an image", "image/png")}}, 400),
    ("post", "/api/search/image", {"files": {"file": ("x.png", b"", "image/png")}}, 400),
    ("post", "/api/search/image", {"files": {"file": ("big.png", b"\x89PNG" + b"0" * 300_000, "image/png")}}, 413),
    ("get", "/api/search?q=red&k=0", {}, 422),
    ("get", "/api/search?q=red&k=101", {}, 422),
    ("get", "/api/search?q=red&k=abc", {}, 422),
    ("post", "/api/search", {"json": {"text": "red", "k": 1000}}, 422),
    ("post", "/api/search", {"content": b'{"text": "red", ', "headers": {"content-type": "application/json"}}, 422),
    ("post", "/api/search", {"json": {}}, 422),  # empty query
    ("post", "/api/search", {"json": {"text": "red", "terms": [{"text": "red", "weight": -1}]}}, 422),  # cancels
    ("post", "/api/search", {"json": {"image_id": 999}}, 404),
    ("post", "/api/search/image", {"files": {"file": ("q.png", png("red", "circle"), "image/png")},
                                   "data": {"terms": "not json"}}, 422),
    ("get", "/api/images/999", {}, 404),
    ("get", "/api/images/999/thumbnail", {}, 404),
    ("get", "/api/images/-1/thumbnail", {}, 404),
    ("get", "/api/images/abc/thumbnail", {}, 422),
    ("get", "/api/images/..%2F..%2Fetc%2Fpasswd/thumbnail", {}, 404),
    ("get", "/static/..%2F..%2F..%2Fsetup.py", {}, 404),
])
def test_bad_input_status_codes(client: TestClient, method: str, url: str, kwargs: dict, status: int):
    r = getattr(client, method)(url, **kwargs)
    assert r.status_code == status, r.text
    assert r.status_code != 500
    assert client.get("/api/search", params={"q": "red"}).status_code == 200  # still serving


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(app):
    """uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_bounded_load_zero_errors(live_server: str):
    clients, per_client = 16, 15  # 240 requests, a mix of good and bad ones
    upload = png("blue", "square")

    def worker(i: int) -> list[int]:
        codes = []
        with httpx.Client(base_url=live_server, timeout=30) as c:
            for j in range(per_client):
                kind = (i + j) % 4
                if kind == 0:
                    r = c.get("/api/search", params={"q": "green circle", "k": 5})
                elif kind == 1:
                    r = c.post("/api/search", json={"image_id": j, "terms": [{"text": "red", "weight": 1}]})
                elif kind == 2:
                    r = c.post("/api/search/image", files={"file": ("q.png", upload, "image/png")})
                else:
                    r = c.get(f"/api/images/{j}/thumbnail")
                codes.append(r.status_code)
        return codes

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        codes = [c for cs in pool.map(worker, range(clients)) for c in cs]
    dt = time.perf_counter() - t0
    print(f"load: {len(codes)} requests from {clients} clients in {dt:.2f}s ({len(codes) / dt:.0f} req/s)")
    assert len(codes) == clients * per_client and set(codes) == {200}
