"""Arguments and output shared by the ``openalign eval ...`` subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_common_args(p: argparse.ArgumentParser, default_out: str = "eval_results") -> None:
    p.add_argument("--model", required=True, help="model directory (ours or the kakaobrain/align-base layout)")
    p.add_argument("--out", default=default_out, help="folder for <name>.json/.md/.png (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="image decoding processes (default: %(default)s)")
    p.add_argument("--cache-dir", default=None, help="reuse image embeddings cached in this folder")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: %(default)s)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the encoders")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def context_from_args(args: argparse.Namespace):
    from openalign.evals.base import EvalContext

    return EvalContext(batch_size=args.batch_size, workers=args.workers, cache_dir=args.cache_dir,
                       progress=not args.no_progress)


def load_model(args: argparse.Namespace) -> Any:
    from openalign.errors import UserError
    from openalign.models.bundle import load_bundle

    path = Path(args.model)
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: no config.json; pass --model with a directory written by `openalign train` "
                        "or a downloaded kakaobrain/align-base folder")
    return load_bundle(path, device=args.device, bf16=args.bf16)


def run_and_report(args: argparse.Namespace, kind: str, config: Any) -> int:
    """Load the model, run one evaluation, print its table, write JSON + Markdown (+ PNG)."""
    from openalign.evals.base import result_markdown, run_evaluation, write_result

    bundle = load_model(args)
    result = run_evaluation(bundle, kind, config, context_from_args(args))
    print(result_markdown(result, args.model))
    files = write_result(result, args.out, model=args.model)
    print("wrote " + ", ".join(str(f) for f in files.values()))
    return 0
