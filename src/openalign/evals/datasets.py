"""CLIP_benchmark-style class names and prompt templates for classification evaluations.

Labelled image sets themselves are read by :mod:`openalign.media.labeled`. Class names and
templates use CLIP_benchmark's JSON layout: a dict from dataset name to a list
(``{"imagenet1k": ["tench", ...]}``), or a bare list; templates hold ``{c}``.
The 1000 ImageNet class names and CLIP's 80 ImageNet templates ship as ``imagenet1k``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from openalign.errors import UserError
from openalign.media.labeled import LabeledImages

BUILTIN = "imagenet1k"
SINGLE_TEMPLATE = "a photo of a {c}."
CLASSNAMES_ASSET = "en_classnames.json"
TEMPLATES_ASSET = "en_zeroshot_classification_templates.json"


def _asset(name: str):
    return json.loads(resources.files("openalign.evals").joinpath("assets", name).read_text(encoding="utf-8"))


def _load_list_json(spec: str, dataset: str, what: str, asset: str) -> list[str]:
    """``spec`` is 'imagenet1k' (shipped) or a JSON file in CLIP_benchmark's layout."""
    if spec == BUILTIN:
        data, src = _asset(asset), f"built-in {asset}"
    else:
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"{path}: {what} file not found; pass a JSON file or '{BUILTIN}' for the shipped one")
        try:
            data, src = json.loads(path.read_text(encoding="utf-8")), str(path)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); fix the file") from None
    if isinstance(data, dict):
        if dataset not in data:
            key = next(iter(data)) if len(data) == 1 else None
            if key is None:
                raise UserError(f"{src}: no key {dataset!r}; keys: {', '.join(sorted(data))}; pass --dataset-name")
            dataset = key
        data = data[dataset]
    if not isinstance(data, list) or not data or not all(isinstance(x, str) for x in data):
        raise UserError(f"{src}: field {dataset!r} must be a non-empty list of strings ({what})")
    return data


def load_classnames(spec: str | None, dataset: str, folder_classes: list[str]) -> list[str]:
    """Names for the prompts: a JSON list/dict, 'imagenet1k', or (None) the folder/label names."""
    if spec is None:
        return [c.replace("_", " ") for c in folder_classes]
    return _load_list_json(spec, dataset, "class names", CLASSNAMES_ASSET)


def load_templates(spec: str | None, dataset: str) -> list[str]:
    """Prompt templates: 'none' = the single prompt 'a photo of a {c}.', 'imagenet1k' = CLIP's 80, or a JSON."""
    if spec is None or spec.lower() == "none":
        return [SINGLE_TEMPLATE]
    templates = _load_list_json(spec, dataset, "templates", TEMPLATES_ASSET)
    bad = [t for t in templates if "{c}" not in t]
    if bad:
        raise UserError(f"{spec}: template {bad[0]!r} has no {{c}} placeholder; write the class name slot as {{c}}")
    return templates


def assign_classnames(data: LabeledImages, names: list[str], source: str) -> list[str]:
    """One prompt name per label of ``data``.

    Integer labels index ``names``; otherwise labels map to ``names`` by sorted position (ImageFolder,
    as torchvision) when the counts agree, or are already names found in ``names``.
    """
    if all(c.lstrip("-").isdigit() for c in data.classes):
        idx = [int(c) for c in data.classes]
        if min(idx) < 0 or max(idx) >= len(names):
            raise UserError(f"{source}: label {max(idx) if max(idx) >= len(names) else min(idx)} is outside "
                            f"the {len(names)} class names; integer labels index the class-name list")
        return [names[i] for i in idx]
    if len(names) == len(data.classes):
        return names
    if set(data.classes) <= set(names):
        return list(data.classes)
    raise UserError(f"{source}: {len(names)} class names for {len(data.classes)} classes in the data; "
                    "give one name per class folder/label, in sorted order")
