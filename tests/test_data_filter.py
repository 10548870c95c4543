"""Text filters: each rule against a plain-Python reference; DuckDB == Spark."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from filter_helpers import reference_tokens

from openalign.corpus.filter import (
    RULES,
    TextFilterConfig,
    filter_pairs,
    format_stats_table,
)
from openalign.errors import UserError

SMALL = TextFilterConfig(max_images_per_text=3, max_texts_per_image=4, vocab_top_n=150, min_unigrams=2, max_unigrams=6)
WORDS = ["cat", "dog", "red", "Blue", "sky", "car", "café", "naïve", "ÜBER", "x2", "42", "tree", "hawk", "sea",
         "moon", "sun", "road", "hill", "bird", "fish"]


def _gen(n: int = 1500, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    weights = [1 / (i + 1) ** 1.1 for i in range(len(WORDS))]
    shared = ["a shared caption here", "Click here!", "logo"]
    rows = []
    for i in range(n):
        r = rng.random()
        url = f"http://img.test/{rng.randrange(n // 2)}.jpg" if r > 0.1 else f"http://hub.test/{rng.randrange(3)}.jpg"
        if rng.random() < 0.15:
            text = rng.choice(shared)
        else:
            k = rng.randrange(0, 9)
            seps = [" ", ", ", "-", "  ", "!"]
            text = "".join(w + rng.choice(seps) for w in rng.choices(WORDS, weights, k=k)).strip()
        page = rng.choice([None, f"http://page.test/{rng.randrange(5)}"])
        rows.append((url, text, page))
    rows += [(None, "no url", None), ("", "empty url", None), ("http://x.test/1.jpg", None, None)]
    rows += rows[:50]  # exact duplicates
    rng.shuffle(rows)
    return pd.DataFrame(rows, columns=["url", "alt", "page_url"])  # cc2dataset naming


_toks = reference_tokens  # the char-by-char tokenisation of the module doc


def _grams(t: str) -> list[str]:
    u = _toks(t)
    return u + [f"{a} {b}" for a, b in zip(u, u[1:])]


def reference(df: pd.DataFrame, cfg: TextFilterConfig) -> tuple[set[tuple], dict[str, int]]:
    """The rules written the obvious way in plain Python."""
    valid = [(u, t, p) for u, t, p in df.itertuples(index=False) if u and t is not None]
    pages: dict[tuple[str, str], str | None] = {}
    for u, t, p in valid:
        old = pages.get((u, t), "\uffff")
        pages[(u, t)] = min((x for x in (old, p) if x is not None), default=None) if (u, t) in pages else p
    pages = {k: (None if v == "\uffff" else v) for k, v in pages.items()}
    counts = Counter()
    for _, t, _ in valid:
        counts.update(_grams(t))
    if cfg.vocab_top_n is not None:  # every gram tied with the N-th most frequent one is kept
        ranked = sorted(counts.values(), reverse=True)
        n = cfg.vocab_top_n
        k = float("inf") if n == 0 else (ranked[n - 1] if n <= len(ranked) else 1)
        vocab = {g for g, c in counts.items() if c >= k}
    else:
        vocab = {g for g, c in counts.items() if c >= cfg.vocab_min_count}
    imgs_per_text = Counter(t for _, t in pages)
    texts_per_img = Counter(u for u, _ in pages)
    removed = Counter({"invalid": len(df) - len(valid), "duplicate": len(valid) - len(pages)})
    kept = set()
    for (u, t), p in pages.items():
        if imgs_per_text[t] > cfg.max_images_per_text:
            removed["text_shared"] += 1
        elif texts_per_img[u] > cfg.max_texts_per_image:
            removed["image_many_texts"] += 1
        elif any(g not in vocab for g in _grams(t)):
            removed["rare_token"] += 1
        elif not cfg.min_unigrams <= len(_toks(t)) <= cfg.max_unigrams:
            removed["length"] += 1
        else:
            kept.add((u, t, p))
    return kept, {r: removed[r] for r in RULES}


def _out(path: Path) -> set[tuple]:
    return set(map(tuple, pd.read_parquet(path).itertuples(index=False)))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("filter") / "cand.parquet"
    _gen().to_parquet(path)
    return path


SMALL_COUNT = dataclasses.replace(SMALL, vocab_top_n=None, vocab_min_count=4)  # the default rule, bitten


@pytest.mark.parametrize("cfg", [SMALL, SMALL_COUNT, TextFilterConfig(), TextFilterConfig(vocab_top_n=40, min_unigrams=1),
                                 TextFilterConfig(vocab_top_n=100_000_000), TextFilterConfig(vocab_min_count=1)])
def test_duckdb_matches_reference(data: Path, tmp_path: Path, cfg: TextFilterConfig) -> None:
    stats = filter_pairs(data, tmp_path / "pairs.parquet", cfg)
    kept, removed = reference(pd.read_parquet(data), cfg)
    assert _out(tmp_path / "pairs.parquet") == kept
    assert stats.removed == removed and stats.kept == len(kept)
    assert json.loads((tmp_path / "filter_stats.json").read_text())["removed"] == removed
    if cfg in (SMALL, SMALL_COUNT):
        assert all(n > 0 for n in removed.values()), removed  # the generated data exercises every rule


@pytest.mark.parametrize("cfg", [SMALL, SMALL_COUNT])
def test_wide_text_ids_match_the_reference(data: Path, tmp_path: Path, cfg: TextFilterConfig, monkeypatch) -> None:
    """Inputs of 2^32 rows or more keep 64-bit pair and text ids and counts (below, 32-bit ones save
    memory): forced here, the result is the reference's as well."""
    import openalign.corpus.filter as filt

    monkeypatch.setattr(filt, "NARROW_IDS_BELOW", 0)
    stats = filter_pairs(data, tmp_path / "pairs.parquet", cfg)
    kept, removed = reference(pd.read_parquet(data), cfg)
    assert _out(tmp_path / "pairs.parquet") == kept and stats.removed == removed


