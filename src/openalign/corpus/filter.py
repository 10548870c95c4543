"""The paper's text filters as SQL, run by DuckDB (embedded default) or Spark (clusters).

ALIGN keeps the corpus noisy on purpose: only frequency-based rules, applied to the raw pairs.

Counting tokenisation (used by the vocabulary and the length rules): the alt-text is lower-cased
and split into maximal runs of Unicode letters and digits (regex ``[\\p{L}\\p{N}]+``); everything
else (spaces, punctuation, symbols) separates tokens. Unigrams are those tokens; bigrams are
adjacent token pairs joined by one space. ``"Red-tailed hawk, 2019!"`` -> unigrams ``red, tailed,
hawk, 2019``; bigrams ``red tailed, tailed hawk, hawk 2019``.

Statistics come from the raw input, rules apply in this order, and each pair is charged to the
first rule that drops it:

0. ``invalid``: a missing or empty url, or a missing text.
1. ``duplicate``: the same (url, text) seen again (the first page_url, in sort order, is kept).
2. ``text_shared``: the alt-text belongs to more than ``max_images_per_text`` distinct urls.
3. ``image_many_texts``: the url has more than ``max_texts_per_image`` distinct alt-texts.
4. ``rare_token``: a unigram or bigram of the text is rare in the raw data (frequency = occurrences
   over all valid input rows). By default rare means seen fewer than ``vocab_min_count`` (3) times;
   with ``vocab_top_n`` set, rare means outside the N most frequent unigrams+bigrams (the paper's
   wording, ties broken by the gram's byte order). The paper's N = 100M over ~1.8B alt-texts cuts
   at a frequency of roughly 2-5 (see ``docs/data.md``), so the count threshold keeps the rule's
   meaning at every corpus size, where a fixed N removes nothing below N distinct grams.
5. ``length``: fewer than ``min_unigrams`` or more than ``max_unigrams`` unigrams.

The SQL below is one text for both engines; only a few list/regex functions differ by dialect.
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import threading
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import duckdb
import pyarrow.parquet as pq

from openalign.errors import UserError
from openalign.io import atomic_write_text

log = logging.getLogger(__name__)

RULES = ("invalid", "duplicate", "text_shared", "image_many_texts", "rare_token", "length")
RULE_HELP = {
    "invalid": "missing url or text",
    "duplicate": "same (url, text) again",
    "text_shared": "alt-text shared by > {max_images_per_text} images",
    "image_many_texts": "image with > {max_texts_per_image} alt-texts",
    "rare_token": "token outside top-{vocab_top_n} uni+bigrams",  # with vocab_top_n set
    "length": "< {min_unigrams} or > {max_unigrams} unigrams",
}
RARE_COUNT_HELP = "uni/bigram seen < {vocab_min_count} times in raw data"  # rare_token by default
TEXT_COLUMNS = ("text", "alt", "caption")


@dataclass(frozen=True)
class TextFilterConfig:
    """The paper's thresholds (Jia et al. 2021, section 3)."""

    max_images_per_text: int = field(default=10, metadata={"help": "drop alt-texts shared by more images"})
    max_texts_per_image: int = field(default=1000, metadata={"help": "drop images with more alt-texts"})
    vocab_top_n: int | None = field(default=None, metadata={
        "help": "rare = outside the top N uni/bigrams (paper: 100000000 over 1.8B alt-texts); "
                "default none: use --vocab-min-count"})
    min_unigrams: int = 3
    max_unigrams: int = 20
    vocab_min_count: int = field(default=3, metadata={
        "help": "without --vocab-top-n: a uni/bigram seen fewer times in the raw data is rare "
                "(the paper's top-100M cut is at about this count)"})

    def __post_init__(self) -> None:
        if self.vocab_top_n is not None and self.vocab_top_n < 0:
            raise ValueError(f"vocab_top_n must be >= 0 or None, got {self.vocab_top_n}")
        if self.vocab_min_count < 1:
            raise ValueError(f"vocab_min_count must be >= 1, got {self.vocab_min_count}")

    @property
    def vocab_rule(self) -> tuple[str, int]:
        """The rare-token threshold in effect: ("top_n", N) or ("min_count", K)."""
        if self.vocab_top_n is not None:
            return "top_n", int(self.vocab_top_n)
        return "min_count", int(self.vocab_min_count)


