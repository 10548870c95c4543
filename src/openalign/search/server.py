"""HTTP API + web page over one index (FastAPI; OpenAPI schema at ``/openapi.json``, docs at ``/docs``).

Every endpoint goes through :mod:`openalign.search.query`. Images are addressed by id only, and
thumbnails come from the index's own ``thumbnails.bin`` (or, when none was stored, are rendered
from the indexed file of that id), so no request can name a file outside the collection.

Bad input never gets a 500: non-image upload 400, oversized body or upload 413, k out of range /
malformed JSON / empty or cancelling query 422, unknown id 404; each route declares the statuses
it can answer and their bodies in the OpenAPI schema. Hardening:

* Request bodies are counted by an ASGI middleware (:class:`BodyLimit`) as they arrive, with or
  without ``Content-Length``: past the limit the answer is 413 and the app (and its multipart
  parser, which would spool the upload to a temp file) never sees a byte of the body.
* Each request answers from one complete index version (:class:`~openalign.search.query.LiveSearcher`):
  ``openalign index add`` while serving is picked up without a restart, never half-way.
* Uploaded images are decoded reduced (JPEG by the decoder itself) to about twice the model's
  input size, so a large upload costs little memory.
* ``hide_paths`` keeps local paths out of every response: paths relative to the indexed folder,
  no index or model directory.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import uvicorn
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi import Query as Q
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from openalign.errors import UserError
from openalign.models.bundle import load_bundle
from openalign.search.query import (
    DECODE_SIDE,
    LiveSearcher,
    Query,
    Searcher,
    Term,
    UnknownId,
    decode_reduced,
    decode_side,
    local_path,
    manifest_model_dir,
)

STATIC = Path(__file__).parent / "static"
MAX_K = 100
MAX_TERMS = 16
MAX_UPLOAD_BYTES = 10 * 2**20
MAX_PIXELS = 40_000_000
FORM_OVERHEAD = 64 * 1024  # a body may exceed the upload limit by this: multipart framing, text and terms fields


class TermIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=200)
    weight: float = Field(1.0, ge=-10.0, le=10.0, description="+1 adds the term, -1 subtracts it")


class SearchIn(BaseModel):
    """A text and/or indexed image id, plus weighted text terms."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(None, max_length=500)
    image_id: int | None = Field(None, ge=0)
    terms: list[TermIn] = Field(default_factory=list, max_length=MAX_TERMS)
    k: int = Field(10, ge=1, le=MAX_K)


class HitOut(BaseModel):
    id: int
    score: float
    path: str | None = Field(description="local file (relative to the indexed folder with --hide-paths)")
    url: str | None
    caption: str | None
    width: int
    height: int
    thumbnail: str


class SearchOut(BaseModel):
    results: list[HitOut]
    took_ms: float
    index_version: str = Field(description="the index version that answered (changes after `openalign index add`)")
    index_count: int = Field(description="images in that version: every id is below it")


class ImageOut(BaseModel):
    id: int
    path: str | None
    url: str | None
    caption: str | None
    width: int
    height: int


class InfoOut(BaseModel):
    count: int
    dim: int
    index_type: str
    version: str
    model: str | None
    captions_indexed: bool
    max_k: int
    max_terms: int
    max_upload_bytes: int
    index_dir: str | None = Field(description="null with --hide-paths")
    model_dir: str | None = Field(description="null with --hide-paths, or when the index records none")
    search_params: dict[str, int | None] = Field(default_factory=dict,
                                                 description="query-time knobs: nprobe, ef_search, rerank")
    recall_at_10: float | None = Field(None, description="recall@10 against exact search measured on held-out "
                                                         "vectors of the collection at build time (null: exact "
                                                         "index, or not tuned)")
    target_recall: float | None = None


class ErrorOut(BaseModel):
    """The body of 400, 404 and 413 answers (and of 422 answers to a query that makes no sense)."""

    detail: str


class FieldError(BaseModel):
    loc: list[str | int] = Field(description='where: e.g. ["query", "k"] or ["body", "terms", 0, "weight"]')
    msg: str


class InvalidOut(BaseModel):
    """422: fields that fail validation (a list), or a valid request that is not a query (a message)."""

    detail: str | list[FieldError]


