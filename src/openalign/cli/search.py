"""``openalign search``: text, image or image + weighted text terms against an index; prints a table."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search an index by text, image, or image + / - text terms")
    p.add_argument("--index", required=True, help="index directory (openalign index build)")
    p.add_argument("--text", default=None, help="text query")
    p.add_argument("--image", default=None, help="query image file")
    p.add_argument("--image-id", type=int, default=None, help="query by an indexed image id")
    p.add_argument("--add", action="append", default=[], metavar="TEXT", help="add a text term (repeatable)")
    p.add_argument("--subtract", action="append", default=[], metavar="TEXT", help="subtract a text term (repeatable)")
    p.add_argument("--weight", type=float, default=1.0, help="weight of every --add/--subtract term")
    p.add_argument("--captions", action="store_true", help="return indexed captions instead of images")
    p.add_argument("-k", type=int, default=10, help="number of results")
    p.add_argument("--model", default=None, help="model directory (default: the one in the manifest)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.set_defaults(func=_search)


def _search(args: argparse.Namespace) -> int:
    from openalign.errors import UserError
    from openalign.search.query import Query, Searcher, Term

    if args.k < 1:
        raise UserError(f"-k: {args.k} is not a positive number of results")
    image = _open_image(args.image) if args.image else None
    encoder = None
    if args.model:
        from openalign.models.bundle import load_bundle

        encoder = load_bundle(args.model)
    terms = tuple(Term(t, args.weight) for t in args.add) + tuple(Term(t, -args.weight) for t in args.subtract)
    searcher = Searcher.open(args.index, encoder)
    q = Query(text=args.text, image=image, image_id=args.image_id, terms=terms)
    hits = searcher.captions(q, args.k) if args.captions else searcher.search(q, args.k)
    if args.json:
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
