"""``openalign serve``: the search HTTP API and web page over one index (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve an index over HTTP (API + web page)")
    p.add_argument("--index", required=True, help="index directory (openalign index build)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default=None, help="model directory (default: the one in the manifest)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from openalign.errors import UserError
    from openalign.search.server import serve

    if not 0 < args.port < 65536:
        raise UserError(f"--port: {args.port} is not a TCP port (1-65535)")
    serve(args.index, host=args.host, port=args.port, model_dir=args.model)
    return 0
