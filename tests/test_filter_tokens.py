"""One tokenisation on every engine: DuckDB's SQL, Spark's UDF and a plain char-by-char reference agree.

The definition (``openalign.corpus.filter`` module doc): NFC, simple Unicode lower-casing (one code
point to one), then maximal runs of letters, marks and numbers. Property-based: random text from
every script, plus the inputs that made the engines disagree before (Turkish dotted I, final sigma,
combining marks, decomposed accents).
"""

from __future__ import annotations

import random
import sys
import unicodedata

import duckdb
import pytest
from filter_helpers import reference_tokens
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openalign.corpus.filter import (
    DUCKDB,
    alt_text_grams,
    alt_text_tokens,
    normalize_alt_text,
)

_CON = duckdb.connect()


def _duckdb_tokens(texts: list[str]) -> list[list[str]]:
    """DuckDB's tokens, checking on the way that the filter's counting path agrees with them: the
    token count from the stored fast-path flag, and the tokens recomputed from that flag."""
    fast = DUCKDB.fast_path("t")
    sql = (f"SELECT i, {DUCKDB.tokens('t')}, {DUCKDB.tokens_given('t', 'f')}, {DUCKDB.count_given('t', 'f')} "
           f"FROM (SELECT t, i, {fast} AS f FROM (SELECT unnest(?) AS t, unnest(range(len(?))) AS i)) ORDER BY i")
    rows = _CON.execute(sql, [texts, texts]).fetchall()
    assert all(list(a) == list(b) and n == len(a) for _, a, b, n in rows)
    return [list(toks) for _, toks, _, _ in rows]


# Every assigned code point Python knows (Unicode 14.0 on 3.11), surrogates excluded.
ASSIGNED = [cp for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)) not in ("Cn", "Cs")]
any_char = st.sampled_from(ASSIGNED).map(chr)
separators = st.sampled_from(list(" \t\n,.-!?/|:;()[]\"'_\u00a0\u3000"))
words = st.text(alphabet=st.one_of(any_char, st.sampled_from(list("İIıiΣσςΑ\u0301\u0307e\u00e9ßẞǅǄﬁ"))), min_size=1, max_size=6)
alt_texts = st.lists(st.one_of(words, separators), max_size=12).map("".join)
ascii_texts = st.lists(st.text(alphabet="abcXYZ019", min_size=1, max_size=5), min_size=1, max_size=6).map(" ".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(alt_texts, ascii_texts, st.text()), min_size=1, max_size=20))
def test_duckdb_python_and_reference_agree(texts: list[str]) -> None:
    texts = [t for t in texts if not any(0xD800 <= ord(c) <= 0xDFFF for c in t)]
    ref = [reference_tokens(t) for t in texts]
    assert [alt_text_tokens(t) for t in texts] == ref
    assert _duckdb_tokens(texts) == ref


@pytest.mark.parametrize("text, tokens", [
    ("İstanbul'da KEDİ", ["istanbul", "da", "kedi"]),  # one token, as DuckDB always did
    ("ΟΔΟΣ οδος", ["οδοσ", "οδος"]),  # capital sigma lower-cases to σ wherever it stands
    ("Cafe\u0301 café", ["café", "café"]),  # decomposed and precomposed: one token after NFC
    ("हिन्दी भाषा", ["हिन्दी", "भाषा"]),  # vowel signs and virama are marks: inside the word
    ("Red-tailed hawk, 2019!", ["red", "tailed", "hawk", "2019"]),  # the ASCII fast path
    ("ＡＢＣ ｆｕｌｌ", ["ａｂｃ", "ｆｕｌｌ"]),  # no compatibility folding (NFC, not NFKC)
    # assigned after Python's Unicode 14 (CJK Extension H): a separator on every engine, though
    # RE2's own \p{L} (DuckDB) counts it as a letter
    ("a\U00031350b", ["a", "b"]),
])
def test_examples(text: str, tokens: list[str]) -> None:
    assert alt_text_tokens(text) == tokens == reference_tokens(text)
    assert _duckdb_tokens([text]) == [tokens]


def test_grams_are_unigrams_then_bigrams() -> None:
    assert alt_text_grams("A b, C") == ["a", "b", "c", "a b", "b c"]
    assert normalize_alt_text("İΣ") == "iσ"


def _random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(chr(rng.choice(ASSIGNED)) if rng.random() < 0.6 else rng.choice(" ,-İΣ\u0301a")
                    for _ in range(rng.randrange(0, 15))) for _ in range(n)]


@pytest.mark.spark
def test_spark_tokens_match_duckdb() -> None:
    pytest.importorskip("pyspark")
    from openalign.corpus.filter import SPARK, _register_spark_tokens, spark_session

    spark = spark_session("local[1]")
    spark.sparkContext.setLogLevel("ERROR")
    _register_spark_tokens(spark)
    texts = _random_texts(2000) + ["İstanbul", "ΟΔΟΣ", "Cafe\u0301"]
    df = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "i INT, t STRING")
    df.createOrReplaceTempView("tok_input")
    rows = spark.sql(f"SELECT i, {SPARK.tokens('t')} AS toks FROM tok_input ORDER BY i").collect()
    assert [list(r.toks) for r in rows] == _duckdb_tokens(texts) == [reference_tokens(t) for t in texts]
