"""`openalign data build`: all stages end to end on local files, resumable stage by stage; CLI smoke."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from openalign.cli.main import main
from openalign.corpus import build as build_mod
from openalign.corpus.build import STAGES, BuildConfig, build
from openalign.corpus.dedup import DedupConfig
from openalign.corpus.download import DownloadConfig
from openalign.corpus.filter import TextFilterConfig

pytest.importorskip("img2dataset")
WORDS = ["red", "car", "blue", "sky", "green", "tree", "old", "house"]


def _img(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (5, 5, 3), dtype=np.uint8)).resize((260, 220), Image.BICUBIC)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("build")
    (tmp / "img").mkdir()
    rows = []
    for i in range(12):
        _img(i).save(tmp / "img" / f"{i}.jpg")
        rows.append({"url": str(tmp / "img" / f"{i}.jpg"), "alt": " ".join(WORDS[(i + k) % 8] for k in range(4))})
    rows.append({"url": str(tmp / "img" / "0.jpg"), "alt": "too short"})
    pd.DataFrame(rows).to_csv(tmp / "pairs.csv", index=False)
    (tmp / "eval").mkdir()
    _img(3).save(tmp / "eval" / "e3.png")
    cfg = BuildConfig(inputs=(str(tmp / "pairs.csv"),), out_dir=str(tmp / "ds"), eval_images=str(tmp / "eval"),
                      vocab_size=60, filter=TextFilterConfig(vocab_top_n=1000),
                      download=DownloadConfig(image_size=64, threads=4, timeout=5))
    manifest = build(cfg, progress=False)
    return {"tmp": tmp, "cfg": cfg, "manifest": manifest}


def test_all_stages_produce_outputs(built: dict) -> None:
    ds = Path(built["cfg"].out_dir)
    assert list(built["manifest"]["stages"]) == list(STAGES)
    assert json.loads((ds / "filter_stats.json").read_text())["removed"]["length"] == 1
    assert json.loads((ds / "raw_shards" / "download_stats.json").read_text())["written"] == 12
    report = json.loads((ds / "shards" / "dedup_report.json").read_text())
    assert [r["url"].rsplit("/", 1)[-1] for r in report["removed"]] == ["3.jpg"] and report["samples_out"] == 11
    assert (ds / "tokenizer" / "tokenizer.json").exists()
    assert built["manifest"]["stages"]["tokenizer"]["summary"]["texts"] == 11


def test_resume_skips_finished_stages(built: dict, monkeypatch) -> None:
    ran: list[str] = []
    for stage in STAGES:
        real = build_mod.RUNNERS[stage]
        monkeypatch.setitem(build_mod.RUNNERS, stage, lambda c, o, p, _r=real, _s=stage: (ran.append(_s), _r(c, o, p))[1])
    logs: list[str] = []
    build(built["cfg"], progress=False, log=logs.append)
    assert ran == [] and len(logs) == len(STAGES)
    # a changed dedup threshold redoes dedup and what follows, not the download
    cfg2 = BuildConfig(**{**built["cfg"].__dict__, "dedup": DedupConfig(max_hamming=0)})
    build(cfg2, progress=False, log=logs.append)
    assert ran == ["dedup", "tokenizer"]
    # a lost output redoes its stage
    (Path(cfg2.out_dir) / "tokenizer" / "tokenizer.json").unlink()
    import shutil

    shutil.rmtree(Path(cfg2.out_dir) / "tokenizer")
    build(cfg2, progress=False, log=logs.append)
    assert ran == ["dedup", "tokenizer", "tokenizer"]


def test_cli_filter_prints_table_and_user_error(built: dict, tmp_path: Path, capsys) -> None:
    ds = Path(built["cfg"].out_dir)
    rc = main(["data", "filter", str(ds / "candidates.parquet"), "--out", str(tmp_path / "p.parquet"),
               "--min-unigrams", "5"])
    out = capsys.readouterr().out
    assert rc == 0 and "length" in out and "kept" in out
    assert json.loads((tmp_path / "filter_stats.json").read_text())["kept"] == 0
    pd.DataFrame({"link": ["x"]}).to_parquet(tmp_path / "bad.parquet")
    rc = main(["data", "filter", str(tmp_path / "bad.parquet"), "--out", str(tmp_path / "o.parquet")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "bad.parquet" in err and "'url'" in err and "--url-column" in err


def test_missing_extra_named(monkeypatch, tmp_path: Path) -> None:
    import builtins

    from openalign.corpus import download
    from openalign.errors import UserError

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "img2dataset":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(UserError, match=r"openalign\[download\]"):
        download._img2dataset()
