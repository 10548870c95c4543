"""Labelled image sets for classification evaluations, and CLIP_benchmark-style class names/templates.

A labelled set is an ImageFolder tree (``root/<class>/<image>``, classes in sorted folder order, as
torchvision) or a CSV with a header and columns ``path,label`` (paths relative to ``image_root``,
default the CSV's folder). Class names and templates use CLIP_benchmark's JSON layout: a dict from
dataset name to a list (``{"imagenet1k": ["tench", ...]}``), or a bare list; templates hold ``{c}``.
The 1000 ImageNet class names and CLIP's 80 ImageNet templates ship as ``imagenet1k``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from openalign.errors import UserError
from openalign.media.images import IMAGE_SUFFIXES, list_images

BUILTIN = "imagenet1k"
SINGLE_TEMPLATE = "a photo of a {c}."
CLASSNAMES_ASSET = "en_classnames.json"
TEMPLATES_ASSET = "en_zeroshot_classification_templates.json"


@dataclass
class LabeledImages:
    paths: list[str]
    labels: list[int]  # index into classes
    classes: list[str]  # folder names, or the CSV's distinct labels


def read_labeled(source: str | Path, image_root: str | Path | None = None) -> LabeledImages:
    """An ImageFolder directory or a ``path,label`` CSV."""
    src = Path(source)
    if src.is_dir():
        return read_image_folder(src)
    if src.is_file() and src.suffix.lower() == ".csv":
        return read_csv(src, image_root)
    raise UserError(f"{src}: not found or not a folder/.csv; pass an ImageFolder tree (root/<class>/<image>) "
                    "or a CSV with columns path,label")


def read_image_folder(root: Path) -> LabeledImages:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UserError(f"{root}: no class folders; an ImageFolder tree is root/<class>/<image>")
    paths, labels = [], []
    for label, name in enumerate(classes):
        for f in list_images(root / name):
            paths.append(str(f))
            labels.append(label)
    if not paths:
        raise UserError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) under the class folders")
    return LabeledImages(paths, labels, classes)


def read_csv(path: Path, image_root: str | Path | None = None) -> LabeledImages:
    root = Path(image_root) if image_root else path.parent
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        for col in ("path", "label"):
            if col not in fields:
                raise UserError(f"{path}: column {col!r} missing (header: {','.join(fields) or 'empty'}); "
                                "the first line must name the columns path,label")
        rows = [(r["path"], (r["label"] or "").strip()) for r in reader]
    if not rows:
        raise UserError(f"{path}: no rows after the header; add lines of path,label")
    for i, (p, lab) in enumerate(rows):
        if not p or not lab:
            raise UserError(f"{path}: line {i + 2}: empty path or label; every row needs both")
    raw = [lab for _, lab in rows]
    numeric = all(lab.lstrip("-").isdigit() for lab in raw)
    classes = sorted(set(raw), key=int if numeric else str)
    index = {c: i for i, c in enumerate(classes)}
    return LabeledImages([str(root / p) for p, _ in rows], [index[lab] for lab in raw], classes)


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
