"""Score filtering (beyond the paper): each pair's image-text cosine under a trained dual encoder.

ALIGN trains on the noisy pairs as they are; LAION later showed that keeping only pairs a
contrastive model scores above a threshold is a cheap, strong filter. ``openalign data score``
adds that score (``similarity``, LAION's field name) to every pair of the training shards and can
filter on it. Two passes:

1. **score** (the model's pass, resumable): every shard's pairs go through the one embedding
   pipeline (:func:`openalign.models.embed.embed_batches`: DataLoader workers decode, the main
   process embeds); captions go through ``bundle.encode_texts`` batch by batch. Each shard's
   result is one Parquet part, ``OUT/scores/NAME.parquet``, written atomically: the commit point.
   A killed run, started again, skips every shard that has its part. ``OUT/score_manifest.json``
   records the model identity; a rerun with another model is refused.
2. **select and write** (no model): the threshold is computed over the whole corpus's scores
   (``min_score``, and/or ``keep_fraction``: exactly the top ``round(F * N)`` pairs), then
   ``format="shards"`` rewrites each shard into ``OUT/NAME.tar`` with the kept samples, the score
   added to each ``KEY.json`` (resumable too: ``OUT/write_progress.json``), or ``format="parquet"``
   writes ``OUT/scores.parquet`` (key, shard, url, caption, similarity) of the kept pairs.

A sample whose image does not decode, or that has no caption, cannot be scored: it is skipped,
counted by reason, and left out of the output. ``OUT/score_stats.json`` has the counts, the
threshold used and what was kept; it is derived from the parts alone, so a resumed run writes the
same file as an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from openalign.errors import UserError
from openalign.io import atomic_write_text, atomic_write_with
from openalign.media.images import to_rgb
from openalign.media.shards import (
    Members,
    decode_image,
    group_meta,
    is_local,
    read_tar_groups,
    resolve_shards,
    sample_caption,
    split_member,
    write_tar,
)
from openalign.models.bundle import load_bundle
from openalign.models.embed import compute_identity, embed_batches, model_identity

log = logging.getLogger(__name__)

FORMAT = "openalign-scores/1"
MANIFEST = "score_manifest.json"
STATS_FILE = "score_stats.json"
WRITE_PROGRESS = "write_progress.json"
TABLE_FILE = "scores.parquet"
PARTS_DIR = "scores"
_SHARD_DONE = "_shard_done"  # marker item: a worker has sent every item of a shard
_PAD = "_pad"  # filler item: ends a shard's last batch
_PART_META = b"openalign_score"
PART_COLUMNS = ("key", "shard", "url", "caption", "similarity", "skipped")


@dataclass(frozen=True)
class ScoreConfig:
    model_dir: str = field(metadata={
        "flag": "--model", "help": "dual encoder directory (openalign train output or the align-base layout)"})
    format: str = field(default="shards", metadata={
        "choices": ("shards", "parquet"),
        "help": "shards: OUT/NAME.tar with 'similarity' in each KEY.json; parquet: OUT/scores.parquet"})
    min_score: float | None = field(default=None, metadata={
        "help": "keep pairs whose cosine is >= this (default: none)"})
    keep_fraction: float | None = field(default=None, metadata={
        "help": "keep the top fraction of pairs by score, over the whole corpus (default: none)"})
    batch_size: int = field(default=64, metadata={"help": "pairs per forward pass"})
    num_workers: int = field(default=2, metadata={"flag": "--workers", "help": "DataLoader workers decoding images"})
    device: str = field(default="auto", metadata={"help": "auto (cuda when available), cpu, cuda, cuda:N"})
    bf16: bool = field(default=False, metadata={"help": "both towers under bf16 autocast (GPUs)"})

    def check(self) -> None:
        if self.min_score is not None and not -1.0 <= self.min_score <= 1.0:
            raise UserError(f"--min-score {self.min_score}: a cosine is in [-1, 1]; pass a value in that range")
        if self.keep_fraction is not None and not 0.0 < self.keep_fraction <= 1.0:
            raise UserError(f"--keep-fraction {self.keep_fraction}: must be in (0, 1], e.g. 0.7 keeps the top 70%")
        if self.batch_size < 1 or self.num_workers < 0:
            raise UserError("--batch-size must be >= 1 and --workers >= 0")


# ---------------------------------------------------------------- pass 1: items of the pipeline


class ShardPairs(torch.utils.data.IterableDataset):
    """Pipeline items of whole shards (worker w takes every n-th shard), a marker after each shard.

    Good item: ``{"pixels", "shard", "pos", "key", "url", "caption"}``; a sample that cannot be
    scored is an error item whose detail holds the same metadata (``collate_items`` keeps only
    (error, detail) of it), and the marker is ``(_SHARD_DONE, {"shard", "broken"})``.
    """

    def __init__(self, urls: Sequence[str], names: Sequence[str], transform: Callable, batch_size: int) -> None:
        super().__init__()
        self.urls, self.names, self.transform, self.batch_size = list(urls), list(names), transform, batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        for j in range(wid, len(self.urls), nw):
            for n, item in enumerate(shard_pairs(self.urls[j], self.names[j], self.transform), 1):
                if item.get("error") == _SHARD_DONE:
                    # fill the shard's last batch, so no batch mixes shards: a shard is embedded in
                    # the same batches however the run was resumed or split over workers, and
                    # batch-dependent float rounding cannot change its scores
                    for _ in range(-n % self.batch_size):
                        yield {"error": _PAD, "detail": {"shard": self.names[j]}}
                yield item


def shard_pairs(url: str, name: str, transform: Callable) -> Iterator[dict[str, Any]]:
    # read whole, as pass 2 reads it to rewrite: the same keys, the same notion of a broken shard
    counts: Counter = Counter()
    for pos, (key, members) in enumerate(read_tar_groups(url, counts).items()):
        sample = {split_member(m.name)[1]: b for m, b in members}
        row = {"shard": name, "pos": pos, "key": key, "url": group_meta(members).get("url"),
               "caption": sample_caption(sample)}
        if not row["caption"]:  # nothing to compare the image with
            yield {"error": "missing_caption" if row["caption"] is None else "empty_caption", "detail": row}
            continue
        img, reason = decode_image(sample)
        if reason is not None:
            yield {"error": reason, "detail": row}
            continue
        try:
            yield {"pixels": transform(to_rgb(img)), **row}
        except Exception:  # noqa: BLE001 -- a bad image is skipped and counted, never fatal
            yield {"error": "corrupt_image", "detail": row}
    yield {"error": _SHARD_DONE, "detail": {"shard": name, "broken": counts["broken_shard"]}}


# ---------------------------------------------------------------- pass 1: parts


class PartWriter:
    """Scores embedded batches and writes each shard's part as soon as its marker arrives."""

    def __init__(self, out: Path, bundle: Any, on_part: Callable[[str], None] | None = None) -> None:
        self.out, self.bundle, self.on_part = out, bundle, on_part
        self.pending: dict[str, list[dict[str, Any]]] = {}  # shard -> its rows so far

    def add(self, batch: dict[str, Any]) -> None:
        rows = batch["rows"]
        if rows:  # rows first: a shard's marker never precedes its rows
            txt = self.bundle.encode_texts([r["caption"] for r in rows], batch_size=len(rows)).float()
            img = torch.from_numpy(np.asarray(batch["vectors"], dtype=np.float32))
            sims = (img * txt).sum(-1).tolist()  # both L2-normalised: the dot product is the cosine
            for r, s in zip(rows, sims):
                self.pending.setdefault(r["shard"], []).append({**r, "similarity": s, "skipped": None})
        for reason, detail in batch["errors"]:
            if reason == _PAD:
                continue
            if reason == _SHARD_DONE:
                self._write(detail["shard"], self.pending.pop(detail["shard"], []), detail["broken"])
            else:
                self.pending.setdefault(detail["shard"], []).append(
                    {**detail, "similarity": None, "skipped": reason})

    def close(self) -> None:
        if self.pending:  # the stream ended before a shard's marker: never record a partial part
            raise RuntimeError(f"scoring stream ended with unfinished shards: {sorted(self.pending)}")

    def _write(self, name: str, rows: list[dict[str, Any]], broken: int) -> None:
        rows = sorted(rows, key=lambda r: r["pos"])
        df = pd.DataFrame({c: [r.get(c) for r in rows] for c in PART_COLUMNS})
        df = df.astype({"key": "string", "shard": "string", "url": "string", "caption": "string",
                        "similarity": "float64", "skipped": "string"})
        table = pa.Table.from_pandas(df, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               _PART_META: json.dumps({"broken_shard_errors": broken})})
        atomic_write_with(part_file(self.out, name), lambda tmp: pq.write_table(table, tmp))
        if self.on_part:
            self.on_part(name)


