"""Download filtered pairs into WebDataset shards with img2dataset, applying the paper's image rules.

Image rules (Jia et al. 2021): keep an image when its shorter side is > ``min_side`` (200) px and
its aspect ratio (long / short side) is < ``max_aspect_ratio`` (3), measured on the original image,
before the resize. img2dataset enforces ``min(w, h) >= min_image_size`` and ``ratio <= max``; we pass
``min_side + 1`` and then post-filter the shards so that the ratio bound is strict too.

Shards: ``KEY.jpg`` + ``KEY.txt`` (the alt-text) + ``KEY.json`` (url, page_url, sizes, status).
URLs may be http(s) or local file paths (absolute, or relative to ``local_root``; they are passed
to img2dataset as ``file://`` URIs). Failures are counted by reason in ``download_stats.json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from openalign.corpus.filter import parquet_files, resolve_columns
from openalign.errors import UserError
from openalign.io import atomic_write_text, atomic_write_with
from openalign.media.shards import group_meta, read_tar_groups, write_tar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DownloadConfig:
    min_side: int = field(default=200, metadata={"help": "keep images whose shorter side is > this"})
    max_aspect_ratio: float = field(default=3.0, metadata={"help": "keep images whose aspect ratio is < this"})
    image_size: int = field(default=346, metadata={  # the paper's train resize before the 289 crop
        "help": "resize: shorter side to this (keep_ratio)"})
    resize_mode: str = field(default="keep_ratio", metadata={"choices": ("no", "keep_ratio", "center_crop", "border")})
    resize_only_if_bigger: bool = False
    encode_format: str = "jpg"
    encode_quality: int = 95
    samples_per_shard: int = 10_000
    processes: int = 1
    threads: int = 32
    timeout: int = field(default=10, metadata={"help": "seconds per image"})
    retries: int = 0
    local_root: str | None = field(default=None, metadata={
        "help": "folder that relative local image paths resolve against (default: the current folder)"})


@dataclass
class DownloadStats:
    pairs: int = 0
    written: int = 0
    failures: Counter = field(default_factory=Counter)  # reason -> count
    shards: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"pairs": self.pairs, "written": self.written, "failures": dict(self.failures.most_common()),
                "shards": self.shards}


def _img2dataset():
    try:
        import img2dataset  # lazy: the optional [download] extra
    except ImportError:
        raise UserError("download needs img2dataset: pip install 'openalign[download]'") from None
    return img2dataset


def to_fetchable(url: str, local_root: Path) -> str | None:
    """http(s) and file:// URLs as they are; local paths -> file:// URIs; anything else None."""
    low = url.lower()
    if low.startswith(("http://", "https://", "file://")):
        return url
    if re.match(r"^[a-z][a-z0-9+.-]*://", low) or low.startswith(("data:", "javascript:")):
        return None
    p = Path(url) if os.path.isabs(url) else local_root / url
    return p.resolve().as_uri()


def prepare_input(pairs: str | Path, work: Path, cfg: DownloadConfig, stats: DownloadStats) -> Path:
    """pairs Parquet (file or folder) -> img2dataset's input folder with url, text, page_url."""
    files = parquet_files([pairs])
    url_col, text_col, page_col = resolve_columns(files, None, None)
    root = Path(cfg.local_root or os.getcwd())
    inp = work / "input"
    inp.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        t = pq.read_table(f)
        urls, texts = t.column(url_col).to_pylist(), t.column(text_col).to_pylist()
        pages = t.column(page_col).to_pylist() if page_col else [None] * len(urls)
        rows = [(to_fetchable(str(u), root), x, p) for u, x, p in zip(urls, texts, pages) if u]
        stats.pairs += len(urls)
        stats.failures["unsupported_url"] += sum(1 for r in rows if r[0] is None) + (len(urls) - len(rows))
        rows = [r for r in rows if r[0] is not None]
        cols = list(zip(*rows)) if rows else [[], [], []]
        pq.write_table(pa.table({"url": pa.array(cols[0], pa.string()), "text": pa.array(cols[1], pa.string()),
                                 "page_url": pa.array(cols[2], pa.string())}), inp / f"{i:05d}.parquet")
    if stats.failures["unsupported_url"] == 0:
        del stats.failures["unsupported_url"]
    return inp