@dataclass(frozen=True)
class FilterOptions:
    """How :func:`filter_pairs` runs (not what it keeps): its engine, column and thread keywords."""

    engine: str = field(default="duckdb", metadata={"choices": ("duckdb", "spark")})
    url_column: str | None = field(default=None, metadata={"help": "image URL column (default: url)"})
    text_column: str | None = field(default=None, metadata={"help": "alt-text column (default: text, alt or caption)"})
    threads: int | None = field(default=None, metadata={
        "flag": "--threads-sql", "help": "DuckDB threads (default: all cores)"})
    memory_limit: str | None = field(default=None, metadata={
        "help": "DuckDB memory cap, e.g. 4GB (default: 80% of RAM); past it, work spills to --temp-dir"})
    temp_dir: str | None = field(default=None, metadata={
        "help": "folder for DuckDB's spill files (default: beside --out); give it free disk ~3x the input"})
    compress_spill: bool = field(default=False, metadata={
        "help": "with --memory-limit: keep the intermediate tables in a compressed DuckDB file in --temp-dir "
                "(half the disk of spilled temporary tables, ~1.3x slower at 10M pairs)"})
    gram_passes: int | None = field(default=None, metadata={
        "help": "DuckDB counts the uni/bigrams in this many passes, each over a share of them (default: one "
                "while they fit in --memory-limit, past it enough to fit in half; every pass tokenises again)"})
    spark_master: str | None = field(default="local[*]", metadata={
        "help": "Spark master for --engine spark: local[N], spark://HOST:7077, yarn, k8s://...; "
                "none = the one spark-submit or spark-defaults.conf gives"})


@dataclass(frozen=True)
class Dialect:
    """The few functions that differ between DuckDB and Spark SQL."""

    name: str
    tokens: Callable[[str], str]  # text column -> list of normalised tokens (the module doc's definition)
    uni_ids: Callable[[str], str]  # token list -> list of 64-bit unigram ids
    gram_ids: Callable[[str], str]  # unigram-id list -> the gram ids: those unigram ids, then one per adjacent pair
    size: Callable[[str], str]
    explode: Callable[[str], str]
    row_id: str  # a unique integer per row of a SELECT
    # DuckDB only: tokenise when counting instead of storing every text's gram-id list (the largest
    # table: ~2 GiB at 10M pairs). fast_path(text) -> boolean column saying the text is ASCII words
    # and single spaces; tokens_given(text, flag) and count_given(text, flag) use it, so the regex
    # test runs once per text. Spark stores the lists: its tokeniser is a Python UDF, run once.
    fast_path: Callable[[str], str] | None = None
    tokens_given: Callable[[str, str], str] | None = None
    count_given: Callable[[str, str], str] | None = None


# DuckDB: NFC, simple (per-code-point) lower-casing, then runs of letters/marks/numbers. Its lower()
# is the simple Unicode mapping (utf8proc), which is the definition, so SQL implements it natively.
# Fast path, same tokens: a text of ASCII words and single spaces splits on the spaces, 5-8x
# cheaper than the regex (DuckDB's regexp_extract_all costs ~4 us per alt-text here).
_DUCKDB_FAST = "regexp_full_match({x}, '[A-Za-z0-9]+( [A-Za-z0-9]+)*')"


def _duckdb_regex_tokens(x: str) -> str:
    # NUL separates anyway; replaced because DuckDB's NFC stops at it. The letter/mark/number class
    # is Python's (its Unicode version), spelled out as ranges rather than RE2's \p{L}\p{M}\p{N},
    # whose newer tables also count code points Python leaves unassigned (CJK Extension H, ...).
    # Measured: the spelled-out class is no slower (0.37 vs 0.55 s per 200k mixed-script texts).
    cls = _token_run().pattern.replace("'", "''")
    return f"regexp_extract_all(lower(nfc_normalize(replace({x}, chr(0), ' '))), '{cls}')"


def _duckdb_tokens_given(x: str, flag: str) -> str:
    return f"CASE WHEN {flag} THEN string_split(lower({x}), ' ') ELSE {_duckdb_regex_tokens(x)} END"


DUCKDB = Dialect(
    name="duckdb",
    tokens=lambda x: _duckdb_tokens_given(x, _DUCKDB_FAST.format(x=x)),
    uni_ids=lambda t: f"list_transform({t}, lambda s: hash(s))",
    # a bigram's id hashes its two unigram ids (each string is hashed once)
    gram_ids=lambda h: f"list_concat({h}, list_transform(range(1, len({h})), lambda i: hash({h}[i], {h}[i + 1])))",
    size=lambda t: f"len({t})",
    explode=lambda t: f"unnest({t})",
    row_id="row_number() OVER ()",
    fast_path=lambda x: _DUCKDB_FAST.format(x=x),
    tokens_given=_duckdb_tokens_given,
    # words and single spaces: the tokens are the spaces plus one
    count_given=lambda x, flag: (f"CASE WHEN {flag} THEN length({x}) - length(replace({x}, ' ', '')) + 1 "
                                 f"ELSE len({_duckdb_regex_tokens(x)}) END"),
)
# Spark: Java's lower() is the FULL mapping in the JVM's default locale ("İ" -> "i̇", final sigma)
# and its regex tables follow the JVM's Unicode version, so Spark tokenises with the Python
# reference (``alt_text_tokens``) as a vectorised UDF: identical to it by construction.
SPARK = Dialect(
    name="spark",
    tokens=lambda x: f"openalign_tokens({x})",
    uni_ids=lambda t: f"transform({t}, s -> xxhash64(s))",
    gram_ids=lambda h: (f"concat({h}, zip_with(slice({h}, 1, greatest(size({h}) - 1, 0)), "
                          f"slice({h}, 2, greatest(size({h}) - 1, 0)), (a, b) -> xxhash64(a, b)))"),
    size=lambda t: f"size({t})",
    explode=lambda t: f"explode({t})",
    row_id="monotonically_increasing_id()",
)