def part_file(out: Path, name: str) -> Path:
    return out / PARTS_DIR / f"{Path(name).stem}.parquet"


def read_part(out: Path, name: str, columns: Sequence[str] | None = None) -> tuple[pd.DataFrame, int]:
    """A shard's part table and its broken-shard read errors."""
    f = part_file(out, name)
    meta = json.loads((pq.read_schema(f).metadata or {}).get(_PART_META, b"{}"))
    return pq.read_table(f, columns=list(columns) if columns else None).to_pandas(), int(
        meta.get("broken_shard_errors", 0))


# ---------------------------------------------------------------- the run's manifest


def open_run(out: Path, ident: dict[str, Any], compute: dict[str, Any], names: list[str]) -> None:
    """Write the manifest, or check that this rerun is the same model on the same shards."""
    f = out / MANIFEST
    if f.is_file() and any((out / PARTS_DIR).glob("*.parquet")):  # no part yet: nothing to protect
        have = json.loads(f.read_text())
        want_fp, have_fp = ident.get("fingerprint"), (have.get("model") or {}).get("fingerprint")
        if want_fp != have_fp:
            raise UserError(f"--model {ident.get('dir') or ident.get('name')}: {out} was scored with another model "
                            f"({(have.get('model') or {}).get('dir')}, fingerprint {have_fp}); rerun with that "
                            "--model, or use a new --out folder")
        if have.get("shards") != names:
            raise UserError(f"{f}: {out} holds scores of other shards ({len(have.get('shards', []))} listed, "
                            f"{len(names)} given); pass the same shards, or use a new --out folder")
        return
    out.mkdir(parents=True, exist_ok=True)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write_text(f, json.dumps({"format": FORMAT, "model": ident, "compute": compute, "shards": names,
                                     "created": now}, indent=2) + "\n")


