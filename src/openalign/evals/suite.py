"""``openalign eval all``: a suite file (JSON or YAML list of evaluations) -> one report.

Suite layout (a bare list works too)::

    evaluations:
      - {type: retrieval, name: flickr30k, karpathy_json: flickr/dataset_flickr30k.json, image_root: flickr/images}
      - {type: zeroshot, name: imagenet, data: imagenet/val, classnames: imagenet1k}
      - {type: linear_probe, train: cifar/train, test: cifar/test}
      - {type: knn, train: cifar/train, test: cifar/test}

Each entry is an evaluator's config plus ``type``; relative paths are resolved against the suite
file's folder when they exist there. Every entry is validated before the first one runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from openalign.errors import UserError
from openalign.evals.base import (
    EvalContext,
    EvalResult,
    get_evaluator,
    parse_config,
    result_markdown,
    run_evaluation,
    write_result,
)
from openalign.io import atomic_write_text

PATH_FIELDS = ("karpathy_json", "image_root", "data", "train", "test", "val", "classnames", "templates")
HEADLINE = {"retrieval": "mean_recall", "zeroshot": "top1", "linear_probe": "top1", "knn": "top1"}


def _read_suite_file(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path}: suite file not found; pass --suite with a JSON or YAML list of evaluations")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml  # lazy: only YAML suites need PyYAML

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: cannot parse YAML ({str(exc).splitlines()[0]}); fix the file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); fix the file") from None


def load_suite(path: str | Path) -> list[tuple[str, Any]]:
    """[(kind, config dataclass)], validated, paths resolved against the suite's folder."""
    path = Path(path)
    data = _read_suite_file(path)
    entries = data.get("evaluations") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: field 'evaluations' missing or empty; expected a list of "
                        "{type: retrieval|zeroshot|linear_probe|knn, ...} entries")
    out, names = [], set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "type" not in entry:
            raise UserError(f"{path}: evaluations[{i}].type missing; set it to retrieval, zeroshot, "
                            "linear_probe or knn")
        fields = {k: _resolve(path.parent, k, v) for k, v in entry.items() if k != "type"}
        ev = get_evaluator(str(entry["type"]))
        fields.setdefault("name", ev.kind)
        if fields["name"] in names:
            raise UserError(f"{path}: evaluations[{i}].name {fields['name']!r} is used twice; give each a name")
        names.add(fields["name"])
        out.append((ev.kind, parse_config(ev.config_cls, fields, source=f"{path}: evaluations[{i}]")))
    return out


def _resolve(base: Path, key: str, value: Any) -> Any:
    if key in PATH_FIELDS and isinstance(value, str) and not Path(value).is_absolute() and (base / value).exists():
        return str(base / value)
    return value


def run_suite(bundle: Any, suite: list[tuple[str, Any]], out_dir: str | Path, ctx: EvalContext | None = None,
              model: str = "") -> list[EvalResult]:
    """Run each evaluation, write its files, then ``report.json`` + ``report.md`` in ``out_dir``."""
    results = []
    for kind, cfg in suite:
        result = run_evaluation(bundle, kind, cfg, ctx)
        write_result(result, out_dir, model=model)
        results.append(result)
    write_report(results, out_dir, model)
    return results


def write_report(results: list[EvalResult], out_dir: str | Path, model: str = "") -> None:
    out = Path(out_dir)
    payload = {"model": model, "results": [r.to_json() for r in results]}
    atomic_write_text(out / "report.json", json.dumps(payload, indent=2, default=str) + "\n")
    lines = ["# OpenALIGN evaluation report", "", f"Model: `{model}`" if model else "", "",
             "| evaluation | type | headline metric | value |", "|---|---|---|---:|"]
    for r in results:
        key = HEADLINE.get(r.kind, next(iter(r.metrics)))
        lines.append(f"| {r.name} | {r.kind} | {key} | {r.metrics[key]:.2f} |")
    body = "\n".join(lines) + "\n\n"
    for r in results:
        body += result_markdown(r).replace("## ", "### ", 1) + "\n"
        if r.plot is not None:
            body += f"![{r.name}]({r.name}.png)\n\n"
    atomic_write_text(out / "report.md", body)