# ---------------------------------------------------------------- the one tokenisation (Python reference)

# Python's str.lower() is the FULL mapping: it differs from the simple one for exactly two inputs
# (SpecialCasing.txt, language-independent part): U+0130 "İ" -> "i̇" (two code points) and the
# context-dependent final sigma. Mapping those two first makes lower() the simple mapping.
_SIMPLE_LOWER_FIRST = str.maketrans({"\u0130": "i", "\u03a3": "\u03c3"})


@functools.lru_cache(maxsize=1)
def _token_run() -> re.Pattern[str]:
    """A regex for maximal runs of Unicode letters, marks and numbers (``re`` has no ``\\p{..}``)."""
    ranges, start = [], None
    for cp in range(sys.maxunicode + 2):
        inside = cp <= sys.maxunicode and unicodedata.category(chr(cp))[0] in "LMN"
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            ranges.append(f"{re.escape(chr(start))}-{re.escape(chr(cp - 1))}" if cp - 1 > start else re.escape(chr(start)))
            start = None
    return re.compile(f"[{''.join(ranges)}]+")


def normalize_alt_text(text: str) -> str:
    """NFC, then simple Unicode lower-casing (one code point to one): the text the rules count."""
    return unicodedata.normalize("NFC", text).translate(_SIMPLE_LOWER_FIRST).lower()


def alt_text_tokens(text: str) -> list[str]:
    """The unigrams of an alt-text, as every engine computes them (see the module doc)."""
    return _token_run().findall(normalize_alt_text(text))


def alt_text_grams(text: str) -> list[str]:
    """Unigrams then bigrams ("a b") of an alt-text: what the rare-token rule counts."""
    toks = alt_text_tokens(text)
    return toks + [f"{a} {b}" for a, b in zip(toks, toks[1:])]


@dataclass(frozen=True)
class Step:
    name: str
    sql: str
    reused: bool = False  # read by more than one later step: materialise / cache it
    row_ids: bool = False  # numbers its rows: Spark must not recompute it (ids would change)
    # An aggregate DuckDB may run in passes, each over a share of this column's hash values (the SQL
    # marks where the pass's WHERE goes with PASS_MARK; a comment, so the SQL runs as is in one pass).
    passes_over: str | None = None


PASS_MARK = "/*pass*/"
NARROW_IDS_BELOW = 2**32  # input rows below which DuckDB keeps pair/text ids and counts in 32 bits
# DuckDB's hash-aggregate state per distinct gram (key, sum, min, max, hash and pointer), measured
# order of magnitude; and the share of a corpus's gram occurrences that are distinct grams (21% on
# the bench's Zipf corpus at 2M pairs; real alt-text repeats more).
GRAM_GROUP_BYTES = 64
DISTINCT_GRAM_SHARE = 0.25


def _cutoff_sql(cfg: TextFilterConfig) -> str:
    """One row, ``k``: a gram seen fewer than k times is rare.

    With ``vocab_top_n`` = N, k is the count of the N-th most frequent gram, found from the
    histogram of counts (a few thousand rows) instead of sorting every gram; every gram tied at
    that count is kept, so the vocabulary can exceed N by the ties (the stats give its size).
    """
    rule, value = cfg.vocab_rule
    if rule == "min_count":
        return f"SELECT {int(value)} AS k"
    if value == 0:
        return "SELECT 9223372036854775807 AS k"  # an empty vocabulary: every gram is rare
    return f"""SELECT coalesce(max(cnt), 1) AS k FROM (
                 SELECT cnt, sum(n) OVER (ORDER BY cnt DESC) AS cum FROM (
                   SELECT cnt, count(*) AS n FROM gram_counts GROUP BY cnt) h) c
               WHERE cum >= {int(value)}"""