def _remove_temp_files(out: Path) -> None:
    """Temp files a killed run left behind (its atomic writes never completed)."""
    for d in (out, out / PARTS_DIR):
        for tmp in d.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# ---------------------------------------------------------------- pass 2: selection


@dataclass
class Selection:
    """Which scored pairs are kept: one boolean mask per part (rows in part order)."""

    masks: dict[str, np.ndarray]
    threshold: float | None  # the score a pair had to reach: max(min_score, the top fraction's cut); None: no filter
    kept: int
    scored: int

    def identity(self, cfg: ScoreConfig) -> dict[str, Any]:
        return {"format": cfg.format, "min_score": cfg.min_score, "keep_fraction": cfg.keep_fraction,
                "threshold": self.threshold, "kept": self.kept, "scored": self.scored}


def select(scores: dict[str, np.ndarray], min_score: float | None, keep_fraction: float | None) -> Selection:
    """Keep pairs with score >= ``min_score`` that are among the top ``round(F * N)`` of the corpus.

    ``scores``: per part, in corpus order, NaN for a pair that was not scored. Ties at the
    fraction's cut keep the earlier pairs (shard order, then position), so exactly that many stay.
    """
    names = list(scores)
    flat = np.concatenate([scores[n] for n in names]) if names else np.zeros(0)
    ok = ~np.isnan(flat)
    keep = ok.copy()
    n = int(ok.sum())
    cuts = [] if min_score is None else [float(min_score)]  # the score a pair must reach, per filter
    if keep_fraction is not None and n:
        k = math.floor(keep_fraction * n + 0.5)  # nearest integer, halves up
        order = np.lexsort((np.arange(len(flat)), -np.where(ok, flat, -np.inf)))  # score desc, then position
        top = np.zeros(len(flat), bool)
        top[order[:k]] = True
        keep &= top
        if k:
            cuts.append(float(flat[order[k - 1]]))
    if min_score is not None:
        keep &= np.where(ok, flat, -np.inf) >= min_score
    threshold = max(cuts) if cuts else None
    bounds = np.cumsum([0] + [len(scores[n]) for n in names])
    masks = {nm: keep[bounds[i]:bounds[i + 1]] for i, nm in enumerate(names)}
    return Selection(masks=masks, threshold=threshold, kept=int(keep.sum()), scored=n)


# ---------------------------------------------------------------- pass 2: writing


