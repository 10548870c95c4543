"""``openalign data build``: extract -> filter -> download -> image_rules -> safety -> dedup -> tokenizer.

Resumable by stage. Layout of ``out_dir``::

    candidates.parquet  extract_stats.json     (extract)
    pairs.parquet       filter_stats.json      (filter)
    raw_shards/         download_stats.json    (download)
    rules_shards/       image_rules_stats.json (image_rules: the image rules by URL and by content)
    safe_shards/        safety_stats.json      (safety; skipped without a classifier)
    shards/             dedup_report.json      (dedup; skipped without evaluation images)
    tokenizer/                                  (WordPiece on the alt-texts of the final shards)
    build_manifest.json                         (stage -> params, outputs, summary, finished)

A stage whose manifest entry is finished with the same parameters, and whose outputs exist, is
not redone; when a stage is redone, every later stage is redone too.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from openalign.corpus.dedup import DedupConfig, dedup_shards
from openalign.corpus.download import DownloadConfig, download
from openalign.corpus.extract import ExtractConfig, extract, list_inputs
from openalign.corpus.filter import N_STEPS, TextFilterConfig, filter_pairs
from openalign.corpus.image_rules import ImageRulesConfig, image_rules_shards
from openalign.corpus.safety import SafetyConfig, safety_shards
from openalign.errors import UserError
from openalign.io import atomic_write_text
from openalign.media.texts import iter_shard_texts
from openalign.models.tokenizer import train_wordpiece

STAGES = ("extract", "filter", "download", "image_rules", "safety", "dedup", "tokenizer")
MANIFEST = "build_manifest.json"


@dataclass(frozen=True)
class BuildConfig:
    inputs: tuple[str, ...] = field(metadata={
        "positional": True, "help": "HTML/WARC files, tables, or folders of them"})
    out_dir: str = field(metadata={"flag": "--out", "help": "dataset folder (resumes from its build_manifest.json)"})
    eval_images: str | None = field(default=None, metadata={  # folder, Karpathy JSON or shards
        "help": "evaluation images to deduplicate against (default: no dedup)"})
    eval_image_root: str | None = field(default=None, metadata={
        "flag": "--image-root", "help": "root of the Karpathy JSON's image paths (default: its folder)"})
    engine: str = field(default="duckdb", metadata={"choices": ("duckdb", "spark")})
    memory_limit: str | None = field(default=None, metadata={
        "help": "DuckDB memory cap for the filter, e.g. 4GB (default: 80% of RAM); past it, spill to --temp-dir"})
    temp_dir: str | None = field(default=None, metadata={"help": "folder for the filter's spill files (default: --out)"})
    compress_spill: bool = field(default=False, metadata={
        "help": "with --memory-limit: the filter's intermediate tables in a compressed file (half the disk, slower)"})
    gram_passes: int | None = field(default=None, metadata={
        "help": "the filter counts uni/bigrams in this many passes (default: one, or more past --memory-limit)"})
    vocab_size: int = field(default=100_000, metadata={"help": "WordPiece vocabulary size"})
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    filter: TextFilterConfig = field(default_factory=TextFilterConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig, metadata={
        "prefix": "safety-", "title": "unsafe images (skipped without --safety-model-dir)"})


def image_rules_config(cfg: BuildConfig) -> ImageRulesConfig:
    """The image rules after download use the filter's thresholds: one rule, two notions of "image"."""
    return ImageRulesConfig(max_images_per_text=cfg.filter.max_images_per_text,
                            max_texts_per_image=cfg.filter.max_texts_per_image)