def test_gram_count_table_is_narrow_below_two_to_the_32_rows(data: Path) -> None:
    """The gram count's columns: 64-bit gram ids and counts (never a 16-byte HUGEINT sum), text ids
    in 32 bits when the input allows it, 64 otherwise."""
    import duckdb

    from openalign.corpus.filter import DUCKDB, filter_steps

    for narrow, tid_type in ((True, "UINTEGER"), (False, "BIGINT")):
        con = duckdb.connect()
        con.execute(f"CREATE VIEW raw_input AS SELECT url, alt AS text, page_url FROM read_parquet('{data}')")
        steps = {s.name: s for s in filter_steps(TextFilterConfig(), DUCKDB, narrow_ids=narrow)}
        for name in ("valid", "pairs", "text_info", "text_grams"):
            con.execute(f"CREATE VIEW {name} AS {steps[name].sql}")
        types = dict(con.execute(f"DESCRIBE {steps['gram_counts'].sql.replace('/*pass*/', '')}").fetchall()[i][:2]
                     for i in range(4))
        assert types == {"g": "UBIGINT", "cnt": "BIGINT", "tid_lo": tid_type, "tid_hi": tid_type}, types
        con.close()


def test_stats_table_lists_rules_in_order(data: Path, tmp_path: Path) -> None:
    stats = filter_pairs(data, tmp_path / "pairs.parquet", SMALL)
    table = format_stats_table(stats)
    positions = [table.index(r) for r in RULES]
    assert positions == sorted(positions) and f"{stats.kept:,}" in table.splitlines()[-1]