def filter_steps(cfg: TextFilterConfig, d: Dialect, narrow_ids: bool = False) -> list[Step]:
    """The filter as named SQL steps over the view ``raw_input(url, text, page_url)``.

    Each distinct alt-text is tokenised once per pass over the grams; its grams become 64-bit ids
    (a hash of the unigram, or of the two unigram ids of a bigram), so counting and the rare-token
    join run on integers, not strings. Two grams sharing an id would share a count: about
    G^2 / 2^65 expected collisions for G distinct grams (1e-5 at G = 1e7), each able to keep a rare
    gram alive, never to drop a pair. Pairs and texts get integer ids, so the labels are
    (pair id, rule) rows rather than a second copy of the strings.

    ``narrow_ids`` (DuckDB, when the input has fewer than 2^32 rows, so fewer pairs and texts):
    pair and text ids and per-row counts are 32-bit integers. The gram count is the largest table
    this filter builds (one row per distinct gram: ~50M rows at 10M pairs) and its hash table the
    peak, so its row width is the memory: (id, count, lowest and highest text) is 8+8+4+4 bytes
    instead of 8+8+8+8; its count is cast to BIGINT because DuckDB sums into a 16-byte HUGEINT.
    Measured at 10M pairs, no memory limit (bench): peak RSS 6.4-6.5 -> 5.6-5.8 GiB, the same output.
    """
    def narrow(x: str) -> str:
        return f"CAST({x} AS UINTEGER)" if narrow_ids else x

    texts = (f"SELECT text, CAST(sum(n_rows) AS {'UINTEGER' if narrow_ids else 'BIGINT'}) AS n_rows, "
             f"{narrow('count(*)')} AS n_images FROM pairs GROUP BY text")
    if d.fast_path is None:  # store each text's gram-id list
        text_info = f"""
            SELECT {d.row_id} AS tid, text, n_rows, n_images, {d.size('toks')} AS n_uni, {d.gram_ids(d.uni_ids('toks'))} AS grams
            FROM (SELECT text, n_rows, n_images, {d.tokens('text')} AS toks FROM ({texts}) t) x"""
        text_grams = f"SELECT tid, n_rows, {d.explode('grams')} AS g FROM text_info"
    else:  # tokenise again wherever the grams are read (once with the default rule)
        text_info = f"""
            SELECT {narrow(d.row_id)} AS tid, text, n_rows, n_images, fast, {narrow(d.count_given('text', 'fast'))} AS n_uni
            FROM (SELECT *, {d.fast_path('text')} AS fast FROM ({texts}) t) x"""
        text_grams = f"""SELECT tid, n_rows, {d.explode(d.gram_ids('h'))} AS g
            FROM (SELECT tid, n_rows, {d.uni_ids(d.tokens_given('text', 'fast'))} AS h FROM text_info) x"""
    return [
        Step("valid", "SELECT url, text, page_url FROM raw_input WHERE url IS NOT NULL AND url <> '' AND text IS NOT NULL"),
        Step("pairs", f"""SELECT {narrow(d.row_id)} AS pid, url, text, page_url, n_rows FROM (
                            SELECT url, text, min(page_url) AS page_url, {narrow('count(*)')} AS n_rows
                            FROM valid GROUP BY url, text) v""",
             reused=True, row_ids=True),
        Step("text_info", text_info, reused=True, row_ids=True),
        Step("text_grams", text_grams),
        # A gram's count is at least the number of texts holding it, so a gram counted once or twice
        # names all its texts by its smallest and largest text id: for those, the rare-token rule
        # needs no second pass over the grams (the default K = 3 only ever has such rare grams;
        # rare grams counted 3 or more times, possible with a larger K or top-N, take the join).
        # DuckDB spills an aggregate of mostly-unique keys almost unaggregated (~40 bytes per gram
        # occurrence: ~100 GB at 100M pairs), so past its memory it counts the grams in passes, each
        # over a share of the gram ids (see gram_passes); every pass tokenises the texts again.
        Step("gram_counts", f"""SELECT g, CAST(sum(n_rows) AS BIGINT) AS cnt, min(tid) AS tid_lo, max(tid) AS tid_hi
                                FROM text_grams {PASS_MARK} GROUP BY g""", reused=True, passes_over="g"),
        Step("cutoff", _cutoff_sql(cfg), reused=True),
        Step("rare_wide", "SELECT g FROM gram_counts WHERE cnt < (SELECT k FROM cutoff) AND cnt > 2", reused=True),
        Step("rare_texts", """SELECT tid_lo AS tid FROM gram_counts WHERE cnt < (SELECT k FROM cutoff) AND cnt <= 2
                              UNION SELECT tid_hi FROM gram_counts WHERE cnt < (SELECT k FROM cutoff) AND cnt <= 2
                              UNION SELECT tg.tid FROM text_grams tg JOIN rare_wide r ON tg.g = r.g""", reused=True),
        Step("image_texts", "SELECT url, count(*) AS n_texts FROM pairs GROUP BY url"),
        Step("labelled", f"""
            SELECT p.pid,
              CASE WHEN x.n_images > {int(cfg.max_images_per_text)} THEN 'text_shared'
                   WHEN it.n_texts > {int(cfg.max_texts_per_image)} THEN 'image_many_texts'
                   WHEN r.tid IS NOT NULL THEN 'rare_token'
                   WHEN x.n_uni < {int(cfg.min_unigrams)} OR x.n_uni > {int(cfg.max_unigrams)} THEN 'length'
              END AS dropped_by
            FROM pairs p
            JOIN text_info x ON p.text = x.text
            JOIN image_texts it ON p.url = it.url
            LEFT JOIN rare_texts r ON x.tid = r.tid""", reused=True),
    ]