def stage_params(cfg: BuildConfig, stage: str) -> dict[str, Any]:
    inputs = [str(Path(p).resolve()) for p in cfg.inputs]
    return {
        "extract": {"inputs": inputs, **asdict(cfg.extract)},
        "filter": {"engine": cfg.engine, **asdict(cfg.filter)},
        "download": asdict(cfg.download),
        "image_rules": asdict(image_rules_config(cfg)),
        "safety": {**asdict(cfg.safety), "model_dir": cfg.safety.model_dir and str(Path(cfg.safety.model_dir).resolve()),
                   "head": cfg.safety.head and str(Path(cfg.safety.head).resolve())},
        "dedup": {"eval_images": cfg.eval_images, "eval_image_root": cfg.eval_image_root, **asdict(cfg.dedup)},
        "tokenizer": {"vocab_size": cfg.vocab_size},
    }[stage]


def _digest(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Manifest:
    """The stage manifest: read at start, rewritten atomically after each finished stage."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / MANIFEST
        try:
            self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {"stages": {}}
        except json.JSONDecodeError:
            raise UserError(f"{self.path}: not valid JSON; delete it to rebuild every stage") from None

    def is_done(self, stage: str, params: dict[str, Any], out_dir: Path) -> bool:
        entry = self.data["stages"].get(stage)
        return bool(entry and entry.get("finished") and entry.get("params_digest") == _digest(params)
                    and all((out_dir / o).exists() for o in entry.get("outputs", [])))

    def finish(self, stage: str, params: dict[str, Any], outputs: list[str], summary: dict[str, Any]) -> None:
        self.data["stages"][stage] = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "params_digest": _digest(params),
                                      "params": params, "outputs": outputs, "summary": summary}
        atomic_write_text(self.path, json.dumps(self.data, indent=2, default=str))

    def forget_from(self, stage: str) -> None:
        for s in STAGES[STAGES.index(stage):]:
            self.data["stages"].pop(s, None)


def _bar(desc: str, total: int | None, progress: bool):
    return tqdm(total=total, desc=f"{desc:<9}", unit="step", disable=not progress, leave=True)


def run_extract(cfg: BuildConfig, out: Path, progress: bool) -> tuple[list[str], dict[str, Any]]:
    n = len(list_inputs(list(cfg.inputs)))
    with _bar("extract", n, progress) as bar:
        stats = extract(list(cfg.inputs), out / "candidates.parquet", cfg.extract, on_file=lambda p: bar.update())
    return ["candidates.parquet", "extract_stats.json"], stats.to_dict()


def run_filter(cfg: BuildConfig, out: Path, progress: bool) -> tuple[list[str], dict[str, Any]]:
    with _bar("filter", N_STEPS, progress) as bar:
        stats = filter_pairs(out / "candidates.parquet", out / "pairs.parquet", cfg.filter, engine=cfg.engine,
                             memory_limit=cfg.memory_limit, temp_dir=cfg.temp_dir,
                             compress_spill=cfg.compress_spill, gram_passes=cfg.gram_passes,
                             on_step=lambda name: bar.update())
    return ["pairs.parquet", "filter_stats.json"], {"kept": stats.kept, "removed": stats.removed}


def run_download(cfg: BuildConfig, out: Path, progress: bool) -> tuple[list[str], dict[str, Any]]:
    with _bar("download", None, progress) as bar:
        stats = download(out / "pairs.parquet", out / "raw_shards", cfg.download, on_shard=lambda p: bar.update())
    return ["raw_shards"], {"written": stats.written, "failures": dict(stats.failures)}


def shard_dir_after(out: Path, cfg: BuildConfig, stage: str) -> Path:
    """The shard folder a stage leaves behind (a skipped stage passes its input on)."""
    if stage == "download":
        return out / "raw_shards"
    if stage == "image_rules":
        return out / "rules_shards"
    if stage == "safety":
        return out / "safe_shards" if cfg.safety.model_dir else shard_dir_after(out, cfg, "image_rules")
    if stage == "dedup":
        return out / "shards" if cfg.eval_images is not None else shard_dir_after(out, cfg, "safety")
    raise ValueError(f"stage {stage!r} writes no shards")


def _shards_in(folder: Path) -> list[str]:
    return [str(s) for s in sorted(folder.glob("*.tar"))]


def run_image_rules(cfg: BuildConfig, out: Path, progress: bool) -> tuple[list[str], dict[str, Any]]:
    shards = _shards_in(shard_dir_after(out, cfg, "download"))
    if not shards:
        raise UserError(f"{out / 'raw_shards'}: no shards; check download_stats.json for why every image failed")
    with _bar("rules", len(shards), progress) as bar:
        stats = image_rules_shards(shards, out / "rules_shards", image_rules_config(cfg), on_shard=lambda u: bar.update())
    return ["rules_shards", "rules_shards/image_rules_stats.json"], {
        "kept": stats.samples_out, "removed": stats.removed, "removed_by": stats.removed_by,
        "content_only": stats.content_only, "skipped": dict(stats.skipped)}


def run_safety(cfg: BuildConfig, out: Path, progress: bool, log: Callable[[str], None] = print,
               ) -> tuple[list[str], dict[str, Any]]:
    if not cfg.safety.model_dir:
        msg = "no classifier given (--safety-model-dir); unsafe images were NOT removed"
        log(f"safety: skipped: {msg}")
        return [], {"skipped": msg}
    shards = _shards_in(shard_dir_after(out, cfg, "image_rules"))
    with _bar("safety", len(shards), progress) as bar:
        stats = safety_shards(shards, out / "safe_shards", cfg.safety, on_shard=lambda u: bar.update())
    return ["safe_shards", "safe_shards/safety_stats.json"], {
        "classifier": stats.classifier, "unsafe": stats.unsafe, "kept": stats.samples_out,
        "skipped": dict(stats.skipped)}


def run_dedup(cfg: BuildConfig, out: Path, progress: bool) -> tuple[list[str], dict[str, Any]]:
    src = shard_dir_after(out, cfg, "safety")
    shards = sorted(src.glob("*.tar"))
    if cfg.eval_images is None:
        return [], {"skipped": f"no evaluation images given; training shards are {src.name}/"}
    with _bar("dedup", len(shards), progress) as bar:
        report = dedup_shards([str(s) for s in shards], cfg.eval_images, out / "shards", cfg.dedup,
                              image_root=cfg.eval_image_root, on_shard=lambda u: bar.update())
    return ["shards", "shards/dedup_report.json"], {"removed": len(report.removed), "kept": report.samples_out}


def final_shard_dir(out: Path, cfg: BuildConfig) -> Path:
    return shard_dir_after(out, cfg, "dedup")


def run_tokenizer(cfg: BuildConfig, out: Path, progress: bool) -> tuple[list[str], dict[str, Any]]:
    with _bar("tokenizer", 1, progress) as bar:
        texts = list(iter_shard_texts(str(final_shard_dir(out, cfg))))
        if not texts:
            raise UserError(f"{final_shard_dir(out, cfg)}: no samples to train the tokenizer on; "
                            "check download_stats.json for why every image failed")
        tok = train_wordpiece(texts, out / "tokenizer", vocab_size=cfg.vocab_size)
        bar.update()
    return ["tokenizer"], {"texts": len(texts), "vocab": len(tok)}


RUNNERS: dict[str, Callable[[BuildConfig, Path, bool], tuple[list[str], dict[str, Any]]]] = {
    "extract": run_extract, "filter": run_filter, "download": run_download, "image_rules": run_image_rules,
    "safety": run_safety, "dedup": run_dedup, "tokenizer": run_tokenizer,
}


def build(cfg: BuildConfig, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the stages in order, skipping those already finished with the same parameters."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out)
    redo = False
    for stage in STAGES:
        params = stage_params(cfg, stage)
        if not redo and manifest.is_done(stage, params, out):
            log(f"{stage}: done already (see {MANIFEST})")
            continue
        redo = True
        manifest.forget_from(stage)
        runner = RUNNERS[stage]
        if runner is run_safety:  # its one-line skip notice goes where the build logs
            outputs, summary = run_safety(cfg, out, progress, log=log)
        else:
            outputs, summary = runner(cfg, out, progress)
        manifest.finish(stage, params, outputs, summary)
    return manifest.data
