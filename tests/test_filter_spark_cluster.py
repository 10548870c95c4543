"""The text filter on a Spark cluster with two executors gives DuckDB's pairs and counts.

The cluster is Spark's ``local-cluster[2,1,1024]`` master: a standalone master and two workers,
each a separate executor JVM, all on 127.0.0.1. It runs in a child process (the
``openalign data filter --engine spark --spark-master ...`` command), with its own SPARK_HOME
(links to the pip pyspark's ``bin`` and ``jars``, so the workers' scratch ``work/`` folder lands in
tmp_path, not in site-packages) and its own ``spark-defaults.conf``, the way a real cluster is
configured. Spark's event log, the History Server's input, tells which executor ran each task.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest

from openalign.cli._config_args import config_from_args
from openalign.cli.main import build_parser
from openalign.corpus.filter import RULES, FilterOptions, TextFilterConfig, filter_pairs

MASTER = "local-cluster[2,1,1024]"  # 2 workers x 1 core x 1024 MiB: two executor JVMs
CFG = TextFilterConfig(max_images_per_text=3, max_texts_per_image=4, min_unigrams=2, max_unigrams=6, vocab_min_count=3)
# Scripts that stress the tokeniser: accents, case folding, Cyrillic, Greek, CJK (runs without
# spaces), Arabic, Devanagari (combining vowel signs), Hangul, digits; emoji and punctuation split.
WORDS = ["cat", "Straße", "ÜBER", "café", "naïve", "кошка", "Москва", "γάτα", "ΣΟΦΙΑ", "猫", "東京タワー", "القط",
         "हिन्दी", "고양이", "x2", "2019", "São", "İstanbul", "ǅemal", "ﬁsh"]
SEPS = [" ", ", ", "-", "  ", "!", " 🐱 ", "、", "・", "\u00a0"]


def _text(rng: random.Random, k: int) -> str:
    weights = [1 / (i + 1) ** 1.1 for i in range(len(WORDS))]
    words = rng.choices(WORDS, weights, k=k)
    if rng.random() < 0.08:  # a word seen once in the whole corpus: rare_token
        words[rng.randrange(k)] = f"{rng.choice(WORDS)}{rng.randrange(10**6)}"
    return "".join(w + rng.choice(SEPS) for w in words).strip()


def make_corpus(folder: Path, n: int = 2400, parts: int = 4, seed: int = 0) -> pd.DataFrame:
    """``parts`` Parquet files (so the scan alone has tasks for both executors) hitting every rule."""
    rng = random.Random(seed)
    shared = ["Click here!", "logo", "a shared caption here", "Фото дня"]  # on many images: text_shared
    rows: list[tuple] = []
    for _ in range(n):
        hub = rng.random() < 0.08  # a few icons with many alt-texts: image_many_texts
        url = f"http://hub.test/{rng.randrange(3)}.png" if hub else f"http://img.test/{rng.randrange(n)}.jpg"
        r = rng.random()
        text = rng.choice(shared) if r < 0.1 else _text(rng, rng.randrange(1, 10))  # 1 or > 6 words: length
        rows.append((url, text, rng.choice([None, f"http://page.test/{rng.randrange(7)}"])))
    rows += [(None, "no url", None), ("", "empty url", None), ("http://x.test/1.jpg", None, None)]  # invalid
    rows += rng.sample(rows, 60)  # duplicate
    rng.shuffle(rows)
    df = pd.DataFrame(rows, columns=["url", "alt", "page_url"])  # cc2dataset's column name
    folder.mkdir(parents=True)
    for i in range(parts):
        df.iloc[i::parts].to_parquet(folder / f"part-{i:05d}.parquet", index=False)
    return df


def _spark_env(tmp: Path, events: Path) -> dict[str, str]:
    """A private SPARK_HOME and conf folder, everything bound to 127.0.0.1."""
    import pyspark

    home, conf = tmp / "spark_home", tmp / "spark_conf"
    home.mkdir()
    conf.mkdir()
    pkg = Path(pyspark.__file__).parent
    for name in ("bin", "jars", "python", "sbin"):
        if (pkg / name).exists():
            (home / name).symlink_to(pkg / name)
    (conf / "spark-defaults.conf").write_text(
        "spark.eventLog.enabled true\n"
        "spark.eventLog.compress false\n"  # Spark 4 compresses and rolls the log by default
        "spark.eventLog.rolling.enabled false\n"
        f"spark.eventLog.dir {events.as_uri()}\n"
        "spark.driver.host 127.0.0.1\n"
        "spark.driver.bindAddress 127.0.0.1\n"
        "spark.driver.memory 1g\n")
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_CONF_DIR": str(conf), "SPARK_LOCAL_IP": "127.0.0.1",
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    env.pop("PYSPARK_SUBMIT_ARGS", None)
    return env


def tasks_per_executor(events: Path) -> Counter:
    """Successful tasks per executor id, read from Spark's event log (one JSON event a line)."""
    done: Counter = Counter()
    for log in (p for p in events.rglob("*") if p.is_file()):
        for line in log.read_text().splitlines():
            ev = json.loads(line)
            if ev.get("Event") == "SparkListenerTaskEnd" and ev["Task End Reason"]["Reason"] == "Success":
                done[ev["Task Info"]["Executor ID"]] += 1
    return done


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory) -> dict:
    pytest.importorskip("pyspark")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("java not installed")
    tmp = tmp_path_factory.mktemp("cluster")
    make_corpus(tmp / "candidates")
    events = tmp / "events"
    events.mkdir()
    flags = [x for k, v in asdict(CFG).items() if v is not None for x in (f"--{k.replace('_', '-')}", str(v))]
    cmd = [sys.executable, "-m", "openalign.cli.main", "data", "filter", str(tmp / "candidates"),
           "--out", str(tmp / "spark" / "pairs.parquet"), "--engine", "spark", "--spark-master", MASTER, *flags]
    proc = subprocess.run(cmd, env=_spark_env(tmp, events), capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    duck = filter_pairs(tmp / "candidates", tmp / "duck" / "pairs.parquet", CFG)
    return {"tmp": tmp, "events": events, "stdout": proc.stdout, "duck": duck}


def test_spark_master_flag() -> None:
    argv = ["data", "filter", "in.parquet", "--out", "o", "--engine", "spark", "--spark-master"]
    assert config_from_args(FilterOptions, build_parser().parse_args([*argv, "spark://10.0.0.7:7077"])) == \
        FilterOptions(engine="spark", spark_master="spark://10.0.0.7:7077")
    assert config_from_args(FilterOptions, build_parser().parse_args([*argv, "none"])).spark_master is None


@pytest.mark.spark
@pytest.mark.slow
def test_cluster_keeps_the_pairs_duckdb_keeps(cluster_run: dict) -> None:
    tmp = cluster_run["tmp"]
    spark_out = tmp / "spark" / "pairs.parquet"
    assert spark_out.is_dir()  # part files written by the executors
    duck = pd.read_parquet(tmp / "duck" / "pairs.parquet")
    spark = pd.read_parquet(spark_out)
    assert len(duck) == cluster_run["duck"].kept > 0
    pd.testing.assert_frame_equal(duck.reset_index(drop=True), spark.reset_index(drop=True))  # url/text order too


@pytest.mark.spark
@pytest.mark.slow
def test_cluster_counts_equal_duckdb(cluster_run: dict) -> None:
    tmp = cluster_run["tmp"]
    d = json.loads((tmp / "duck" / "filter_stats.json").read_text())
    s = json.loads((tmp / "spark" / "filter_stats.json").read_text())
    assert (d["engine"], s["engine"]) == ("duckdb", "spark")
    for key in ("config", "inputs", "rows_in", "removed", "kept", "vocab_size", "distinct_grams", "vocab_rule",
                "vocab_threshold"):
        assert s[key] == d[key], key
    assert list(s["removed"]) == list(RULES) and all(n > 0 for n in s["removed"].values()), s["removed"]
    assert f"{s['kept']:,}" in cluster_run["stdout"]  # the printed table


@pytest.mark.spark
@pytest.mark.slow
def test_both_executors_ran_tasks(cluster_run: dict) -> None:
    done = tasks_per_executor(cluster_run["events"])
    executors = {e: n for e, n in done.items() if e != "driver"}
    assert len(executors) >= 2 and all(n > 0 for n in executors.values()), done
