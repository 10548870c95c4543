"""The evaluator protocol shared by every evaluation: config in, named metrics out, files written.

An evaluator is a function ``run(bundle, config, ctx) -> EvalResult`` registered with its frozen
config dataclass under a kind name ("retrieval", "zeroshot", "linear_probe", "knn"). The CLI,
``openalign eval all`` and Python callers go through :func:`run_evaluation`, and
:func:`write_result` writes ``<name>.json``, ``<name>.md`` and, where the evaluator draws one,
``<name>.png`` -- the same layout for every evaluation.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from openalign.errors import UserError
from openalign.io import atomic_write_text
from openalign.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalContext:
    """How to run (not what to measure): shared by every evaluation of one model."""

    batch_size: int = field(default=64, metadata={"help": "images per forward pass"})
    # 2 decoding processes keep a forward pass fed on real JPEG sets (the CLI's documented default)
    workers: int = field(default=2, metadata={"help": "image decoding processes (0 = in the main process)"})
    cache_dir: str | None = field(default=None, metadata={"help": "reuse image embeddings cached in this folder"})
    progress: bool = field(default=True, metadata={"help": "progress bars"})


@dataclass
class EvalResult:
    name: str  # this evaluation's name, e.g. "flickr30k"
    kind: str  # the evaluator, e.g. "retrieval"
    metrics: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)  # counts, skipped files, resolved config
    markdown: str = ""  # the evaluator's own table; a generic metric table when empty
    plot: Callable[[Path], None] | None = None  # draws a PNG to the given path

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "metrics": self.metrics, "info": self.info}


@dataclass(frozen=True)
class Evaluator:
    kind: str
    config_cls: type
    run: Callable[[Any, Any, EvalContext], EvalResult]


EVALUATORS: Registry[Evaluator] = Registry("evaluator")


def register_evaluator(kind: str, config_cls: type) -> Callable:
    """Decorator: ``@register_evaluator("knn", KnnConfig)`` on ``run(bundle, cfg, ctx)``."""

    def deco(fn: Callable) -> Callable:
        EVALUATORS.register(kind)(Evaluator(kind, config_cls, fn))
        return fn

    return deco


BUILTIN_MODULES = ("openalign.evals.retrieval", "openalign.evals.classification")


def _load_builtin() -> None:
    for name in BUILTIN_MODULES:  # importing a module registers its evaluators
        importlib.import_module(name)


def get_evaluator(kind: str) -> Evaluator:
    _load_builtin()
    if kind not in EVALUATORS:
        raise UserError(f"unknown evaluation type {kind!r}; known: {', '.join(EVALUATORS.names())}")
    return EVALUATORS.get(kind)


def parse_config(config_cls: type, data: dict[str, Any], source: str = "config") -> Any:
    """Build a frozen config from a dict; unknown or missing fields raise a one-line UserError."""
    hints = typing.get_type_hints(config_cls)
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"{source}: unknown field(s) {', '.join(unknown)} for {config_cls.__name__}; "
                        f"known: {', '.join(sorted(fields))}")
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"{source}: missing field(s) {', '.join(missing)} for {config_cls.__name__}")
    kwargs = {}
    for name, value in data.items():
        if typing.get_origin(hints[name]) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return config_cls(**kwargs)


def run_evaluation(bundle: Any, kind: str, config: Any, ctx: EvalContext | None = None) -> EvalResult:
    """Run one evaluation; ``config`` is the evaluator's config dataclass or a plain dict."""
    ev = get_evaluator(kind)
    if isinstance(config, dict):
        config = parse_config(ev.config_cls, config, source=f"{kind} config")
    return ev.run(bundle, config, ctx or EvalContext())


def metrics_markdown(metrics: dict[str, float]) -> str:
    rows = ["| metric | value |", "|---|---:|"]
    rows += [f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    return "\n".join(rows) + "\n"


def result_markdown(result: EvalResult, model: str = "") -> str:
    head = f"## {result.name} ({result.kind})\n\n"
    if model:
        head += f"Model: `{model}`\n\n"
    body = result.markdown or metrics_markdown(result.metrics)
    notes = ""
    skipped = result.info.get("skipped_images", 0)
    if skipped:
        notes = f"\n{skipped} unreadable image(s) skipped (listed in the JSON).\n"
    return head + body + notes


def write_result(result: EvalResult, out_dir: str | Path, model: str = "") -> dict[str, Path]:
    """Write ``<name>.json`` + ``<name>.md`` (+ ``<name>.png``) into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / f"{result.name}.json", "md": out / f"{result.name}.md"}
    payload = dict(result.to_json(), model=model)
    atomic_write_text(files["json"], json.dumps(payload, indent=2, default=str) + "\n")
    md = result_markdown(result, model)
    if result.plot is not None:
        files["png"] = out / f"{result.name}.png"
        _draw(result.plot, files["png"])
        md += f"\n![{result.name}]({files['png'].name})\n"
    atomic_write_text(files["md"], md)
    return files


def _draw(plot: Callable[[Path], None], path: Path) -> None:
    import matplotlib  # lazy: only when a figure is written; pyplot must come after choosing Agg

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        plot(path)
    finally:
        plt.close("all")
