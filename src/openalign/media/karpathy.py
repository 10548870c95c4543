"""Karpathy-split JSON (Flickr30K, MSCOCO): images of one split with their captions.

``{"images": [{"filepath"?, "filename", "split", "sentences": [{"raw": ...}]}]}``; paths resolve
under ``image_root``. Read by retrieval evaluation, retrieval fine-tuning and the synthetic corpus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openalign.errors import UserError


@dataclass
class KarpathySplit:
    image_paths: list[str]
    texts: list[str]
    text_to_image: list[int]  # caption j belongs to image text_to_image[j]


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path}: file not found; pass --karpathy-json with a Karpathy-split JSON "
                        "(e.g. dataset_flickr30k.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); fix the file") from None


def _captions(path: Path, i: int, entry: dict) -> list[str]:
    sents = entry.get("sentences")
    if not isinstance(sents, list) or not sents:
        raise UserError(f"{path}: images[{i}].sentences missing or empty; give each image a list of "
                        "{\"raw\": caption} objects")
    out = []
    for j, s in enumerate(sents):
        raw = s.get("raw") if isinstance(s, dict) else None
        if raw is None and isinstance(s, dict) and isinstance(s.get("tokens"), list):
            raw = " ".join(s["tokens"])
        if not isinstance(raw, str) or not raw.strip():
            raise UserError(f"{path}: images[{i}].sentences[{j}].raw missing or empty; set it to the caption text")
        out.append(raw.strip())
    return out


def read_karpathy(karpathy_json: str | Path, image_root: str | Path, split: str = "test") -> KarpathySplit:
    """Images of ``split`` (paths under ``image_root``/filepath/filename) and their captions."""
    path, root = Path(karpathy_json), Path(image_root)
    data = _load_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise UserError(f"{path}: field 'images' missing or not a list; expected "
                        "{\"images\": [{\"filename\", \"split\", \"sentences\"}]} (Karpathy split)")
    if not root.is_dir():
        raise UserError(f"{root}: image root not found; pass --image-root with the folder holding the images")
    out = KarpathySplit([], [], [])
    for i, entry in enumerate(images):
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            raise UserError(f"{path}: images[{i}].filename missing; every image needs a 'filename'")
        if entry.get("split") != split:
            continue
        caps = _captions(path, i, entry)
        out.image_paths.append(str(root / (entry.get("filepath") or "") / entry["filename"]))
        out.text_to_image += [len(out.image_paths) - 1] * len(caps)
        out.texts += caps
    if not out.image_paths:
        splits = sorted({str(e.get("split")) for e in images if isinstance(e, dict)})
        raise UserError(f"{path}: no images with split {split!r}; splits present: {', '.join(splits) or 'none'}; "
                        "pass --split")
    if not any(Path(p).is_file() for p in out.image_paths[:1000]):
        raise UserError(f"{root}: none of the listed images found (first expected: {out.image_paths[0]}); "
                        "check --image-root")
    return out