COUNT_SQL = {
    "raw": "SELECT count(*) FROM raw_input",
    "valid": "SELECT count(*) FROM valid",
    "pairs": "SELECT count(*) FROM pairs",
    "vocab": "SELECT count(*) FROM gram_counts WHERE cnt >= (SELECT k FROM cutoff)",
    "cutoff": "SELECT k FROM cutoff",
    "distinct_grams": "SELECT count(*) FROM gram_counts",
    "by_rule": "SELECT dropped_by, count(*) FROM labelled GROUP BY dropped_by",
}
OUTPUT_SQL = ("SELECT p.url, p.text, p.page_url FROM pairs p JOIN labelled l ON p.pid = l.pid "
              "WHERE l.dropped_by IS NULL ORDER BY p.url, p.text")


@dataclass
class FilterStats:
    config: dict[str, Any]
    engine: str
    inputs: list[str]
    output: str
    rows_in: int = 0
    removed: dict[str, int] = field(default_factory=dict)  # rule -> pairs removed, in RULES order
    kept: int = 0
    vocab_size: int = 0
    distinct_grams: int = 0
    vocab_rule: str = ""  # "top_n" or "min_count": the rare-token threshold in effect ...
    vocab_threshold: int = 0  # ... and its value (N or K)
    rare_below: int = 0  # the count in effect: a gram seen fewer times is rare (K, or the N-th gram's count)
    spilled_bytes: int = 0  # most DuckDB held in its spill folder at any time (sampled every 0.5 s; 0: all in memory)
    gram_passes: int = 1  # passes DuckDB took to count the grams (more than one past its memory)
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _stats_from_counts(stats: FilterStats, counts: dict[str, Any]) -> FilterStats:
    by_rule = dict(counts["by_rule"])
    stats.rows_in = int(counts["raw"])
    stats.removed = {
        "invalid": int(counts["raw"] - counts["valid"]),
        "duplicate": int(counts["valid"] - counts["pairs"]),
        **{r: int(by_rule.get(r, 0)) for r in RULES[2:]},
    }
    stats.kept = int(by_rule.get(None, 0))
    stats.vocab_size = int(counts["vocab"])
    stats.rare_below = int(counts["cutoff"])
    stats.spilled_bytes = int(counts.get("spilled_bytes", 0))
    stats.gram_passes = int(counts.get("gram_passes", 1))
    stats.distinct_grams = int(counts["distinct_grams"])
    return stats


def format_stats_table(stats: FilterStats) -> str:
    """The printed table: how many pairs each rule removed, in order."""
    cfg = stats.config
    lines = [f"{'rule':<18} {'what':<44} {'removed':>12} {'left':>12}",
             f"{'input':<18} {'rows read':<44} {'':>12} {stats.rows_in:>12,}"]
    left = stats.rows_in
    for rule in RULES:
        n = stats.removed.get(rule, 0)
        left -= n
        what = _rare_token_help(stats) if rule == "rare_token" else RULE_HELP[rule].format(**cfg)
        lines.append(f"{rule:<18} {what:<44} {n:>12,} {left:>12,}")
    lines.append(f"{'kept':<18} {'pairs written':<44} {'':>12} {stats.kept:>12,}")
    return "\n".join(lines)


def _rare_token_help(stats: FilterStats) -> str:
    """The rare-token row names the threshold in effect: top N, or a minimum count K."""
    rule, value = stats.vocab_rule, stats.vocab_threshold
    if not rule:  # stats made before the threshold was recorded
        rule, value = TextFilterConfig(**stats.config).vocab_rule
    if rule == "top_n":
        return RULE_HELP["rare_token"].format(vocab_top_n=f"{value:,}")
    return RARE_COUNT_HELP.format(vocab_min_count=value)


# ---------------------------------------------------------------- inputs


