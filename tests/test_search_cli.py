"""CLI smoke tests with a real tiny model: index build (shards, DataLoader worker), index add (folder), search, parquet."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import pytest

from openalign.errors import UserError

from search_helpers import draw


def run(argv: list[str]) -> int:
    """Parse with just the search commands (the full CLI imports every subcommand)."""
    from openalign.cli import index, search, serve

    parser = argparse.ArgumentParser(prog="openalign")
    sub = parser.add_subparsers(dest="command", required=True)
    search.register(sub)
    serve.register(sub)
    grp = sub.add_parser("index").add_subparsers(dest="index_command", required=True)
    index.register(grp)
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def tiny_model(tiny_data, tmp_path_factory) -> Path:
    from openalign.models.dual_encoder import DualEncoder
    from openalign.models.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_data["tokenizer"])
    out = tmp_path_factory.mktemp("tinymodel") / "model"
    DualEncoder.from_preset("tiny", vocab_size=len(tok), seed=0).save_pretrained(out, tokenizer=tok)
    return out


def test_build_add_search_with_tiny_model(tiny_data, tiny_model: Path, tmp_path: Path, capsys):
    idx = tmp_path / "index"
    assert run(["index", "build", "--model", str(tiny_model), "--shards", tiny_data["shards"], "--out", str(idx),
                "--workers", "1", "--batch-size", "16"]) == 0
    built = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert built["count"] == 64 and built["index_type"] == "flat" and built["captions_indexed"]
    imgs = tmp_path / "more"
    imgs.mkdir()
    for i, (c, s) in enumerate([("red", "circle"), ("blue", "square")]):
        draw(c, s, seed=i).save(imgs / f"{i}.png")
    (imgs / "broken.jpg").write_bytes(b"not an image")
    assert run(["index", "add", "--index", str(idx), "--images", str(imgs), "--workers", "0"]) == 0
    added = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert added["count"] == 66 and added["stats"]["skipped_unreadable_image"] == 1
    manifest = json.loads((idx / "manifest.json").read_text())
    assert manifest["model"]["dir"] == str(tiny_model.resolve()) and manifest["model"]["preset"] == "tiny"
    assert run(["search", "--index", str(idx), "--text", "a red circle", "-k", "5"]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].split()[:3] == ["rank", "id", "score"] and len(table) == 6
    assert run(["search", "--index", str(idx), "--text", "a red circle", "--captions", "-k", "2", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(rows) == 2 and all(r["caption"] for r in rows)
    # image + terms runs end to end (a random-init tiny model: plumbing only, not semantics)
    assert run(["search", "--index", str(idx), "--image", str(imgs / "0.png"), "--add", "blue",
                "--subtract", "red", "-k", "3"]) in (0,)


def test_parquet_source_and_user_errors(tiny_model: Path, tmp_path: Path):
    from openalign.search.build import build_index

    (tmp_path / "imgs").mkdir()
    for i in range(3):
        draw("green", "square", seed=i).save(tmp_path / "imgs" / f"{i}.png")
    pd.DataFrame({"path": [f"imgs/{i}.png" for i in range(3)], "caption": ["a", "b", None]}).to_parquet(tmp_path / "t.parquet")
    m = build_index(tmp_path / "idx", tiny_model, parquet=str(tmp_path / "t.parquet"), num_workers=0)
    assert m["count"] == 3 and m["caption_count"] == 2
    with pytest.raises(UserError, match="--image"):
        run(["search", "--index", str(tmp_path / "idx"), "--image", str(tmp_path / "t.parquet")])
    with pytest.raises(UserError, match="--images"):
        run(["index", "build", "--model", str(tiny_model), "--images", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    with pytest.raises(UserError, match="--index"):
        run(["search", "--index", str(tmp_path / "missing"), "--text", "x"])


def test_serve_loads_the_manifest_model_with_the_fast_text_path(tiny_model: Path, tmp_path: Path, monkeypatch):
    """`openalign serve` without --model loads the index's model itself, with the query text tower in
    the precision asked (default auto), before uvicorn starts."""
    import openalign.search.server as server

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, (c, s) in enumerate([("red", "circle"), ("blue", "square")]):
        draw(c, s).save(folder / f"{i}.png")
    assert run(["index", "build", "--model", str(tiny_model), "--images", str(folder), "--out", str(tmp_path / "ix"),
                "--workers", "0"]) == 0
    seen: dict = {}
    real_load = server.load_bundle
    monkeypatch.setattr(server, "load_bundle", lambda d, **kw: seen.update(dir=d, **kw) or real_load(d, **kw))
    monkeypatch.setattr(server.uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    assert run(["serve", "--index", str(tmp_path / "ix"), "--port", "8123"]) == 0
    assert Path(seen["dir"]).resolve() == tiny_model.resolve()
    assert seen["text_precision"] == "auto" and seen["compile_text"] is False
    assert seen["port"] == 8123 and seen["host"] == "127.0.0.1"
    run(["serve", "--index", str(tmp_path / "ix"), "--text-precision", "fp32"])
    assert seen["text_precision"] == "fp32"
