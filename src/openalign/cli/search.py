"""``openalign search``: text, image or image + weighted text terms against an index; prints a table."""

from __future__ import annotations

import argparse
import json

from openalign.cli._config_args import defer


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search an index by text, image, or image + / - text terms")
    defer(p, _add_flags)
    p.set_defaults(func=_search)


def _add_flags(p: argparse.ArgumentParser) -> None:
    from openalign.cli._config_args import add_config_flags
    from openalign.search.query import SearchOptions  # here, not at the top: see LazyParser

    add_config_flags(p, SearchOptions)


def _search(args: argparse.Namespace) -> int:
    from openalign.cli._config_args import config_from_args
    from openalign.errors import UserError
    from openalign.search.query import Query, Searcher, SearchOptions, Term

    o = config_from_args(SearchOptions, args)
    if o.k < 1:
        raise UserError(f"-k: {o.k} is not a positive number of results")
    image = _open_image(o.image) if o.image else None
    encoder = None
    if o.model_dir:
        from openalign.models.bundle import load_bundle

        encoder = load_bundle(o.model_dir)
    terms = tuple(Term(t, o.weight) for t in o.add) + tuple(Term(t, -o.weight) for t in o.subtract)
    searcher = Searcher.open(o.index, encoder)
    q = Query(text=o.text, image=image, image_id=o.image_id, terms=terms)
    hits = searcher.captions(q, o.k) if o.captions else searcher.search(q, o.k)
    if o.json:
        for h in hits:
            print(json.dumps(h.to_dict()))
    else:
        print(format_table(hits))
    return 0


def _open_image(path: str):
    from PIL import Image

    from openalign.errors import UserError

    try:
        img = Image.open(path)
        img.load()
        return img.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"--image {path}: file not found") from None
    except Exception:
        raise UserError(f"--image {path}: not a readable image; pass a JPEG, PNG or WebP file") from None


def format_table(hits) -> str:
    rows = [("rank", "id", "score", "caption", "path/url")]
    for r, h in enumerate(hits, 1):
        cap = (h.caption or "")[:48]
        rows.append((str(r), str(h.id), f"{h.score:.4f}", cap, h.path or h.url or ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4] for row in rows]
    return "\n".join(lines)