def parquet_files(inputs: list[str | Path]) -> list[str]:
    """Parquet files named by files, folders (recursively, Spark part files too) or globs."""
    files: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files.extend(sorted(str(f) for f in p.rglob("*.parquet") if not f.name.startswith((".", "_"))))
        elif p.is_file():
            files.append(str(p))
        else:
            hits = sorted(glob.glob(str(item)))
            if not hits:
                raise UserError(f"{item}: no such Parquet file or folder; pass the output of `openalign data extract`")
            files.extend(hits)
    if not files:
        raise UserError(f"{', '.join(map(str, inputs))}: no .parquet files found; pass the output of `openalign data extract`")
    return files


def resolve_columns(files: list[str], url_column: str | None, text_column: str | None) -> tuple[str, str, str | None]:
    """(url column, text column, page_url column or None), checked against the first file's schema."""
    try:
        names = pq.read_schema(files[0]).names
    except Exception as exc:
        raise UserError(f"{files[0]}: not a readable Parquet file ({exc}); regenerate it with `openalign data extract`")
    url = url_column or "url"
    text = text_column or next((c for c in TEXT_COLUMNS if c in names), None)
    if url not in names:
        raise UserError(f"{files[0]}: field {url!r} missing (columns: {', '.join(names)}); pass --url-column NAME")
    if text is None or text not in names:
        raise UserError(f"{files[0]}: field {text or 'text'!r} missing (columns: {', '.join(names)}); "
                        "pass --text-column NAME")
    return url, text, "page_url" if "page_url" in names else None


def _input_select(url: str, text: str, page: str | None) -> str:
    page_expr = f'CAST("{page}" AS STRING)' if page else "CAST(NULL AS STRING)"
    return f'SELECT CAST("{url}" AS STRING) AS url, CAST("{text}" AS STRING) AS text, {page_expr} AS page_url'


# ---------------------------------------------------------------- engines


SPILL_PREFIX = ".duckdb-spill-"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _remove_stale_spill(root: Path) -> None:
    """Remove spill folders that a killed filter on this host left behind (SIGKILL skips the
    cleanup), so a rerun does not leave their gigabytes on the disk it needs. A folder of another
    host (a shared --temp-dir) or of a live process is left alone."""
    if not root.is_dir():
        return
    for d in root.glob(f"{SPILL_PREFIX}{_host()}-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if d.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
            shutil.rmtree(d, ignore_errors=True)
            log.warning("removed %s (%.0f MiB), the spill folder of a killed filter run", d, size / 2**20)


def _run_duckdb(files: list[str], cols: tuple[str, str, str | None], cfg: TextFilterConfig, out: Path,
                threads: int | None, memory_limit: str | None, temp_dir: str | Path | None,
                on_step: Callable[[str], None], compress_spill: bool = False,
                passes: int | None = None) -> dict[str, Any]:
    spill_root = Path(temp_dir or out.parent)
    spill_root.mkdir(parents=True, exist_ok=True)  # DuckDB makes its spill folder, not the folders above it
    _remove_stale_spill(spill_root)
    spill = spill_root / f"{SPILL_PREFIX}{_host()}-{os.getpid()}"  # removed when done
    # compress_spill: the intermediate tables live in a DuckDB database file in the spill folder
    # instead of in temporary storage. DuckDB compresses stored tables (dictionary/FSST strings,
    # bit-packed integers) but writes evicted temporary blocks as they are. Measured at 10M pairs
    # under a 4GB limit on the idle machine: 3.4 GiB on disk instead of 6.7 GiB, 86.0 s instead of
    # 66.9 s; so it is the choice when disk, not time, is what runs out.
    on_disk = bool(memory_limit) and compress_spill
    if on_disk:
        spill.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(spill / "filter.duckdb") if on_disk else ":memory:")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    try:
        if memory_limit:
            con.execute(f"SET memory_limit = '{memory_limit}'")
    except duckdb.Error as exc:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
        raise UserError(f"--memory-limit {memory_limit!r}: {str(exc).splitlines()[0]}; give a size such as 4GB or 500MB")
    con.execute(f"SET temp_directory = '{str(spill).replace(chr(39), chr(39) * 2)}'")
    con.execute("SET preserve_insertion_order = false")
    file_list = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    con.execute(f"CREATE TEMP VIEW raw_input AS {_input_select(*cols)} FROM read_parquet([{file_list}], union_by_name = true)")
    spilled, used_passes = 0, 1
    watch = FolderPeak(spill).start()  # the spill peaks inside steps, where between-step readings miss it
    try:
        narrow = con.execute("SELECT count(*) FROM raw_input").fetchone()[0] < NARROW_IDS_BELOW  # Parquet footers: no scan
        for step in filter_steps(cfg, DUCKDB, narrow_ids=narrow):
            kind = ("TABLE" if on_disk else "TEMP TABLE") if step.reused else "TEMP VIEW"
            n = gram_passes(con, passes) if step.passes_over else 1
            if n > 1:
                used_passes = n
                log.info("%s in %d passes (memory limit %s)", step.name, n, _memory_limit(con))
            for i in range(n):
                sql = step.sql.replace(PASS_MARK, f"WHERE {step.passes_over} % {n} = {i}" if n > 1 else "")
                con.execute(f"CREATE {kind} {step.name} AS {sql}" if i == 0 else f"INSERT INTO {step.name} {sql}")
                spilled = max(spilled, _spilled_bytes(con, spill))
            if on_disk and step.reused:
                con.execute("CHECKPOINT")  # the table to the file, out of the buffer pool
            spilled = max(spilled, _spilled_bytes(con, spill))
            on_step(step.name)
        counts = _duckdb_counts_and_write(con, out)
    finally:
        watch.stop()
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
    on_step("write")
    counts["spilled_bytes"] = max(spilled, watch.peak)
    counts["gram_passes"] = used_passes
    return counts


