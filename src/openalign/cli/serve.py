"""``openalign serve``: the search HTTP API and web page over one index (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse

from openalign.cli._config_args import defer


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve an index over HTTP (API + web page)")
    defer(p, _add_flags)
    p.set_defaults(func=_serve)


def _add_flags(p: argparse.ArgumentParser) -> None:
    from openalign.cli._config_args import add_config_flags
    from openalign.search.server import ServeConfig  # here, not at the top: see LazyParser

    add_config_flags(p, ServeConfig)


def _serve(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from openalign.cli._config_args import config_from_args
    from openalign.errors import UserError
    from openalign.search.server import ServeConfig, serve

    cfg = config_from_args(ServeConfig, args)
    if not 0 < cfg.port < 65536:
        raise UserError(f"--port: {cfg.port} is not a TCP port (1-65535)")
    if cfg.max_upload_bytes < 1:
        raise UserError(f"--max-upload-bytes: {cfg.max_upload_bytes} must be at least 1")
    serve(**asdict(cfg))
    return 0
