"""``openalign embed`` parts: ranks split the work deterministically, a killed rank resumes without
redoing finished parts, and an index built from parts equals one built directly."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_shards
from search_helpers import ToyEncoder, make_collection

from openalign.errors import UserError
from openalign.models.embed import embed_batches
from openalign.search.build import build_index
from openalign.search.index import IndexParams
from openalign.search.parts import (
    PartOptions,
    build_index_from_parts,
    embed_to_parts,
    plan_parts,
    read_parts,
    resolve_rank,
)
from openalign.search.query import SearchIndex

TESTS = Path(__file__).parent


class OtherToy(ToyEncoder):
    name = "other-toy"  # no weights to fingerprint: the name tells the models apart


class Counting:
    """An ``embed`` function that counts images and can die (raise or SIGKILL) after ``die_after`` batches."""

    def __init__(self, die_after: int | None = None, kill: bool = False) -> None:
        self.images, self.batches, self.die_after, self.kill = 0, 0, die_after, kill

    def __call__(self, *args, **kw):
        for batch in embed_batches(*args, **kw):
            if self.die_after is not None and self.batches == self.die_after:
                if self.kill:
                    import os
                    os.kill(os.getpid(), signal.SIGKILL)
                raise KeyboardInterrupt("simulated kill")
            self.batches += 1
            self.images += len(batch["rows"])
            yield batch


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("collection") / "imgs"
    make_collection(root, per_kind=2)  # 18 images with captions
    (root / "zz_broken.png").write_bytes(b"not an image")  # sorted last
    (root / "green_circle_0.txt").unlink()  # one image without a caption
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return write_shards(tmp_path_factory.mktemp("shards"), 20, per_shard=6, corrupt=1)  # 4 shards, 1 bad image


def embed(out: Path, rank: int | None = None, world: int | None = None, encoder=None, **kw) -> dict:
    opts = {k: kw.pop(k) for k in ("part_size", "dtype", "resume") if k in kw}
    kw.setdefault("num_workers", 0)
    kw.setdefault("batch_size", 4)
    return embed_to_parts(out, encoder=encoder or ToyEncoder(), progress=False,
                          options=PartOptions(rank=rank, world_size=world, **opts), **kw)


def assert_same_parts(a: Path, b: Path) -> None:
    pa, pb = read_parts(a), read_parts(b)
    cols = ["gid", "path", "url", "caption", "width", "height", "thumb"]
    pd.testing.assert_frame_equal(pa.metadata[cols], pb.metadata[cols])
    np.testing.assert_array_equal(pa.vectors, pb.vectors)
    np.testing.assert_array_equal(pa.text_vectors, pb.text_vectors)
    assert pa.stats == pb.stats


def test_plan_is_deterministic_and_covers_everything():
    rows = [p for r in range(3) for p in plan_parts("images", 10, r, 3, 2)]
    assert [(p.lo, p.hi) for p in rows] == [(0, 2), (2, 3), (3, 5), (5, 6), (6, 8), (8, 10)]
    assert [p.name for p in plan_parts("images", 10, 1, 3, 2)] == ["part-00001-00000", "part-00001-00001"]
    assert [p.shard for p in plan_parts("shards", 5, 1, 2, 99)] == [1, 3]
    assert plan_parts("images", 1, 0, 2, 4) == []  # more ranks than images: nothing to do, still fine


def test_source_options_mirror_embed_to_parts():
    import dataclasses
    import inspect

    from openalign.search.build import SourceOptions

    params = inspect.signature(embed_to_parts).parameters
    for f in dataclasses.fields(SourceOptions):  # `openalign embed` passes SourceOptions as keywords
        assert params[f.name].default == f.default, f.name
    assert params["options"].default == PartOptions()


def test_rank_from_torchrun_env(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert resolve_rank() == (1, 3) and resolve_rank(0, 2) == (0, 2)
    with pytest.raises(UserError, match="--rank 3 --world-size 3"):
        resolve_rank(3)


@pytest.mark.parametrize("kind", ["images", "shards", "parquet"])
def test_two_ranks_give_the_same_vectors_as_one(kind: str, folder: Path, shards: str, tmp_path: Path):
    if kind == "parquet":  # relative paths and a URL column, captions from the table
        files = sorted(folder.glob("*.png"))
        table = tmp_path / "t.parquet"
        pd.DataFrame({"path": [str(f.relative_to(folder.parent)) for f in files],
                      "caption": [f.stem.replace("_", " ") for f in files]}).to_parquet(table)
        shutil.copytree(folder, tmp_path / folder.name)
        source = {"parquet": str(table)}
    else:
        source = {kind: str(folder) if kind == "images" else shards}
    one = embed(tmp_path / "one", 0, 1, part_size=5, **source)
    r0 = embed(tmp_path / "two", 0, 2, part_size=3, **source)
    r1 = embed(tmp_path / "two", 1, 2, part_size=3, **source)
    assert one["parts_written"] == one["parts"] and r0["parts"] + r1["parts"] >= one["parts"]
    assert_same_parts(tmp_path / "one", tmp_path / "two")
    m = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert m["complete"] and m["world_size"] == 2 and m["dtype"] == "float16" and m["dim"] == ToyEncoder.dim
    assert m["counts"]["images"] == r0["images"] + r1["images"] == (19 if kind == "shards" else 18)
    if kind == "images":
        assert m["counts"]["skipped_unreadable_image"] == 1 and m["counts"]["captions"] == 17
    if kind == "shards":
        assert m["counts"] == {"images": 19, "captions": 19, "skipped_corrupt_image": 1}
        assert sorted(m["parts"]) == ["part-00000-00000", "part-00000-00001", "part-00001-00000", "part-00001-00001"]
    assert np.load(tmp_path / "two" / "img_emb" / "part-00000-00000.npy").dtype == np.float16


@pytest.mark.parametrize("kind", ["images", "shards"])
def test_decoding_workers_do_not_change_the_parts(kind: str, folder: Path, shards: str, tmp_path: Path):
    source = {kind: str(folder) if kind == "images" else shards}
    embed(tmp_path / "w0", part_size=5, **source)
    embed(tmp_path / "w2", part_size=5, num_workers=2, **source)
    assert_same_parts(tmp_path / "w0", tmp_path / "w2")


def test_killed_run_resumes_without_redoing_finished_parts(folder: Path, tmp_path: Path):
    embed(tmp_path / "whole", part_size=4, images=str(folder))
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):  # batches of 2, parts of 4: dies inside the third part
        embed(out, part_size=4, batch_size=2, images=str(folder), embed=Counting(die_after=5))
    finished = json.loads((out / "progress" / "rank-00000.json").read_text())["parts"]
    assert sorted(finished) == ["part-00000-00000", "part-00000-00001"]
    stamps = {f: f.stat().st_mtime_ns for f in out.glob("*/part-00000-0000[01].*")}
    assert len(stamps) == 6

    again = Counting()
    s = embed(out, part_size=4, batch_size=2, images=str(folder), embed=again)
    assert (s["parts_kept"], s["parts_written"]) == (2, 3)
    assert again.images == 18 - 8  # 19 files, 1 unreadable, 8 images already in finished parts
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps  # finished parts untouched
    assert_same_parts(out, tmp_path / "whole")

    nothing = Counting()
    assert embed(out, part_size=4, images=str(folder), embed=nothing)["parts_written"] == 0 and nothing.batches == 0
    redo = Counting()
    assert embed(out, part_size=4, images=str(folder), embed=redo, resume=False)["parts_written"] == 5
    assert redo.images == 18


def test_sigkilled_process_resumes(shards: str, tmp_path: Path):
    out = tmp_path / "emb"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from test_embed_parts import Counting, embed
        embed({str(out)!r}, 1, 2, shards={shards!r}, batch_size=2, embed=Counting(die_after=4, kill=True))
    """)
    rc = subprocess.run([sys.executable, "-c", script], check=False, timeout=300).returncode
    assert rc == -signal.SIGKILL
    finished = json.loads((out / "progress" / "rank-00001.json").read_text())["parts"]
    assert list(finished) == ["part-00001-00000"]  # shard 1 (6 images, 3 batches) done, shard 3 cut off
    again = Counting()
    s = embed(out, 1, 2, shards=shards, batch_size=2, embed=again)
    assert (s["parts_kept"], s["parts_written"], again.images) == (1, 1, 2)  # shard 3 holds the last 2 images
    embed(out, 0, 2, shards=shards)
    embed(tmp_path / "whole", shards=shards)
    assert_same_parts(out, tmp_path / "whole")


