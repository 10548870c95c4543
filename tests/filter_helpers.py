"""The filter's tokenisation written from its definition, one code point at a time.

Independent of the library's regex: the reference that DuckDB, Spark and ``alt_text_tokens`` are
tested against (tests/test_filter_tokens.py) and that the plain-Python rule reference uses
(tests/test_data_filter.py).
"""

from __future__ import annotations

import unicodedata


def _simple_lower(c: str) -> str:
    """One code point to one: Python's lower() except where it is the full (multi-point) mapping."""
    low = c.lower()
    return {"\u0130": "i"}.get(c, low if len(low) == 1 else c)


def reference_tokens(text: str) -> list[str]:
    """NFC, simple lower-case, maximal runs of letters, marks and numbers."""
    out, cur = [], ""
    for c in unicodedata.normalize("NFC", text):
        c = _simple_lower(c)
        if unicodedata.category(c)[0] in "LMN":
            cur += c
        elif cur:
            out.append(cur)
            cur = ""
    return out + [cur] if cur else out