def add_similarity(groups: dict[str, Members], kept: dict[str, float]) -> dict[str, Members]:
    """The kept samples, each ``KEY.json`` carrying ``similarity`` (a new KEY.json when there was none)."""
    out: dict[str, Members] = {}
    for key, members in groups.items():
        if key not in kept:
            continue
        meta = group_meta(members)
        meta["similarity"] = kept[key]
        data = json.dumps(meta).encode()
        new: Members = []
        for info, b in members:
            if split_member(info.name)[1] == "json":
                info, b = copy.copy(info), data
                info.size = len(b)
            new.append((info, b))
        if not any(split_member(i.name)[1] == "json" for i, _ in members):
            info = tarfile.TarInfo(f"{key}.json")
            info.size, info.mtime = len(data), members[0][0].mtime if members else 0
            new.append((info, data))
        out[key] = new
    return out


def write_shards(out: Path, urls: list[str], names: list[str], sel: Selection, cfg: ScoreConfig,
                 progress: bool = True) -> int:
    """Rewrite each shard into ``out/NAME.tar`` with its kept samples; returns how many were written now.

    ``write_progress.json`` lists the shards written for this selection: a rerun with the same
    selection skips them; another selection rewrites every shard.
    """
    ident = sel.identity(cfg)
    f = out / WRITE_PROGRESS
    state = json.loads(f.read_text()) if f.is_file() else {}
    done = set(state.get("done", [])) if state.get("selection") == ident else set()
    state = {"selection": ident, "done": sorted(n for n in done if (out / n).is_file())}
    atomic_write_text(f, json.dumps(state, indent=2) + "\n")
    written = 0
    for url, name in tqdm(list(zip(urls, names)), desc="write shards", unit="shard", disable=not progress):
        if name in done and (out / name).is_file():
            continue
        part, _ = read_part(out, name, ["key", "similarity"])
        mask = sel.masks[name]
        kept = dict(zip(part["key"][mask].tolist(), part["similarity"][mask].tolist()))
        groups = add_similarity(read_tar_groups(url, Counter()), kept)
        atomic_write_with(out / name, lambda tmp, g=groups: write_tar(tmp, g))
        state["done"].append(name)
        atomic_write_text(f, json.dumps(state, indent=2) + "\n")  # the commit point of the shard
        written += 1
    return written


def write_table(out: Path, names: list[str], sel: Selection) -> None:
    """``out/scores.parquet``: the kept pairs (key, shard, url, caption, similarity), part by part."""
    cols = ["key", "shard", "url", "caption", "similarity"]
    schema = pa.schema([("key", pa.string()), ("shard", pa.string()), ("url", pa.string()),
                        ("caption", pa.string()), ("similarity", pa.float64())])

    def write(tmp: str) -> None:
        with pq.ParquetWriter(tmp, schema) as w:
            for name in names:
                part, _ = read_part(out, name, cols)
                w.write_table(pa.Table.from_pandas(part[sel.masks[name]], schema=schema, preserve_index=False))

    atomic_write_with(out / TABLE_FILE, write)


# ---------------------------------------------------------------- the whole run


