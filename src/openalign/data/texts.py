"""Alt-texts for tokenizer training: from WebDataset shards (``KEY.txt``) or a Parquet table.

Parquet tables name the text column ``text`` (our pipeline) or ``alt`` (cc2dataset); both are
accepted. Bad input raises :class:`~openalign.errors.UserError` naming the file, field and fix.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterator

from openalign.errors import UserError

TEXT_COLUMNS = ("text", "alt")  # tried in this order when no column is given


def iter_shard_texts(spec: str, counts: Counter | None = None) -> Iterator[str]:
    """Non-empty captions (``KEY.txt``) of every sample in the shards named by ``spec``."""
    from openalign.data.shards import expand_urls, iter_samples

    counts = Counter() if counts is None else counts
    try:
        urls = expand_urls(spec)
    except ValueError as exc:
        raise UserError(f"--shards {spec!r}: {exc}; "
                        "pass a path or brace pattern like dir/{00000..00009}.tar") from exc
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    missing = [u for u in local if not Path(u).is_file()]
    if missing:
        raise UserError(f"{missing[0]}: shard not found ({len(missing)} of {len(urls)} missing); "
                        "check the --shards path or brace pattern")
    for sample in iter_samples(urls, counts):
        txt = sample.get("txt")
        text = txt.decode("utf-8", errors="replace").strip() if isinstance(txt, bytes) else (txt or "").strip()
        if text:
            counts["texts"] += 1
            yield text
        else:
            counts["missing_or_empty_caption"] += 1


def resolve_text_column(path: str | Path, column: str | None = None) -> str:
    """The text column of a Parquet table: ``column`` if given, else ``text`` or cc2dataset's ``alt``."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: Parquet file not found; pass an existing table to --parquet")
    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except Exception as exc:
        raise UserError(f"{path}: not a readable Parquet file ({exc.__class__.__name__}); "
                        "pass a Parquet table to --parquet") from exc
    wanted = [column] if column else list(TEXT_COLUMNS)
    for name in wanted:
        if name in names:
            return name
    raise UserError(f"{path}: no text column {' or '.join(repr(w) for w in wanted)} (columns: {', '.join(names)}); "
                    "name the alt-text column with --text-column")


def iter_parquet_texts(path: str | Path, column: str | None = None, batch_size: int = 65536) -> Iterator[str]:
    """Non-empty strings of the text column, streamed batch by batch (tables may not fit in memory)."""
    import pyarrow.parquet as pq

    name = resolve_text_column(path, column)
    for batch in pq.ParquetFile(path).iter_batches(columns=[name], batch_size=batch_size):
        for value in batch.column(0).to_pylist():
            if value is not None and str(value).strip():
                yield str(value).strip()
