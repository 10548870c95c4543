"""Checkpoints: ``checkpoints/step-N/`` with model, optimizer, schedule, RNG and data state.

Tensors go to safetensors and everything else to JSON, so loading a checkpoint never unpickles:

* ``model.safetensors``: the model's state dict;
* ``optimizer.safetensors``: the optimizer's per-parameter tensors (moments, step counts);
* ``rng.safetensors``: each rank's torch (and CUDA) generator states, keys ``rank{r}.{name}``;
* ``state.json``: ``step``, ``trainer`` (the caller's bookkeeping), ``optimizer`` (param groups and
  non-tensor state), ``scheduler`` and ``scaler`` (state dicts, or null), and ``ranks``: per rank
  ``{"rng": python/numpy RNG state, "data": the data readers' positions}``;
* ``meta.json``: format, step and the SHA-256 of every other file.

A checkpoint is written into a temp folder, the SHA-256 of every file recorded in ``meta.json``
(written last, fsynced), the folder fsynced and then renamed into place. The other files are not
fsynced one by one: loading verifies the checksums, so a file a crash left truncated is caught,
and the previous checkpoint is used instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from openalign.io import atomic_write_text, fsync_dir

log = logging.getLogger(__name__)


class CheckpointError(Exception):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


# -- optimizer state <-> (tensors, json) ----------------------------------------------------------
def split_optimizer_state(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# -- RNG --------------------------------------------------------------------------------------
def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    np_state = np.random.get_state()
    meta = {"python": _jsonable(random.getstate()),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"cuda.{i}" in tensors:
                torch.cuda.set_rng_state(tensors[f"cuda.{i}"], i)
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npm = meta["numpy"]
    np.random.set_state((npm[0], np.array(npm[1], dtype=np.uint32), *npm[2:]))


def _jsonable(x: Any) -> Any:
    if isinstance(x, tuple):
        return [_jsonable(v) for v in x]
    return x


# -- save / load ------------------------------------------------------------------------------
def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict,
    rank_states: list[dict],
    scaler: Any = None,
    keep: int = 3,
) -> Path:
    """Write ``ckpt_dir/step-N`` atomically (rank 0); keep the newest ``keep``.

    ``rank_states[r]`` is rank r's ``{"rng_tensors": ..., "rng_meta": ..., "data": ...}``, the first two
    from :func:`rng_state`.
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step-{step:08d}"
    tmp = ckpt_dir / f".tmp-step-{step:08d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _save_tensors(model.state_dict(), tmp / "model.safetensors")
    opt_tensors, opt_meta = split_optimizer_state(optimizer.state_dict())
    _save_tensors(opt_tensors, tmp / "optimizer.safetensors")
    rng_tensors: dict[str, torch.Tensor] = {}
    for r, st in enumerate(rank_states):
        for k, v in st["rng_tensors"].items():
            rng_tensors[f"rank{r}.{k}"] = v
    _save_tensors(rng_tensors, tmp / "rng.safetensors")
    state = {
        "step": step,
        "trainer": trainer_state,
        "optimizer": opt_meta,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ranks": [{"rng": st["rng_meta"], "data": st["data"]} for st in rank_states],
    }
    (tmp / "state.json").write_text(json.dumps(state, default=_json_default))
    files = sorted(p.name for p in tmp.iterdir())
    meta = {"format": "openalign-checkpoint/1", "step": step, "files": {f: _sha256(tmp / f) for f in files}}
    atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2))
    fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    fsync_dir(ckpt_dir)
    prune(ckpt_dir, keep)
    return final


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.item() if o.numel() == 1 else o.tolist()
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    raise TypeError(f"cannot save {type(o).__name__} in a checkpoint's JSON")


def prune(ckpt_dir: Path, keep: int) -> None:
    steps = list_checkpoints(ckpt_dir)
    for p in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step-"))


def verify(path: Path) -> dict:
    """Return meta.json of a complete checkpoint, or raise CheckpointError saying what is wrong."""
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise CheckpointError(f"{path}: no meta.json (checkpoint incomplete)")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{meta_file}: unreadable ({exc})") from None
    for name, digest in meta["files"].items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing")
        if _sha256(f) != digest:
            raise CheckpointError(f"{f}: checksum mismatch (truncated or corrupted file)")
    return meta


def find_latest_valid(ckpt_dir: Path) -> Path | None:
    """Newest checkpoint whose files all match their checksums; bad ones are reported and skipped."""
    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            verify(path)
            return path
        except CheckpointError as exc:
            log.error("refusing checkpoint: %s; trying the previous one", exc)
    return None


def load_checkpoint(path: Path) -> dict:
    """Load a verified checkpoint into plain dicts (no unpickling).

    The ``state.json`` keys, with ``model`` and ``optimizer`` as state dicts, and each of ``ranks``
    given back its ``rng_tensors`` (pass them with its ``rng`` to :func:`set_rng_state`).
    """
    verify(path)
    state = json.loads((path / "state.json").read_text())
    state["model"] = load_file(str(path / "model.safetensors"))
    state["optimizer"] = join_optimizer_state(load_file(str(path / "optimizer.safetensors")), state["optimizer"])
    rng = load_file(str(path / "rng.safetensors"))
    for r, rs in enumerate(state["ranks"]):
        prefix = f"rank{r}."
        rs["rng_tensors"] = {k[len(prefix):]: v for k, v in rng.items() if k.startswith(prefix)}
    return state