_UNITS = {"bytes": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _memory_limit(con: Any) -> int:
    """DuckDB's memory limit in bytes (its setting reads e.g. '6.5 GiB')."""
    value, unit = str(con.execute("SELECT current_setting('memory_limit')").fetchone()[0]).split()
    return int(float(value) * _UNITS[unit.lower()])


def gram_passes(con: Any, passes: int | None = None) -> int:
    """How many passes the gram count takes: ``passes`` if given; else one while the grams' hash
    table (estimated from the gram occurrences in ``text_info``) fits in the memory limit, and past
    it enough passes that each fits in half the limit. A small overflow spills affordably (10M
    pairs under 5GB: 1.7 GiB, 253k pairs/s in one pass against 203k in two); a large one does not
    (100M under 7GB: 56 GB of spill in one pass; 11 passes spilled nothing)."""
    if passes:
        return max(1, int(passes))
    occurrences = con.execute("SELECT coalesce(sum(greatest(2 * CAST(n_uni AS BIGINT) - 1, 0)), 0) FROM text_info").fetchone()[0]
    need, limit = float(occurrences) * DISTINCT_GRAM_SHARE * GRAM_GROUP_BYTES, _memory_limit(con)
    return 1 if need <= limit else math.ceil(need / (0.5 * limit))


class FolderPeak:
    """The largest total size of the files under ``folder`` while watched: a thread sums them every
    ``every`` seconds (files vanishing mid-walk are skipped). start() begins, stop() ends with one
    last reading; ``peak`` is the result."""

    def __init__(self, folder: str | Path, every: float = 0.5) -> None:
        self.folder, self.every, self.peak = Path(folder), every, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spill-watch", daemon=True)

    def size(self) -> int:
        total, stack = 0, [self.folder]
        while stack:
            try:
                with os.scandir(stack.pop()) as it:
                    for e in it:
                        try:
                            if e.is_dir(follow_symlinks=False):
                                stack.append(e.path)
                            else:
                                total += e.stat(follow_symlinks=False).st_size
                        except OSError:
                            pass
            except OSError:  # not there (yet), or removed
                pass
        return total

    def _run(self) -> None:
        while not self._done.wait(self.every):
            self.peak = max(self.peak, self.size())

    def start(self) -> "FolderPeak":
        self._thread.start()
        return self

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self.size())
        return self.peak


def _spilled_bytes(con: Any, spill: Path) -> int:
    """Bytes DuckDB has on disk now: its temp files (intermediates that left memory) and, under a
    memory limit, the database file holding the intermediate tables."""
    temp = int(con.execute("SELECT coalesce(sum(size), 0) FROM duckdb_temporary_files()").fetchone()[0])
    db = spill / "filter.duckdb"
    return temp + (db.stat().st_size if db.is_file() else 0)


def _duckdb_counts_and_write(con: Any, out: Path) -> dict[str, Any]:
    counts = {k: (con.execute(q).fetchall() if k == "by_rule" else con.execute(q).fetchone()[0])
              for k, q in COUNT_SQL.items()}
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        con.execute(f"COPY ({OUTPUT_SQL}) TO '{str(tmp).replace(chr(39), chr(39) * 2)}' (FORMAT parquet)")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return counts