_ERRORS: dict[int, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "the body cannot be parsed (not UTF-8, broken multipart), or the upload "
                                            "is empty, not a readable image or has too many pixels"},
    404: {"model": ErrorOut, "description": "unknown image id, or no captions indexed"},
    413: {"model": ErrorOut, "description": "request body or upload larger than the server's limit"},
    422: {"model": InvalidOut, "description": "invalid fields, malformed JSON, or an empty or cancelling query"},
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: its error statuses (413 is on every route: the body limit applies to all)."""
    return {c: _ERRORS[c] for c in sorted({413, *codes})}


@dataclass(frozen=True)
class _Ctx:
    live: LiveSearcher
    max_upload_bytes: int
    hide_paths: bool


def create_app(searcher: Searcher | LiveSearcher, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               hide_paths: bool = False) -> FastAPI:
    """The API and page over ``searcher``'s index; a plain Searcher is followed across index versions."""
    live = searcher if isinstance(searcher, LiveSearcher) else LiveSearcher(searcher)
    ctx = _Ctx(live, max_upload_bytes, hide_paths)
    app = FastAPI(title="OpenALIGN image search", version="1",
                  description="Text, image and image+text queries over an OpenALIGN index.")
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes + FORM_OVERHEAD)
    _install_error_handlers(app)
    _add_search_routes(app, ctx)
    _add_image_routes(app, ctx)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/info", response_model=InfoOut, responses=errors(), summary="The index and the server's limits")
    def info() -> InfoOut:
        s = live.current()
        m = s.index.manifest
        model = (m.get("model") or {})
        name, model_dir = model.get("name"), model.get("dir")
        if hide_paths and name and (os.sep in name or "/" in name):
            name = Path(name).name
        params, tuning = m.get("index_params") or {}, m.get("tuning") or {}
        return InfoOut(count=m["count"], dim=m["dim"], index_type=m["index_type"], version=s.index.version,
                       model=name, captions_indexed=m["captions_indexed"], max_k=MAX_K, max_terms=MAX_TERMS,
                       max_upload_bytes=max_upload_bytes, index_dir=None if hide_paths else str(s.index.dir.resolve()),
                       model_dir=None if hide_paths else model_dir,
                       search_params={"nprobe": params.get("ivf_nprobe"), "ef_search": params.get("hnsw_ef_search"),
                                      "rerank": params.get("rerank")},
                       recall_at_10=tuning.get("recall"), target_recall=tuning.get("target_recall"))

    return app


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 before the app sees any of it.

    A ``Content-Length`` over the limit is refused without reading. Otherwise (a declared length,
    or ``Transfer-Encoding: chunked`` with none) the body is read here as it arrives, counting
    bytes, and refused the moment the count passes the limit; a body within the limit is then
    handed to the app from memory. So an oversized upload is never parsed or spooled to disk,
    and at most ``max_bytes`` of a request are ever held. uvicorn discards the rest of a refused
    body as it arrives, so the client still reads the 413.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        messages: deque[dict] = deque()
        total = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":  # the client went away: let the app see that
                break
            total += len(message.get("body", b""))
            if total > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> dict:
            return messages.popleft() if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict, receive: Callable, send: Callable) -> None:
        body = {"detail": f"request body larger than {self.max_bytes} bytes; send a smaller image"}
        await JSONResponse(body, status_code=413)(scope, receive, send)


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _run(ctx: _Ctx, s: Searcher, fn: Callable[[Query, int], list], q: Query, k: int) -> SearchOut:
    """Run a query function, mapping unknown ids to 404 and bad queries to 422 (never a 500)."""
    t0 = time.perf_counter()
    try:
        hits = fn(q, k)
    except UnknownId as exc:
        raise HTTPException(404, _scrub(ctx, s, str(exc))) from None
    except UserError as exc:
        raise HTTPException(422, _scrub(ctx, s, str(exc))) from None
    results = []
    for h in hits:
        d = h.to_dict()
        d["path"], d["url"] = _shown(ctx, s, d)
        results.append(HitOut(**d, thumbnail=f"/api/images/{h.id}/thumbnail"))
    return SearchOut(results=results, took_ms=(time.perf_counter() - t0) * 1000, index_version=s.index.version,
                     index_count=s.index.count)


def _shown(ctx: _Ctx, s: Searcher, record: dict[str, Any]) -> tuple[str | None, str | None]:
    """(path, url) as a response shows them: as stored, or with ``hide_paths`` the local file
    relative to the indexed folder (its name where there is no common folder) and no ``file:`` URL."""
    path, url = record.get("path"), record.get("url")
    if not ctx.hide_paths:
        return path, url
    if isinstance(url, str) and url.lower().startswith("file:"):
        url = None
    local = path or local_path(record)  # a stored path keeps its ``#member`` suffix (shard members)
    if not local:
        return None, url
    root = (s.index.local_root or "").rstrip(os.sep)
    if root and local.startswith(root + os.sep):
        return local[len(root) + 1 :], url
    file, sep, member = local.partition("#")
    return os.path.basename(file) + sep + member, url


