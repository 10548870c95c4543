"""Alt-texts for tokenizer training: from WebDataset shards (``KEY.txt``) or a Parquet table.

Parquet tables name the text column ``text`` (our pipeline) or ``alt`` (cc2dataset); both are
accepted. Bad input raises :class:`~openalign.errors.UserError` naming the file, field and fix.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from openalign.errors import UserError
from openalign.media.shards import iter_samples, resolve_shards, sample_caption

TEXT_COLUMNS = ("text", "alt")  # tried in this order when no column is given


def iter_shard_texts(spec: str | list[str], counts: Counter | None = None) -> Iterator[str]:
    """Non-empty captions (``KEY.txt``) of every sample in the shards named by ``spec`` (a pattern or folder)."""
    counts = Counter() if counts is None else counts
    for sample in iter_samples(resolve_shards(spec), counts):
        text = sample_caption(sample)
        if text:
            counts["texts"] += 1
            yield text
        else:
            counts["missing_or_empty_caption"] += 1


def resolve_text_column(path: str | Path, column: str | None = None) -> str:
    """The text column of a Parquet table: ``column`` if given, else ``text`` or cc2dataset's ``alt``."""
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
    name = resolve_text_column(path, column)
    for batch in pq.ParquetFile(path).iter_batches(columns=[name], batch_size=batch_size):
        for value in batch.column(0).to_pylist():
            if value is not None and str(value).strip():
                yield str(value).strip()
