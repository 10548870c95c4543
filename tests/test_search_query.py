"""Queries: composition math, and semantic checks on a colour/shape collection with constructed embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from openalign.errors import UserError
from openalign.search.build import build_index
from openalign.search.query import Query, Searcher, Term, UnknownId, compose

from search_helpers import ToyEncoder, draw, make_collection


@pytest.fixture(scope="module")
def toy_index(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toysearch")
    make_collection(root / "images", per_kind=3)
    build_index(root / "index", None, images=str(root / "images"), num_workers=0, encoder=ToyEncoder())
    return root / "index"


@pytest.fixture(scope="module")
def searcher(toy_index: Path) -> Searcher:
    return Searcher.open(toy_index, ToyEncoder())


def kinds(hits) -> list[str]:
    return [h.caption for h in hits]


def test_compose_matches_plain_computation():
    rng = np.random.default_rng(0)
    img, blue, red = (rng.normal(size=8) * s for s in (3.0, 0.5, 2.0))
    n = lambda v: v / np.linalg.norm(v)  # noqa: E731
    want = n(n(img) + 0.7 * n(blue) - 1.2 * n(red))
    np.testing.assert_allclose(compose([img, blue, red], [1.0, 0.7, -1.2]), want, rtol=1e-5, atol=1e-6)


def test_embed_arithmetic_matches_plain_computation(searcher: Searcher):
    enc = ToyEncoder()
    im = draw("red", "circle", seed=3)
    got = searcher.embed(Query(image=im, terms=(Term("blue", 1.0), Term("red", -1.0))))
    i, b, r = enc.encode_images([im])[0].numpy(), *enc.encode_texts(["blue", "red"]).numpy()
    want = (i + b - r) / np.linalg.norm(i + b - r)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_text_query_returns_named_attributes(searcher: Searcher):
    assert kinds(searcher.search(Query(text="blue square"), k=3)) == ["a blue square"] * 3
    assert kinds(searcher.search(Query(text="green triangle"), k=3)) == ["a green triangle"] * 3


def test_red_circle_plus_blue_minus_red_gives_blue_circles(searcher: Searcher):
    red_circle = next(i for i in range(searcher.index.count) if searcher.index.record(i)["caption"] == "a red circle")
    by_id = searcher.search(Query(image_id=red_circle, terms=(Term("blue"), Term("red", -1.0))), k=3)
    assert kinds(by_id) == ["a blue circle"] * 3
    uploaded = searcher.search(Query(image=draw("red", "circle", seed=77), terms=(Term("blue"), Term("red", -1.0))), k=3)
    assert kinds(uploaded) == ["a blue circle"] * 3


def test_image_query_and_captions(searcher: Searcher):
    assert kinds(searcher.search(Query(image=draw("green", "square", seed=5)), k=3)) == ["a green square"] * 3
    caps = searcher.captions(Query(image=draw("blue", "triangle", seed=9)), k=1)
    assert caps[0].caption == "a blue triangle"


def test_bad_queries_are_user_errors(searcher: Searcher):
    with pytest.raises(UserError, match="empty"):
        searcher.search(Query())
    with pytest.raises(UnknownId):
        searcher.search(Query(image_id=10_000))
    with pytest.raises(UserError, match="cancel"):
        searcher.search(Query(text="red", terms=(Term("red", -1.0),)))


def test_index_records_thumbnails_and_model(searcher: Searcher):
    m = searcher.index.manifest
    assert m["count"] == 27 and m["model"]["name"] == "toy-colour-shape" and m["captions_indexed"]
    thumb = searcher.index.thumbnail(0)
    assert thumb[:2] == b"\xff\xd8"  # JPEG
