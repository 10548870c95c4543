"""Labelled image sets: an ImageFolder tree (``root/<class>/<image>``, classes in sorted folder order,
as torchvision) or a CSV with a header and columns ``path,label`` (paths relative to ``image_root``,
default the CSV's folder). Read by the classification evaluations and classification fine-tuning.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from openalign.errors import UserError
from openalign.media.images import IMAGE_SUFFIXES, list_images


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