def _scrub(ctx: _Ctx, s: Searcher, message: str) -> str:
    """With ``hide_paths``, an error message with the index, image or model folders named by placeholders."""
    if not ctx.hide_paths:
        return message
    model = s.index.manifest.get("model") or {}
    folders = {str(s.index.dir.resolve()): "<index>", str(s.index.dir): "<index>", str(s.index.source): "<index>",
               s.index.local_root or "": "<images>", model.get("dir") or "": "<model>", model.get("name") or "": "<model>"}
    for folder in sorted((f for f in folders if f and (os.sep in f or "/" in f)), key=len, reverse=True):
        message = message.replace(folder, folders[folder])
    return message


def _add_search_routes(app: FastAPI, ctx: _Ctx) -> None:
    @app.get("/api/search", response_model=SearchOut, responses=errors(422), summary="Text -> images")
    def search_text(q: str = Q(min_length=1, max_length=500), k: int = Q(10, ge=1, le=MAX_K)) -> SearchOut:
        s = ctx.live.current()
        return _run(ctx, s, s.search, Query(text=q), k)

    @app.post("/api/search", response_model=SearchOut, responses=errors(400, 404, 422),
              summary="Text and/or indexed image id + weighted terms")
    def search_json(body: SearchIn) -> SearchOut:
        s = ctx.live.current()
        terms = tuple(Term(t.text, t.weight) for t in body.terms)
        return _run(ctx, s, s.search, Query(text=body.text, image_id=body.image_id, terms=terms), body.k)

    @app.post("/api/search/image", response_model=SearchOut, responses=errors(400, 422),
              summary="Uploaded image (+ text, + weighted terms)")
    def search_image(file: UploadFile = File(...), text: str = Form("", max_length=500),
                     terms: str = Form("[]", max_length=20_000), k: int = Form(10, ge=1, le=MAX_K)) -> SearchOut:
        s = ctx.live.current()
        img = read_upload(file, ctx.max_upload_bytes, decode_side(s.encoder))
        return _run(ctx, s, s.search, Query(text=text or None, image=img, terms=parse_terms(terms)), k)


def _add_image_routes(app: FastAPI, ctx: _Ctx) -> None:
    @app.get("/api/images/{image_id}", response_model=ImageOut, responses=errors(404, 422),
             summary="Metadata of an indexed image")
    def image_record(image_id: int) -> ImageOut:
        s = ctx.live.current()
        try:
            r = s.index.record(image_id)
        except UnknownId as exc:
            raise HTTPException(404, str(exc)) from None
        path, url = _shown(ctx, s, r)
        return ImageOut(id=r["id"], path=path, url=url, caption=r["caption"], width=r["width"], height=r["height"])

    @app.get("/api/images/{image_id}/thumbnail", summary="JPEG thumbnail of an indexed image",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}, **errors(404, 422)})
    def thumbnail(image_id: int) -> Response:
        data = _thumbnail_bytes(ctx.live.current(), image_id)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/api/images/{image_id}/captions", response_model=SearchOut, responses=errors(404, 422),
             summary="Indexed image -> captions")
    def captions_by_id(image_id: int, k: int = Q(5, ge=1, le=MAX_K)) -> SearchOut:
        s = ctx.live.current()
        return _captions(ctx, s, Query(image_id=image_id), k)

    @app.post("/api/captions/image", response_model=SearchOut, responses=errors(400, 404, 422),
              summary="Uploaded image -> indexed captions")
    def captions_upload(file: UploadFile = File(...), k: int = Form(5, ge=1, le=MAX_K)) -> SearchOut:
        s = ctx.live.current()
        if s.index.captions is None:  # before reading the upload: nothing to match it against
            raise HTTPException(404, "no captions were indexed in this index")
        return _captions(ctx, s, Query(image=read_upload(file, ctx.max_upload_bytes, decode_side(s.encoder))), k)


def _captions(ctx: _Ctx, s: Searcher, q: Query, k: int) -> SearchOut:
    if s.index.captions is None:
        raise HTTPException(404, "no captions were indexed in this index")
    return _run(ctx, s, s.captions, q, k)