def score_shards(shards: str | list[str], out_dir: str | Path, cfg: ScoreConfig, bundle: Any = None,
                 embed: Callable[..., Iterator[dict[str, Any]]] = embed_batches, progress: bool = True,
                 on_part: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Score every pair of ``shards`` with the model, then select and write (see the module doc).

    ``bundle``: a ready encoder instead of loading ``cfg.model_dir``; ``on_part(name)``: called after
    each shard's part is committed. Returns the stats written to ``score_stats.json`` plus
    ``shards_scored_now`` / ``shards_reused``.
    """
    cfg.check()
    out = Path(out_dir)
    urls = resolve_shards(shards if isinstance(shards, list) else str(shards))
    remote = [u for u in urls if not is_local(u)]
    if remote:
        raise UserError(f"{remote[0]}: data score reads local shards (it rewrites them whole); copy them to a folder")
    names = [Path(u).name for u in urls]
    if len(set(names)) != len(names):
        raise UserError(f"{shards}: two shards share a file name; score writes them under their names into one folder")
    if cfg.format == "shards" and any(Path(u).resolve().parent == out.resolve() for u in urls):
        raise UserError(f"--out {out}: is the folder of the input shards, which would be overwritten; "
                        "pass another --out folder")
    if bundle is None:
        if not Path(cfg.model_dir).is_dir():
            raise UserError(f"--model {cfg.model_dir}: not a folder; pass a model directory written by `openalign train`")
        bundle = load_bundle(cfg.model_dir, device=resolve_device(cfg.device), bf16=cfg.bf16)
    open_run(out, model_identity(bundle), compute_identity(bundle), names)
    _remove_temp_files(out)
    todo = [i for i, n in enumerate(names) if not part_file(out, n).is_file()]
    if todo:
        log.info("scoring %d of %d shards (%d finished before)", len(todo), len(names), len(names) - len(todo))
        score_parts(out, bundle, [urls[i] for i in todo], [names[i] for i in todo], cfg, embed, progress, on_part)
    stats = finish(out, urls, names, cfg, progress)
    return {**stats, "shards_scored_now": len(todo), "shards_reused": len(names) - len(todo)}


def score_parts(out: Path, bundle: Any, urls: list[str], names: list[str], cfg: ScoreConfig,
                embed: Callable[..., Iterator[dict[str, Any]]], progress: bool,
                on_part: Callable[[str], None] | None) -> None:
    """Pass 1 over ``urls``: one committed part per shard, in the order the workers finish them."""
    with tqdm(total=len(urls), desc="score shards", unit="shard", disable=not progress) as bar:
        def committed(name: str) -> None:
            bar.update()
            if on_part:
                on_part(name)

        writer = PartWriter(out, bundle, committed)
        dataset = ShardPairs(urls, names, bundle.transform, cfg.batch_size)
        for batch in embed(bundle, dataset, cfg.batch_size, cfg.num_workers, None, progress=progress,
                           desc="score pairs"):
            writer.add(batch)
        writer.close()


def finish(out: Path, urls: list[str], names: list[str], cfg: ScoreConfig, progress: bool = True) -> dict[str, Any]:
    """Pass 2 over the finished parts: select, write the output, write ``score_stats.json``."""
    scores: dict[str, np.ndarray] = {}
    skipped: Counter = Counter()
    samples = 0
    for name in names:
        part, broken = read_part(out, name, ["similarity", "skipped"])
        scores[name] = part["similarity"].to_numpy(np.float64, na_value=np.nan)
        skipped.update(part["skipped"].dropna().tolist())
        if broken:
            skipped["broken_shard"] += broken
        samples += len(part)
    sel = select(scores, cfg.min_score, cfg.keep_fraction)
    if cfg.format == "shards":
        write_shards(out, urls, names, sel, cfg, progress)
    else:
        write_table(out, names, sel)
    flat = np.concatenate(list(scores.values())) if scores else np.zeros(0)
    flat = flat[~np.isnan(flat)]
    manifest = json.loads((out / MANIFEST).read_text())
    stats = {"model": manifest["model"], "format": cfg.format, "shards": len(names), "samples": samples,
             "scored": sel.scored, "skipped": dict(sorted(skipped.items())), "min_score": cfg.min_score,
             "keep_fraction": cfg.keep_fraction, "threshold": sel.threshold, "kept": sel.kept,
             "removed": sel.scored - sel.kept, "similarity": _summary(flat),
             "output": str(out / TABLE_FILE) if cfg.format == "parquet" else str(out)}
    atomic_write_text(out / STATS_FILE, json.dumps(stats, indent=2) + "\n")
    return stats


def _summary(x: np.ndarray) -> dict[str, float] | None:
    if not len(x):
        return None
    q = np.quantile(x, [0.1, 0.5, 0.9])
    return {"mean": float(x.mean()), "min": float(x.min()), "p10": float(q[0]), "p50": float(q[1]),
            "p90": float(q[2]), "max": float(x.max())}


def format_stats(stats: dict[str, Any]) -> str:
    """One line for the CLI."""
    sim = stats["similarity"] or {}
    thr = "none" if stats["threshold"] is None else f"{stats['threshold']:.4f}"
    return (f"{stats['scored']:,} pairs scored (median cosine {sim.get('p50', float('nan')):.4f}); "
            f"skipped {stats['skipped'] or {}}; threshold {thr}; {stats['kept']:,} kept -> {stats['output']} "
            f"({stats['shards_scored_now']} shards scored now, {stats['shards_reused']} reused); "
            f"stats: {Path(stats['output']).parent if stats['format'] == 'parquet' else stats['output']}/{STATS_FILE}")