def spark_session(master: str | None = "local[1]", app: str = "openalign-filter"):
    """A Spark session on ``master`` (None: the master that spark-submit or spark-defaults.conf sets).

    Says which extra to install when pyspark is missing.
    """
    try:
        from pyspark.sql import SparkSession  # lazy: the optional [spark] extra
    except ImportError:
        raise UserError("engine 'spark' needs pyspark: pip install 'openalign[spark]'") from None
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise UserError("engine 'spark' needs Java 17+: install a JDK and put `java` on PATH (or set JAVA_HOME)")
    builder = SparkSession.builder.appName(app).config("spark.sql.session.timeZone", "UTC")
    if master:  # builder settings override spark-submit's, so a cluster run passes None and keeps them
        builder = builder.master(master)
    if master and master.startswith("local"):  # one machine (local-cluster too): few partitions, no UI
        builder = (builder.config("spark.sql.shuffle.partitions", "4").config("spark.ui.enabled", "false")
                   .config("spark.ui.showConsoleProgress", "false"))
        # the tokeniser UDF imports openalign: local workers must run this interpreter, not PATH's
        # python3 (pyspark reads the variable when the context starts; a cluster sets its own)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return builder.getOrCreate()


def _register_spark_tokens(spark: Any) -> None:
    """``openalign_tokens(text)``: :func:`alt_text_tokens` as a vectorised (Arrow) UDF on the executors."""
    from pyspark.sql.functions import pandas_udf  # lazy: the optional [spark] extra

    @pandas_udf("array<string>")
    def openalign_tokens(texts):  # pandas Series in, Series of lists out
        return texts.map(alt_text_tokens)

    spark.udf.register("openalign_tokens", openalign_tokens)


def _run_spark(files: list[str], cols: tuple[str, str, str | None], cfg: TextFilterConfig, out: Path,
               spark: Any, on_step: Callable[[str], None]) -> dict[str, Any]:
    url, text, page = cols
    df = spark.read.parquet(*files)
    df.createOrReplaceTempView("raw_parquet")
    spark.sql(f"{_input_select(url, text, page).replace(chr(34), '`')} FROM raw_parquet").createOrReplaceTempView("raw_input")
    _register_spark_tokens(spark)
    cached = []
    for step in filter_steps(cfg, SPARK):
        sdf = spark.sql(step.sql.replace(PASS_MARK, ""))
        if step.row_ids:  # materialised without lineage: a recomputation would renumber the rows
            sdf = sdf.localCheckpoint(eager=True)
        elif step.reused:
            sdf = sdf.cache()
            cached.append(sdf)
        sdf.createOrReplaceTempView(step.name)
        on_step(step.name)
    counts = {k: ([tuple(r) for r in spark.sql(q).collect()] if k == "by_rule" else spark.sql(q).collect()[0][0])
              for k, q in COUNT_SQL.items()}
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    spark.sql(OUTPUT_SQL).write.mode("overwrite").parquet(str(tmp))
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(tmp, out)  # a folder of part files, in url/text order
    on_step("write")
    for sdf in cached:
        sdf.unpersist()
    return counts


def filter_pairs(inputs: list[str | Path] | str | Path, out: str | Path, cfg: TextFilterConfig = TextFilterConfig(),
                 engine: str = "duckdb", url_column: str | None = None, text_column: str | None = None,
                 stats_path: str | Path | None = None, threads: int | None = None, memory_limit: str | None = None,
                 temp_dir: str | Path | None = None, spark: Any = None, on_step: Callable[[str], None] | None = None,
                 spark_master: str | None = "local[*]", compress_spill: bool = False,
                 gram_passes: int | None = None) -> FilterStats:
    """Apply the text rules to Parquet ``inputs``; write ``out`` (Parquet) and ``filter_stats.json`` beside it.

    ``engine="duckdb"`` writes one Parquet file; ``engine="spark"`` writes a folder of part files
    (pass ``spark`` to reuse a session, else one is made on ``spark_master``). DuckDB keeps to
    ``memory_limit`` (e.g. "4GB") by spilling to a folder under ``temp_dir`` (default: beside ``out``).
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    files = parquet_files(list(inputs))
    cols = resolve_columns(files, url_column, text_column)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    step_cb = on_step or (lambda name: None)
    stats = FilterStats(config=asdict(cfg), engine=engine, inputs=files, output=str(out))
    stats.vocab_rule, stats.vocab_threshold = cfg.vocab_rule
    t0 = time.perf_counter()
    if engine == "duckdb":
        counts = _run_duckdb(files, cols, cfg, out, threads, memory_limit, temp_dir, step_cb, compress_spill,
                             gram_passes)
    elif engine == "spark":
        counts = _run_spark(files, cols, cfg, out, spark or spark_session(spark_master), step_cb)
    else:
        raise UserError(f"engine {engine!r} unknown; use --engine duckdb or --engine spark")
    stats = _stats_from_counts(stats, counts)
    stats.seconds = round(time.perf_counter() - t0, 3)
    atomic_write_text(Path(stats_path) if stats_path else out.parent / "filter_stats.json", stats.to_json())
    return stats


N_STEPS = len(filter_steps(TextFilterConfig(), DUCKDB)) + 1  # + the write