def _thumbnail_bytes(searcher: Searcher, image_id: int, size: int = 192) -> bytes:
    try:
        data = searcher.index.thumbnail(image_id)
        rec = searcher.index.record(image_id)
    except UnknownId as exc:
        raise HTTPException(404, str(exc)) from None
    if data:
        return data
    # No stored thumbnail: render one from the file indexed under this id (never a client-given path).
    path = Path(rec["path"]) if rec["path"] and "#" not in rec["path"] else None
    if path is None or not path.is_file():
        raise HTTPException(404, f"image {image_id}: no thumbnail stored and no local file to render one from")
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at a fraction of the size
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
    except Exception:
        raise HTTPException(404, f"image {image_id}: the indexed file can no longer be read") from None
    return buf.getvalue()


def read_upload(file: UploadFile, max_bytes: int, side: int = DECODE_SIDE) -> Image.Image:
    """The uploaded bytes as an RGB image with its shorter side reduced to about ``side``.

    413 if over ``max_bytes``, 400 if empty, not a readable image, or over ``MAX_PIXELS``.
    """
    data = file.file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise HTTPException(413, f"upload {file.filename!r}: larger than {max_bytes} bytes; send a smaller image")
    if not data:
        raise HTTPException(400, f"upload {file.filename!r}: empty file; send a JPEG, PNG or WebP image")
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_PIXELS:
            raise HTTPException(400, f"upload {file.filename!r}: {img.width}x{img.height} pixels is too many; downscale it")
        return decode_reduced(img, side)
    except HTTPException:
        raise
    except Exception:
        raise HTTPException(400, f"upload {file.filename!r}: not a readable image; send a JPEG, PNG or WebP file") from None


def parse_terms(raw: str) -> tuple[Term, ...]:
    """The multipart ``terms`` field: a JSON list of ``{"text": str, "weight": float}``; bad -> 422."""
    try:
        items = json.loads(raw or "[]")
        terms = [TermIn.model_validate(t) for t in items] if isinstance(items, list) else None
    except Exception:
        terms = None
    if terms is None or len(terms) > MAX_TERMS:
        raise HTTPException(422, f'field "terms": expected a JSON list of at most {MAX_TERMS} '
                                 '{"text": "...", "weight": 1.0} objects')
    return tuple(Term(t.text, t.weight) for t in terms)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:  # last resort: still a clear JSON body
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)


@dataclass(frozen=True)
class ServeConfig:
    """What :func:`serve` takes: its arguments, with the same defaults."""

    index_dir: str = field(metadata={"flag": "--index", "help": "index directory (openalign index build)"})
    host: str = field(default="127.0.0.1", metadata={"help": "interface to listen on (default: loopback only)"})
    port: int = 8000
    model_dir: str | None = field(default=None, metadata={
        "flag": "--model", "help": "model directory (default: the one in the manifest)"})
    log_level: str = field(default="info", metadata={
        "choices": ("critical", "error", "warning", "info", "debug", "trace"), "help": "uvicorn log level"})
    max_upload_bytes: int = field(default=MAX_UPLOAD_BYTES, metadata={
        "help": "largest uploaded image in bytes; larger request bodies get 413 before they are read"})
    hide_paths: bool = field(default=False, metadata={
        "help": "keep local paths out of responses: image paths relative to the indexed folder, "
                "no index or model directory"})
    text_precision: str = field(default="auto", metadata={
        "choices": ("auto", "fp32", "bf16", "int8"),
        "help": "text tower for queries: auto = int8 dynamic quantisation on a CPU for a large text tower "
                "(b7-base: HTTP query p50 120 -> 41 ms; held-out R@1 within 0.5 points of fp32, "
                "bench/precision_recall.py), fp32 for a small one and on a GPU"})
    compile_text: bool = field(default=False, metadata={
        "help": "torch.compile the text tower (another ~2 ms per query; 20-190 s to compile at start)"})


def serve(index_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, model_dir: str | None = None,
          log_level: str = "info", max_upload_bytes: int = MAX_UPLOAD_BYTES, hide_paths: bool = False,
          text_precision: str = "auto", compile_text: bool = False) -> None:
    """Load the index and its model, then serve the API and page with uvicorn (following index appends)."""
    encoder = None
    model_dir = model_dir or manifest_model_dir(index_dir)
    if model_dir:
        if not Path(model_dir).is_dir():
            raise UserError(f"{Path(index_dir) / 'manifest.json'}: model dir {model_dir} does not exist; "
                            "pass --model DIR with the model the index was built with")
        encoder = load_bundle(model_dir, text_precision=text_precision, compile_text=compile_text)
        if compile_text:
            encoder.warm_up()  # compile before listening, not on the first user's query
    app = create_app(LiveSearcher.open(index_dir, encoder), max_upload_bytes=max_upload_bytes, hide_paths=hide_paths)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