def test_index_from_parts_equals_direct_build(folder: Path, tmp_path: Path):
    direct = build_index(tmp_path / "direct", None, images=str(folder), num_workers=0, encoder=ToyEncoder())
    for r in (1, 0):
        embed(tmp_path / "emb", r, 2, part_size=4, dtype="float32", images=str(folder))
    parts = build_index_from_parts(tmp_path / "emb", tmp_path / "from_parts")
    for k in ("count", "dim", "index_type", "captions_indexed", "caption_count", "stats", "model"):
        assert parts[k] == direct[k], k
    a, b = SearchIndex(tmp_path / "direct"), SearchIndex(tmp_path / "from_parts")
    np.testing.assert_array_equal(np.load(tmp_path / "direct" / "embeddings.npy"),
                                  np.load(tmp_path / "from_parts" / "embeddings.npy"))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "direct" / "metadata.parquet"),
                                  pd.read_parquet(tmp_path / "from_parts" / "metadata.parquet"))
    assert (tmp_path / "direct" / "thumbnails.bin").read_bytes() == (tmp_path / "from_parts" / "thumbnails.bin").read_bytes()
    q = ToyEncoder().encode_texts(["a red circle", "a blue square", "green"]).numpy()
    sa, ia = a.search_vectors(q, 5)
    sb, ib = b.search_vectors(q, 5)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_allclose(sa, sb, atol=1e-6)
    assert a.captions.ntotal == b.captions.ntotal == 17

    embed(tmp_path / "emb16", part_size=4, images=str(folder))  # float16 parts: same ids, vectors to 1e-3
    build_index_from_parts(tmp_path / "emb16", tmp_path / "idx16", IndexParams(index_type="hnsw"))
    c = SearchIndex(tmp_path / "idx16")
    assert c.manifest["index_type"] == "hnsw" and c.count == a.count
    np.testing.assert_allclose(np.load(tmp_path / "idx16" / "embeddings.npy").astype(np.float32),
                               np.load(tmp_path / "direct" / "embeddings.npy").astype(np.float32), atol=1e-3)


