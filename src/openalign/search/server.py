"""HTTP API + web page over one index (FastAPI; OpenAPI schema at ``/openapi.json``, docs at ``/docs``).

Every endpoint goes through :mod:`openalign.search.query`. Images are addressed by id only, and
thumbnails come from the index's own ``thumbnails.bin`` (or, when none was stored, are rendered
from the indexed file of that id), so no request can name a file outside the collection.

Bad input never gets a 500: non-image upload 400, oversized upload 413, k out of range /
malformed JSON / empty or cancelling query 422, unknown id 404.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from openalign.search.query import Query, Searcher, Term, UnknownId

STATIC = Path(__file__).parent / "static"
MAX_K = 100
MAX_TERMS = 16
MAX_UPLOAD_BYTES = 10 * 2**20
MAX_PIXELS = 40_000_000


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
    path: str | None
    url: str | None
    caption: str | None
    width: int
    height: int
    thumbnail: str


class SearchOut(BaseModel):
    results: list[HitOut]
    took_ms: float


def create_app(searcher: Searcher, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> FastAPI:
    app = FastAPI(title="OpenALIGN image search", version="1",
                  description="Text, image and image+text queries over an OpenALIGN index.")
    _install_error_handlers(app, max_upload_bytes)
    _add_search_routes(app, searcher, max_upload_bytes)
    _add_image_routes(app, searcher, max_upload_bytes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        m = searcher.index.manifest
        return {"count": m["count"], "dim": m["dim"], "index_type": m["index_type"], "model": m["model"].get("name"),
                "captions_indexed": m["captions_indexed"], "max_k": MAX_K, "max_terms": MAX_TERMS,
                "max_upload_bytes": max_upload_bytes}

    return app


def _results(searcher: Searcher, q: Query, k: int) -> SearchOut:
    return _run(searcher.search, q, k)


def _run(fn: Any, q: Query, k: int) -> SearchOut:
    """Run a query function, mapping unknown ids to 404 and bad queries to 422 (never a 500)."""
    t0 = time.perf_counter()
    try:
        hits = fn(q, k)
    except UnknownId as exc:
        raise HTTPException(404, str(exc)) from None
    except UserError as exc:
        raise HTTPException(422, str(exc)) from None
    return SearchOut(results=[HitOut(**h.to_dict(), thumbnail=f"/api/images/{h.id}/thumbnail") for h in hits],
                     took_ms=(time.perf_counter() - t0) * 1000)


def _add_search_routes(app: FastAPI, searcher: Searcher, max_upload_bytes: int) -> None:
    @app.get("/api/search", response_model=SearchOut, summary="Text -> images")
    def search_text(q: str = Q(min_length=1, max_length=500), k: int = Q(10, ge=1, le=MAX_K)) -> SearchOut:
        return _results(searcher, Query(text=q), k)

    @app.post("/api/search", response_model=SearchOut, summary="Text and/or indexed image id + weighted terms")
    def search_json(body: SearchIn) -> SearchOut:
        terms = tuple(Term(t.text, t.weight) for t in body.terms)
        return _results(searcher, Query(text=body.text, image_id=body.image_id, terms=terms), body.k)

    @app.post("/api/search/image", response_model=SearchOut, summary="Uploaded image (+ text, + weighted terms)")
    def search_image(file: UploadFile = File(...), text: str = Form("", max_length=500),
                     terms: str = Form("[]", max_length=20_000), k: int = Form(10, ge=1, le=MAX_K)) -> SearchOut:
        img = read_upload(file, max_upload_bytes)
        return _results(searcher, Query(text=text or None, image=img, terms=parse_terms(terms)), k)


def _add_image_routes(app: FastAPI, searcher: Searcher, max_upload_bytes: int) -> None:
    @app.get("/api/images/{image_id}", summary="Metadata of an indexed image")
    def image_record(image_id: int) -> dict[str, Any]:
        try:
            r = searcher.index.record(image_id)
        except UnknownId as exc:
            raise HTTPException(404, str(exc)) from None
        return {k: r[k] for k in ("id", "path", "url", "caption", "width", "height")}

    @app.get("/api/images/{image_id}/thumbnail", summary="JPEG thumbnail of an indexed image",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    def thumbnail(image_id: int) -> Response:
        data = _thumbnail_bytes(searcher, image_id)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/api/images/{image_id}/captions", response_model=SearchOut, summary="Indexed image -> captions")
    def captions_by_id(image_id: int, k: int = Q(5, ge=1, le=MAX_K)) -> SearchOut:
        return _captions(searcher, Query(image_id=image_id), k)

    @app.post("/api/captions/image", response_model=SearchOut, summary="Uploaded image -> indexed captions")
    def captions_upload(file: UploadFile = File(...), k: int = Form(5, ge=1, le=MAX_K)) -> SearchOut:
        return _captions(searcher, Query(image=read_upload(file, max_upload_bytes)), k)


def _captions(searcher: Searcher, q: Query, k: int) -> SearchOut:
    if searcher.index.captions is None:
        raise HTTPException(404, "no captions were indexed in this index")
    return _run(searcher.captions, q, k)


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
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
    except Exception:
        raise HTTPException(404, f"image {image_id}: the indexed file can no longer be read") from None
    return buf.getvalue()


def read_upload(file: UploadFile, max_bytes: int) -> Image.Image:
    """The uploaded bytes as an RGB image: 413 if over ``max_bytes``, 400 if not a readable image."""
    data = file.file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise HTTPException(413, f"upload {file.filename!r}: larger than {max_bytes} bytes; send a smaller image")
    if not data:
        raise HTTPException(400, f"upload {file.filename!r}: empty file; send a JPEG, PNG or WebP image")
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_PIXELS:
            raise HTTPException(400, f"upload {file.filename!r}: {img.width}x{img.height} pixels is too many; downscale it")
        img.load()
        return img.convert("RGB")
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


def _install_error_handlers(app: FastAPI, max_upload_bytes: int) -> None:
    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        # Refuse declared-oversized bodies before reading them (multipart overhead allowed).
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_upload_bytes + 64 * 1024:
            return JSONResponse({"detail": f"request body larger than {max_upload_bytes} bytes"}, status_code=413)
        return await call_next(request)

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


def serve(index_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, model_dir: str | None = None,
          log_level: str = "info") -> None:
    """Load the index and its model, then serve the API and page with uvicorn."""
    encoder = None
    if model_dir:
        encoder = load_bundle(model_dir)
    app = create_app(Searcher.open(index_dir, encoder))
    uvicorn.run(app, host=host, port=port, log_level=log_level)
