"""Server hardening: body limit before parsing (chunked too), --hide-paths, one index version per
answer during `index add`, every status and body in the OpenAPI schema (schemathesis), reduced
decoding of large uploads. Servers listen on 127.0.0.1; nothing here asserts on timing."""

from __future__ import annotations

import asyncio
import io
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from PIL import Image, JpegImagePlugin
from schemathesis.checks import positive_data_acceptance

from openalign.search import index as index_mod
from openalign.search import query as query_mod
from openalign.search.build import add_to_index, build_index
from openalign.search.index import append_contents, normalise_metadata
from openalign.search.query import LiveSearcher, SearchIndex, Searcher, decode_reduced
from openalign.search.server import create_app

from search_helpers import ToyEncoder, draw, make_collection

MiB = 2**20


def png(colour: str = "red", shape: str = "circle", size: int = 64) -> bytes:
    buf = io.BytesIO()
    draw(colour, shape, size=size, seed=11).save(buf, format="PNG")
    return buf.getvalue()


def build(root: Path, per_kind: int = 1, encoder=None) -> Path:
    make_collection(root / "images", per_kind=per_kind)
    build_index(root / "index", None, images=str(root / "images"), num_workers=0, encoder=encoder or ToyEncoder())
    return root / "index"


@pytest.fixture(scope="module")
def toy_index(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("hardening"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1 in a thread (a context manager yielding its base URL)."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        assert self.server.started, "uvicorn did not start"
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


# -- 1. the body limit holds for chunked bodies, before anything is parsed or stored ----------------


class SpoolSpy:
    """Counts SpooledTemporaryFile objects made (the multipart parser makes one per file part) and rollovers to disk."""

    def __init__(self, monkeypatch) -> None:
        self.created = self.rolled_over = 0
        cls = tempfile.SpooledTemporaryFile
        init, rollover = cls.__init__, cls.rollover

        def counting_init(this, *a, **kw):
            self.created += 1
            init(this, *a, **kw)

        def counting_rollover(this):
            self.rolled_over += 1
            rollover(this)

        monkeypatch.setattr(cls, "__init__", counting_init)
        monkeypatch.setattr(cls, "rollover", counting_rollover)


BOUNDARY = "hardeningboundary"


def multipart_chunks(payload_bytes: int, chunk: int = 64 * 1024, sent: list | None = None):
    """A multipart body with one ``file`` part of ``payload_bytes``, yielded in chunks (no length known up front)."""
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    yield head
    left = payload_bytes
    while left > 0:
        n = min(chunk, left)
        if sent is not None:
            sent.append(n)
        yield b"\xff" * n
        left -= n
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def test_chunked_upload_over_limit_gets_413_before_the_app_reads_it(toy_index: Path, monkeypatch, tmp_path: Path):
    """In-process (ASGI): the 8 MiB chunked body is cut off just past 1 MiB; no parser, no temp file."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    spy = SpoolSpy(monkeypatch)
    app = create_app(Searcher.open(toy_index, ToyEncoder()), max_upload_bytes=MiB)
    sent: list[int] = []

    async def body():
        for part in multipart_chunks(8 * MiB, sent=sent):
            yield part

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.post("/api/search/image", content=body(),
                                headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"})

    r = asyncio.run(post())
    assert r.status_code == 413 and "larger than" in r.json()["detail"]
    assert sum(sent) < 2 * MiB  # refused as soon as the limit was passed, not after reading 8 MiB
    assert spy.created == 0 and spy.rolled_over == 0  # the multipart parser never saw a byte
    assert list(tmp_path.iterdir()) == []


def test_chunked_upload_over_limit_over_real_http(toy_index: Path, monkeypatch, tmp_path: Path):
    """uvicorn on 127.0.0.1: Transfer-Encoding: chunked, no Content-Length, 8 MiB against 1 MiB -> 413."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    app = create_app(Searcher.open(toy_index, ToyEncoder()), max_upload_bytes=MiB)
    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        spy = SpoolSpy(monkeypatch)
        r = c.post("/api/search/image", content=multipart_chunks(8 * MiB),
                   headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"})
        assert r.request.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.request.headers
        assert r.status_code == 413, r.text
        assert r.json()["detail"].startswith("request body larger than")
        assert spy.created == 0 and spy.rolled_over == 0
        assert list(tmp_path.iterdir()) == []
        # a chunked upload within the limit still works, and the server keeps serving
        ok = c.post("/api/search/image", files={"file": ("q.png", png(), "image/png")}, data={"k": "2"},
                    headers={"transfer-encoding": "chunked"})
        assert ok.status_code == 200, ok.text
        assert c.get("/api/search", params={"q": "red"}).status_code == 200


def test_declared_length_over_limit_is_refused_unread(toy_index: Path):
    app = create_app(Searcher.open(toy_index, ToyEncoder()), max_upload_bytes=1000)
    client = TestClient(app, raise_server_exceptions=False)
    r = client.post("/api/search", content=b"{" + b" " * 100_000 + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.headers["content-type"] == "application/json"


# -- 2. --hide-paths ------------------------------------------------------------------------------------


class NamedToyEncoder(ToyEncoder):
    """The toy encoder 'loaded from' a model folder: the manifest records that folder's absolute path."""

    def __init__(self, model_dir: Path) -> None:
        self.name = str(model_dir)


def every_endpoint(client: TestClient) -> dict[str, httpx.Response]:
    up = {"file": ("q.png", png(), "image/png")}
    return {
        "GET /api/search": client.get("/api/search", params={"q": "red circle", "k": 5}),
        "POST /api/search": client.post("/api/search", json={"image_id": 0, "terms": [{"text": "blue"}], "k": 5}),
        "POST /api/search/image": client.post("/api/search/image", files=up, data={"text": "red"}),
        "GET /api/images/0": client.get("/api/images/0"),
        "GET /api/images/0/captions": client.get("/api/images/0/captions"),
        "POST /api/captions/image": client.post("/api/captions/image", files=up),
        "GET /api/info": client.get("/api/info"),
        "GET /api/images/999 (404)": client.get("/api/images/999"),
        "POST /api/search (422)": client.post("/api/search", json={"text": "red", "terms": [{"text": "red", "weight": -1}]}),
        "GET /openapi.json": client.get("/openapi.json"),
    }


def test_hide_paths_keeps_absolute_paths_out_of_every_response(tmp_path: Path):
    (tmp_path / "model").mkdir()
    encoder = NamedToyEncoder(tmp_path / "model")
    idx = build(tmp_path, encoder=encoder)
    secrets = {str(tmp_path), str(tmp_path.resolve())}

    shown = TestClient(create_app(Searcher.open(idx, encoder)), raise_server_exceptions=False)
    info = shown.get("/api/info").json()
    assert info["index_dir"] == str(idx.resolve()) and info["model_dir"] == str((tmp_path / "model").resolve())
    assert shown.get("/api/images/0").json()["path"].startswith(str(tmp_path.resolve()))  # the control: shown by default

    hidden = TestClient(create_app(Searcher.open(idx, encoder), hide_paths=True), raise_server_exceptions=False)
    names = {p.name for p in (tmp_path / "images").glob("*.png")}
    for what, r in every_endpoint(hidden).items():
        assert r.status_code < 500, (what, r.text)
        assert not any(s in r.text for s in secrets), f"{what} shows a local path: {r.text[:300]}"
        body = r.json()
        for hit in body.get("results", []) if isinstance(body, dict) else []:
            assert hit["path"] in names, (what, hit)
    assert hidden.get("/api/images/0").json()["path"] in names
    info = hidden.get("/api/info").json()
    assert info["index_dir"] is None and info["model_dir"] is None and info["model"] == "model"


def test_hidden_paths_of_shard_members_and_file_urls(toy_index: Path):
    from openalign.search.server import _Ctx, _shown

    s = Searcher.open(toy_index, ToyEncoder())
    ctx = _Ctx(LiveSearcher(s), 1, hide_paths=True)
    root = s.index.local_root
    assert root and Path(root).name == "images"
    assert _shown(ctx, s, {"path": f"{root}/sub/x.png", "url": None}) == ("sub/x.png", None)
    assert _shown(ctx, s, {"path": "/elsewhere/shards/00001.tar#k42", "url": None}) == ("00001.tar#k42", None)
    assert _shown(ctx, s, {"path": None, "url": f"file://{root}/y.jpg"}) == ("y.jpg", None)
    assert _shown(ctx, s, {"path": None, "url": "https://example.com/z.jpg"}) == (None, "https://example.com/z.jpg")


# -- 3. queries during `index add` see the old or the new version, never a mix --------------------------


def truth_captions(images: Path) -> list[str]:
    """Captions in id order for a folder source (files sorted by name)."""
    return [(p.with_suffix(".txt").read_text() if p.with_suffix(".txt").is_file() else None)
            for p in sorted(images.glob("*.png"))]


def test_queries_during_index_add_see_one_version(tmp_path: Path):
    idx = build(tmp_path, per_kind=2)
    old_caps = truth_captions(tmp_path / "images")
    more = tmp_path / "more"
    more.mkdir()
    for j in range(4):
        draw("red", "circle", seed=500 + j).save(more / f"new_red_circle_{j}.png")
        (more / f"new_red_circle_{j}.txt").write_text(f"a red circle added {j}")
    new_caps = old_caps + truth_captions(more)
    live = LiveSearcher(Searcher.open(idx, ToyEncoder()))
    old_version = live.current().index.version

    answers: list[tuple[str, int, list[tuple[int, str | None]]]] = []
    problems: list[str] = []
    stop = threading.Event()

    def hammer(url: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while not stop.is_set():
                r = c.get("/api/search", params={"q": "red circle", "k": 8})
                if r.status_code != 200:
                    problems.append(f"{r.status_code} {r.text[:200]}")
                    continue
                b = r.json()
                answers.append((b["index_version"], b["index_count"], [(h["id"], h["caption"]) for h in b["results"]]))

    def wait_for(cond, what: str, limit: float = 180) -> None:
        deadline = time.time() + limit
        while not cond() and not problems and time.time() < deadline:
            time.sleep(0.02)
        assert cond(), f"gave up waiting for {what}; problems: {problems[:3]}"

    with LiveServer(create_app(live)) as url:
        worker = threading.Thread(target=hammer, args=(url,), daemon=True)
        worker.start()
        try:
            wait_for(lambda: len(answers) >= 5, "answers from the old version")
            m = add_to_index(idx, images=str(more), num_workers=0, encoder=ToyEncoder())
            assert m["count"] == len(new_caps)
            wait_for(lambda: any(a[0] == m["version"] for a in answers[-3:]) and
                     sum(a[0] == m["version"] for a in answers) >= 5, "answers from the new version")
        finally:
            stop.set()
            worker.join(timeout=60)

    assert not problems, problems[:5]
    truth = {old_version: (len(old_caps), old_caps), m["version"]: (len(new_caps), new_caps)}
    seen = set()
    for version, count, hits in answers:
        assert version in truth, f"answer from an unknown version {version}"
        want_count, caps = truth[version]
        assert count == want_count and len(hits) == min(8, count)
        for i, caption in hits:
            assert 0 <= i < count and caption == caps[i], (version, i, caption)
        seen.add(version)
    assert seen == set(truth)
    print(f"answers: {len(answers)}, from the new version: {sum(a[0] == m['version'] for a in answers)}")
    new_hits = [c for v, _, hits in answers if v == m["version"] for _, c in hits]
    assert any(c and "added" in c for c in new_hits)  # the new images are found once served


def contents(vectors: np.ndarray, start: int = 0):
    from openalign.search.index import IndexContents

    meta = normalise_metadata([{"path": f"img{start + i}.jpg", "caption": f"c{start + i}", "width": 1, "height": 1}
                               for i in range(len(vectors))])
    return IndexContents(vectors=vectors, metadata=meta, model={"name": "vectors", "dir": None, "dim": vectors.shape[1]})


def vecs(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_load_racing_a_swap_reloads_instead_of_mixing(tmp_path: Path, monkeypatch):
    """An append swapped in between reading the manifest and the vectors: the load starts again."""
    out = tmp_path / "idx"
    index_mod.write_index(out, contents(vecs(10, 0)))
    real_read = query_mod.faiss.read_index
    raced = []

    def read_index_after_a_swap(path: str, *a):
        if not raced:
            raced.append(path)
            append_contents(out, contents(vecs(5, 1), start=10))  # completes a swap mid-load
        return real_read(path, *a)

    monkeypatch.setattr(query_mod.faiss, "read_index", read_index_after_a_swap)
    loaded = SearchIndex(out)
    assert raced and loaded.count == 15 == loaded.index.ntotal == len(loaded.meta) == len(loaded.embeddings)
    assert loaded.record(14)["path"] == "img14.jpg" and loaded.version == index_mod.read_manifest(out)["version"]


def test_append_swaps_in_one_step(tmp_path: Path, monkeypatch):
    probe_a, probe_b = tmp_path / "a", tmp_path / "b"
    probe_a.mkdir(), probe_b.mkdir()
    if not index_mod._exchange(probe_a, probe_b):
        pytest.skip("this OS or filesystem has no atomic exchange (renameat2 RENAME_EXCHANGE)")
    out = tmp_path / "idx"
    index_mod.write_index(out, contents(vecs(10, 0)))
    renamed: list[Path] = []
    real_rename = Path.rename
    monkeypatch.setattr(Path, "rename", lambda self, target: (renamed.append(self), real_rename(self, target))[1])
    append_contents(out, contents(vecs(5, 1), start=10))
    assert out not in renamed  # exchanged in place: the index path never went missing
    assert SearchIndex(out).count == 15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "idx"]  # no temp or .old folder left


def test_append_without_exchange_falls_back_to_two_renames(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(index_mod, "_exchange", lambda a, b: False)  # e.g. a filesystem without RENAME_EXCHANGE
    out = tmp_path / "idx"
    index_mod.write_index(out, contents(vecs(10, 0)))
    append_contents(out, contents(vecs(5, 1), start=10))
    assert SearchIndex(out).count == 15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


class ToyEncoderDim8(ToyEncoder):
    dim = 8


def test_live_searcher_keeps_serving_when_a_new_version_is_broken(tmp_path: Path):
    def version(n: int, fingerprint: str = "f1"):
        c = contents(vecs(n, n))
        c.model = {**c.model, "fingerprint": fingerprint}
        return c

    out = tmp_path / "idx"
    index_mod.write_index(out, version(10))
    live = LiveSearcher(Searcher(SearchIndex(out), ToyEncoderDim8()))
    assert not live.reload()  # nothing changed
    index_mod.write_index(out, version(12))
    assert live.reload() and live.current().index.count == 12
    index_mod.write_index(out, version(13, fingerprint="another model"))
    assert not live.reload() and live.current().index.count == 12  # the loaded encoder would not fit it
    index_mod.write_index(out, version(14))
    (out / "metadata.parquet").write_bytes(b"broken")
    assert not live.reload() and live.current().index.count == 12  # logged, still serving the last good version


# -- 4. the OpenAPI schema declares every status and body: a bounded schemathesis run -------------------


@pytest.fixture(scope="module")
def api_schema(toy_index: Path):
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(Searcher.open(toy_index, ToyEncoder())))


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_openapi_schema_declares_every_answer(api_schema, mode: str):
    """Bounded schemathesis run, in-process (ASGI, no network): every answer's status and body match the schema."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 8
    failures = []
    for op in operations:

        @given(op.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
        @settings(max_examples=6, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            # Schema-valid requests the server may still refuse by meaning (an empty or cancelling
            # query, an id not in this index, bytes that are not an image) are declared 400/404/422.
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        try:
            check()
        except Unsatisfiable:  # no invalid request exists (GET /api/info has no parameters)
            assert mode == "negative", op.label
        except Exception as exc:
            failures.append(f"{op.label}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_error_statuses_and_bodies_are_declared_per_route(toy_index: Path):
    paths = TestClient(create_app(Searcher.open(toy_index, ToyEncoder()))).get("/openapi.json").json()["paths"]
    want = {("/api/search", "get"): {"413", "422"}, ("/api/search", "post"): {"400", "404", "413", "422"},
            ("/api/search/image", "post"): {"400", "413", "422"}, ("/api/images/{image_id}", "get"): {"404", "413", "422"},
            ("/api/captions/image", "post"): {"400", "404", "413", "422"}, ("/api/info", "get"): {"413"}}
    for (path, method), codes in want.items():
        declared = paths[path][method]["responses"]
        assert codes <= set(declared), (path, method, set(declared))
        for code in codes:
            ref = declared[code]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/InvalidOut" if code == "422" else "/ErrorOut"), (path, code, ref)


# -- 5. large uploads are decoded reduced ---------------------------------------------------------------


class SizedTransform:
    """The toy transform, declaring an input size like the real ImageTransform does."""

    size = resize = 40

    def __call__(self, img, rng=None):
        return ToyEncoder.transform(img, rng)


class SpyEncoder(ToyEncoder):
    transform = SizedTransform()

    def __init__(self) -> None:
        self.sizes: list[tuple[int, int]] = []

    def encode_images(self, images):
        self.sizes.extend(im.size for im in images)
        return super().encode_images(images)


def big_image(w: int, h: int) -> Image.Image:
    return draw("red", "circle", size=64, seed=3).resize((w, h), Image.NEAREST)


def test_large_jpeg_upload_is_decoded_reduced(toy_index: Path, monkeypatch):
    decoded: list[tuple[int, int]] = []
    real_load = JpegImagePlugin.JpegImageFile.load

    def spy_load(self):
        out = real_load(self)
        decoded.append(self.size)
        return out

    buf = io.BytesIO()
    big_image(6300, 6300).save(buf, format="JPEG", quality=80)
    enc = SpyEncoder()
    client = TestClient(create_app(Searcher.open(toy_index, enc), max_upload_bytes=20 * MiB))
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", spy_load)
    r = client.post("/api/search/image", files={"file": ("big.jpg", buf.getvalue(), "image/jpeg")}, data={"k": "3"})
    assert r.status_code == 200, r.text
    assert decoded and decoded[0] == (788, 788)  # the decoder itself produced 1/8 scale (draft): 6300 / 8
    assert enc.sizes == [(80, 80)]  # then shrunk to 2x the model's 40 px input
    assert r.json()["results"][0]["caption"] == "a red circle"  # still the right answer at reduced size


def test_large_png_upload_is_shrunk_before_encoding(toy_index: Path):
    buf = io.BytesIO()
    big_image(3000, 2000).save(buf, format="PNG")
    enc = SpyEncoder()
    client = TestClient(create_app(Searcher.open(toy_index, enc), max_upload_bytes=20 * MiB))
    r = client.post("/api/captions/image", files={"file": ("big.png", buf.getvalue(), "image/png")})
    assert r.status_code == 200, r.text
    assert enc.sizes == [(120, 80)]  # shorter side 2 x 40, aspect kept


def test_small_images_are_not_resized():
    im = Image.open(io.BytesIO(png(size=64)))
    assert decode_reduced(im, 80).size == (64, 64)


def test_serve_flags_reach_the_app(monkeypatch):
    import argparse

    from openalign.cli import serve as serve_cli
    from openalign.search import server

    seen: dict = {}
    monkeypatch.setattr(server, "manifest_model_dir", lambda index_dir: None)  # no index on disk here
    monkeypatch.setattr(server.LiveSearcher, "open", classmethod(lambda cls, path, encoder=None: ("live", path)))
    monkeypatch.setattr(server, "create_app", lambda live, **kw: seen.update(live=live, **kw) or "app")
    monkeypatch.setattr(server.uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    parser = argparse.ArgumentParser(prog="openalign")
    serve_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", "--index", "idx", "--hide-paths", "--max-upload-bytes", "12345"])
    assert args.func(args) == 0
    assert seen == {"live": ("live", "idx"), "max_upload_bytes": 12345, "hide_paths": True, "app": "app",
                    "host": "127.0.0.1", "port": 8000, "log_level": "info"}