def test_mismatched_model_or_missing_parts_refused(folder: Path, tmp_path: Path):
    emb = tmp_path / "emb"
    embed(emb, 0, 2, part_size=4, images=str(folder))
    with pytest.raises(UserError, match=r"parts missing \(first part-00001-00000; ranks 1\)"):
        build_index_from_parts(emb, tmp_path / "idx")
    with pytest.raises(UserError, match="another run .*model toy-colour-shape vs other-toy"):
        embed(emb, 1, 2, part_size=4, images=str(folder), encoder=OtherToy())
    with pytest.raises(UserError, match="another run .*world size 2 vs 3"):
        embed(emb, 1, 3, part_size=4, images=str(folder))
    # rank 1's parts embedded elsewhere with another model, then copied in
    embed(tmp_path / "other", 1, 2, part_size=4, images=str(folder), encoder=OtherToy())
    for f in (tmp_path / "other").glob("*/*-00001*"):
        shutil.copy(f, emb / f.parent.name / f.name)
    with pytest.raises(UserError, match="parts come from different models"):
        build_index_from_parts(emb, tmp_path / "idx")
    assert not (tmp_path / "idx").exists()


# -- the commands, with a real tiny model ---------------------------------------------------------


def test_cli_embed_two_ranks_then_index_build(tiny_data, tmp_path: Path, capsys):
    from eval_helpers import save_tiny_model

    from openalign.cli.main import main

    model = save_tiny_model(tmp_path / "m")
    common = ["--model", str(model), "--shards", tiny_data["shards"], "--out", str(tmp_path / "emb"),
              "--workers", "0", "--batch-size", "16", "--dtype", "float32"]
    for rank in ("0", "1"):
        assert main(["embed", *common, "--rank", rank, "--world-size", "2"]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["parts"] == 2
    assert main(["index", "build", "--embeddings", str(tmp_path / "emb"), "--out", str(tmp_path / "a")]) == 0
    assert main(["index", "build", "--model", str(model), "--shards", tiny_data["shards"], "--workers", "0",
                 "--out", str(tmp_path / "b")]) == 0
    a, b = SearchIndex(tmp_path / "a"), SearchIndex(tmp_path / "b")
    assert a.manifest["model"] == b.manifest["model"] and a.count == b.count == 64
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "metadata.parquet"),
                                  pd.read_parquet(tmp_path / "b" / "metadata.parquet"))
    va, vb = np.load(tmp_path / "a" / "embeddings.npy"), np.load(tmp_path / "b" / "embeddings.npy")
    np.testing.assert_allclose(va.astype(np.float32), vb.astype(np.float32), atol=2e-3)
    sa, _ = a.search_vectors(va[:8].astype(np.float32), 3)  # the shards repeat images: compare scores, not tied ids
    sb, _ = b.search_vectors(va[:8].astype(np.float32), 3)
    np.testing.assert_allclose(sa, sb, atol=2e-3)
    capsys.readouterr()
    assert main(["index", "build", "--embeddings", str(tmp_path / "emb"), "--model", str(model),
                 "--out", str(tmp_path / "c")]) == 2
    assert "--model: not used with --embeddings" in capsys.readouterr().err


def test_bf16_image_precision_is_used_and_close_to_fp32(folder: Path, tmp_path: Path):
    """`openalign embed --image-precision bf16` embeds through the bf16 image tower: vectors close to
    fp32 (cosine >= 0.995 on a random tiny model), not identical, and recorded per part."""
    from eval_helpers import save_tiny_model

    model = save_tiny_model(tmp_path / "model")
    runs = {}
    for prec in ("fp32", "bf16"):
        out = tmp_path / prec
        embed_to_parts(out, model_dir=model, images=str(folder), progress=False, num_workers=0, batch_size=8,
                       options=PartOptions(image_precision=prec))
        runs[prec] = read_parts(out).vectors.astype(np.float32)
        compute = [c["compute"] for p in (out / "progress").glob("*.json")
                   for c in json.loads(p.read_text())["parts"].values()]
        assert compute and all(c.get("image_precision", "fp32") == prec for c in compute), compute
    a, b = runs["fp32"], runs["bf16"]
    assert a.shape == b.shape and not np.array_equal(a, b)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.995, cos.min()