def run_img2dataset(inp: Path, out: Path, cfg: DownloadConfig) -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check in the spawned workers
    i2d = _img2dataset()
    i2d.download(
        url_list=str(inp), input_format="parquet", url_col="url", caption_col="text",
        save_additional_columns=["page_url"], output_format="webdataset", output_folder=str(out),
        image_size=cfg.image_size, resize_mode=cfg.resize_mode, resize_only_if_bigger=cfg.resize_only_if_bigger,
        encode_format=cfg.encode_format, encode_quality=cfg.encode_quality,
        min_image_size=cfg.min_side + 1, max_aspect_ratio=cfg.max_aspect_ratio,
        number_sample_per_shard=cfg.samples_per_shard, processes_count=cfg.processes, thread_count=cfg.threads,
        timeout=cfg.timeout, retries=cfg.retries, enable_wandb=False, distributor="multiprocessing",
        incremental_mode="incremental",  # "overwrite" deletes the _tmp folder it just made
    )


def failure_reason(message: str) -> str:
    """img2dataset's error message -> a short, stable reason name."""
    m = message.lower()
    http = re.search(r"http error (\d{3})", m)
    rules = [("timed out", "timeout"), ("decoding error", "corrupt_image"), ("cannot identify", "corrupt_image"),
             ("too small", "too_small"), ("aspect ratio", "aspect_ratio"), ("no such file", "missing_file"),
             ("urlopen error", "connection_error"), ("connection", "connection_error"),
             ("x-robots-tag", "disallowed_by_site")]
    if http:
        return f"http_{http.group(1)}"
    return next((name for key, name in rules if key in m), "other")


def collect_stats(out: Path, stats: DownloadStats) -> None:
    for f in sorted(out.glob("*_stats.json")):
        try:
            status = json.loads(f.read_text()).get("status_dict", {})
        except (OSError, json.JSONDecodeError):
            stats.failures["unreadable_stats_file"] += 1
            continue
        for msg, n in status.items():
            if msg != "success":
                stats.failures[failure_reason(msg)] += int(n)


def _keep(meta: dict[str, Any], cfg: DownloadConfig) -> str | None:
    """None to keep, else the rule that drops the sample (strict paper bounds on the original size)."""
    w, h = meta.get("original_width"), meta.get("original_height")
    if not w or not h:
        return None  # sizes unknown (resize disabled): img2dataset did not check, nor can we
    if min(w, h) <= cfg.min_side:
        return "too_small"
    if max(w, h) / min(w, h) >= cfg.max_aspect_ratio:
        return "aspect_ratio"
    return None


def post_filter_shard(shard: Path, cfg: DownloadConfig, stats: DownloadStats) -> int:
    """Rewrite ``shard`` without samples that break the strict image rules; return samples kept."""
    groups = read_tar_groups(shard, stats.failures)
    kept, dropped = {}, 0
    for key, members in groups.items():
        reason = _keep(group_meta(members), cfg)
        if reason:
            stats.failures[reason] += 1
            dropped += 1
        else:
            kept[key] = members
    if dropped:
        atomic_write_with(shard, lambda tmp: write_tar(tmp, kept))
    return len(kept)


def download(pairs: str | Path, out_dir: str | Path, cfg: DownloadConfig = DownloadConfig(),
             on_shard: Callable[[Path], None] | None = None) -> DownloadStats:
    """Fetch ``pairs`` into ``out_dir/{00000..}.tar``; write ``out_dir/download_stats.json``.

    Everything happens in a temp folder beside ``out_dir`` that replaces it at the end, so an
    interrupted download leaves no half-written shards behind.
    """
    out_dir = Path(out_dir)
    stats = DownloadStats()
    work = out_dir.parent / f".{out_dir.name}.work-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        inp = prepare_input(pairs, work, cfg, stats)
        tmp_out = work / "shards"
        run_img2dataset(inp, tmp_out, cfg)
        collect_stats(tmp_out, stats)
        for shard in sorted(tmp_out.glob("*.tar")):
            stats.written += post_filter_shard(shard, cfg, stats)
            stats.shards.append(shard.name)
            if on_shard:
                on_shard(shard)
        shutil.rmtree(tmp_out / "_tmp", ignore_errors=True)
        atomic_write_text(tmp_out / "download_stats.json",
                          json.dumps({**stats.to_dict(), "config": asdict(cfg), "input": str(pairs)}, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp_out, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return stats


def format_download_stats(stats: DownloadStats) -> str:
    lines = [f"pairs in      {stats.pairs:>10,}", f"images kept   {stats.written:>10,}"]
    lines += [f"  {reason:<20} {n:>10,}" for reason, n in stats.failures.most_common()]
    return "\n".join(lines)