def _zipf(n: int, seed: int = 0, vocab: int = 2000, s: float = 1.1) -> pd.DataFrame:
    """Alt-texts of 3-8 words drawn from a Zipf vocabulary (the bench's generator, small)."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]
    weights = [1 / (i + 1) ** s for i in range(vocab)]
    texts = [" ".join(rng.choices(words, weights, k=rng.randint(3, 8))) for _ in range(n)]
    return pd.DataFrame({"url": [f"http://img.test/{i}.jpg" for i in range(n)], "text": texts, "page_url": None})


def test_default_rare_rule_bites_on_a_small_zipf_sample(tmp_path: Path) -> None:
    df = _zipf(300)
    df.to_parquet(tmp_path / "z.parquet")
    stats = filter_pairs(tmp_path / "z.parquet", tmp_path / "p.parquet")  # the defaults
    kept, removed = reference(df, TextFilterConfig())
    assert stats.removed == removed and _out(tmp_path / "p.parquet") == kept
    assert 0 < removed["rare_token"] < len(df), removed  # the rule means something at 300 pairs
    assert (stats.vocab_rule, stats.vocab_threshold) == ("min_count", 3)
    # the paper's N (100M) over a corpus of a few thousand distinct grams removes nothing: why it is not the default
    assert filter_pairs(tmp_path / "z.parquet", tmp_path / "q.parquet", TextFilterConfig(vocab_top_n=100_000_000)
                        ).removed["rare_token"] == 0


def test_default_rare_rule_removes_nothing_when_every_gram_is_frequent(tmp_path: Path) -> None:
    base = _zipf(40)
    df = pd.DataFrame({"url": [f"http://img.test/{k}/{u}" for k in range(3) for u in base.url],
                       "text": list(base.text) * 3, "page_url": None})  # every text (so every gram) on 3 images
    df.to_parquet(tmp_path / "f.parquet")
    stats = filter_pairs(tmp_path / "f.parquet", tmp_path / "p.parquet")
    assert stats.removed["rare_token"] == 0 and stats.vocab_size == stats.distinct_grams > 0
    higher = TextFilterConfig(vocab_min_count=4)  # grams seen exactly 3 times are now rare
    assert filter_pairs(tmp_path / "f.parquet", tmp_path / "p.parquet", higher).removed == reference(df, higher)[1]
    assert reference(df, higher)[1]["rare_token"] > 0


def test_stats_show_the_rare_token_threshold(data: Path, tmp_path: Path) -> None:
    for cfg, rule, value, words in [(SMALL, "top_n", 150, "top-150 "), (TextFilterConfig(), "min_count", 3, "< 3 times"),
                                    (TextFilterConfig(vocab_top_n=100_000_000), "top_n", 100_000_000, "top-100,000,000")]:
        stats = filter_pairs(data, tmp_path / "p.parquet", cfg)
        saved = json.loads((tmp_path / "filter_stats.json").read_text())
        assert (saved["vocab_rule"], saved["vocab_threshold"]) == (stats.vocab_rule, stats.vocab_threshold) == (rule, value)
        row = next(line for line in format_stats_table(stats).splitlines() if line.startswith("rare_token"))
        assert words in row and row.split()[-2] == f"{stats.removed['rare_token']:,}"


def test_bad_vocab_thresholds_are_rejected() -> None:
    with pytest.raises(ValueError, match="vocab_min_count"):
        TextFilterConfig(vocab_min_count=0)
    with pytest.raises(ValueError, match="vocab_top_n"):
        TextFilterConfig(vocab_top_n=-1)


def test_output_sorted_and_typed(data: Path, tmp_path: Path) -> None:
    filter_pairs(data, tmp_path / "p.parquet", SMALL)
    df = pd.read_parquet(tmp_path / "p.parquet")
    assert list(df.columns) == ["url", "text", "page_url"]
    assert list(zip(df.url, df.text)) == sorted(zip(df.url, df.text))


def test_missing_column_is_user_error(tmp_path: Path) -> None:
    pd.DataFrame({"url": ["http://a"], "title": ["x"]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(UserError) as e:
        filter_pairs(tmp_path / "t.parquet", tmp_path / "o.parquet")
    assert "t.parquet" in str(e.value) and "'text'" in str(e.value) and "--text-column" in str(e.value)
    with pytest.raises(UserError, match="nope.parquet"):
        filter_pairs(tmp_path / "nope.parquet", tmp_path / "o.parquet")
    with pytest.raises(UserError, match="engine"):
        filter_pairs(tmp_path / "t.parquet", tmp_path / "o.parquet", engine="polars", text_column="title")


@pytest.fixture(scope="module")
def spark():
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("java not installed")
    from openalign.corpus.filter import spark_session

    session = spark_session("local[1]")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.mark.spark
@pytest.mark.parametrize("cfg", [SMALL, SMALL_COUNT], ids=["top_n", "min_count"])
def test_spark_matches_duckdb(data: Path, tmp_path: Path, spark, cfg: TextFilterConfig) -> None:
    d = filter_pairs(data, tmp_path / "duck.parquet", cfg)
    s = filter_pairs(data, tmp_path / "spark.parquet", cfg, engine="spark", spark=spark,
                     stats_path=tmp_path / "spark_stats.json")
    duck = pd.read_parquet(tmp_path / "duck.parquet")
    sp = pd.read_parquet(tmp_path / "spark.parquet")
    assert (tmp_path / "spark.parquet").is_dir()
    pd.testing.assert_frame_equal(duck.reset_index(drop=True), sp.reset_index(drop=True))
    assert d.removed == s.removed and d.kept == s.kept and d.vocab_size == s.vocab_size
    assert (s.vocab_rule, s.vocab_threshold) == cfg.vocab_rule


def test_memory_limit_spills_to_temp_dir_and_keeps_the_result(tmp_path: Path) -> None:
    """Under a tight --memory-limit DuckDB spills to --temp-dir (made if missing, parents too): same
    output, the spill folder removed."""
    src = tmp_path / "z.parquet"
    _zipf(100_000).to_parquet(src)
    free = filter_pairs(src, tmp_path / "free.parquet", TextFilterConfig(), threads=1)
    spill = tmp_path / "scratch" / "spill"  # not there yet
    tight = filter_pairs(src, tmp_path / "tight.parquet", TextFilterConfig(), threads=1, memory_limit="45MB",
                         temp_dir=spill)
    assert free.spilled_bytes == 0 and tight.spilled_bytes > 0
    assert (tight.kept, tight.removed) == (free.kept, free.removed)
    assert _out(tmp_path / "tight.parquet") == _out(tmp_path / "free.parquet")
    assert list(spill.iterdir()) == []  # DuckDB's spill files do not outlive the run


@pytest.mark.parametrize("top_n", [None, 3000])
def test_gram_passes_count_the_same_grams(tmp_path: Path, top_n) -> None:
    """Counting the grams in passes (each over a share of the gram ids) changes nothing the filter
    reports or keeps, with the count rule and with top-N (whose cutoff needs every gram's count)."""
    src = tmp_path / "z.parquet"
    _zipf(20_000).to_parquet(src)
    cfg = TextFilterConfig(vocab_top_n=top_n)
    one = filter_pairs(src, tmp_path / "one.parquet", cfg, threads=1)
    three = filter_pairs(src, tmp_path / "three.parquet", cfg, threads=1, gram_passes=3)
    assert (one.gram_passes, three.gram_passes) == (1, 3)
    assert (three.kept, three.removed, three.vocab_size, three.distinct_grams, three.rare_below) == \
        (one.kept, one.removed, one.vocab_size, one.distinct_grams, one.rare_below)
    assert one.removed["rare_token"] > 0
    assert _out(tmp_path / "three.parquet") == _out(tmp_path / "one.parquet")


def test_folder_peak_sees_a_file_that_came_and_went(tmp_path: Path) -> None:
    """The spill peaks inside a step: the watcher must report a size the folder no longer has."""
    import time

    from openalign.corpus.filter import FolderPeak

    watch = FolderPeak(tmp_path / "spill", every=0.02).start()  # the folder appears later
    (tmp_path / "spill" / "sub").mkdir(parents=True)
    (tmp_path / "spill" / "sub" / "block.tmp").write_bytes(b"x" * 100_000)
    (tmp_path / "spill" / "db").write_bytes(b"y" * 1000)
    deadline = time.monotonic() + 30
    while watch.peak < 101_000 and time.monotonic() < deadline:
        time.sleep(0.02)
    (tmp_path / "spill" / "sub" / "block.tmp").unlink()
    assert watch.stop() == 101_000 and watch.size() == 1000


def test_gram_passes_grow_as_the_memory_limit_shrinks() -> None:
    import duckdb

    from openalign.corpus.filter import gram_passes

    con = duckdb.connect()
    con.execute("CREATE TABLE text_info AS SELECT range AS tid, 10 AS n_uni FROM range(100000)")  # 1.9M grams
    seen = []
    for limit in ("1GB", "20MB", "5MB"):
        con.execute(f"SET memory_limit = '{limit}'")
        seen.append(gram_passes(con))
    assert seen[0] == 1 and seen[0] < seen[1] < seen[2]
    assert gram_passes(con, passes=2) == 2  # given, it wins


def test_compress_spill_keeps_tables_in_a_database_file(tmp_path: Path, monkeypatch) -> None:
    """With compress_spill the intermediate tables go to a DuckDB file in the spill folder (stored
    compressed), seen while the filter runs, counted in spilled_bytes and removed after."""
    import openalign.corpus.filter as flt

    src = tmp_path / "z.parquet"
    _zipf(20_000).to_parquet(src)
    spill = tmp_path / "spill"
    spill.mkdir()
    seen: list[int] = []
    real = flt._spilled_bytes

    def watch(con, folder):
        db = folder / "filter.duckdb"
        seen.append(db.stat().st_size if db.is_file() else -1)
        return real(con, folder)

    monkeypatch.setattr(flt, "_spilled_bytes", watch)
    stats = filter_pairs(src, tmp_path / "o.parquet", TextFilterConfig(), threads=1, memory_limit="1GB", temp_dir=spill,
                         compress_spill=True)
    assert seen and min(seen) > 0 and stats.spilled_bytes >= max(seen)
    assert list(spill.iterdir()) == []
    free = filter_pairs(src, tmp_path / "free.parquet", TextFilterConfig(), threads=1)
    assert _out(tmp_path / "o.parquet") == _out(tmp_path / "free.parquet")


def test_bad_memory_limit_is_one_line(data: Path, tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    with pytest.raises(UserError, match="--memory-limit 'lots'.*4GB"):
        filter_pairs(data, tmp_path / "o.parquet", SMALL, memory_limit="lots", temp_dir=spill)
    assert list(spill.iterdir()) == []


def test_a_killed_runs_spill_folder_is_removed_by_the_next_run(tmp_path: Path) -> None:
    """SIGKILL skips the filter's cleanup; the next run on this host removes that folder, and leaves
    a live process's folder and another host's (a shared --temp-dir) alone."""
    import os
    import subprocess
    import sys

    import openalign.corpus.filter as flt

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    spill = tmp_path / "spill"
    stale = spill / f"{flt.SPILL_PREFIX}{flt._host()}-{dead.pid}"
    live = spill / f"{flt.SPILL_PREFIX}{flt._host()}-{os.getppid()}"
    other_host = spill / f"{flt.SPILL_PREFIX}other-host-{dead.pid}"
    for d in (stale, live, other_host):
        d.mkdir(parents=True)
        (d / "duckdb_temp_block-1.block").write_bytes(b"x" * 1000)
    src = tmp_path / "z.parquet"
    _zipf(2_000).to_parquet(src)
    filter_pairs(src, tmp_path / "o.parquet", TextFilterConfig(), threads=1, temp_dir=spill)
    assert not stale.exists()
    assert live.is_dir() and other_host.is_dir()
