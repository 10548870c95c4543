"""Near-duplicates of evaluation images removed from shards; report; corrupt/broken skipped."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openalign.corpus.dedup import DedupConfig, dedup_shards
from openalign.errors import UserError

imagehash = pytest.importorskip("imagehash")


def _img(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8))
    return small.resize(size, Image.BICUBIC)


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _write_shard(path: Path, samples: list[tuple[str, bytes, str]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, img, cap in samples:
            for ext, data in (("jpg", img), ("txt", cap.encode()), ("json", json.dumps({"url": f"http://x/{key}"}).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture()
def corpus(tmp_path: Path) -> dict:
    evals = tmp_path / "eval"
    (evals / "sub").mkdir(parents=True)
    for i in range(5):
        _img(100 + i).save(evals / "sub" / f"e{i}.png")
    shards = tmp_path / "raw"
    shards.mkdir()
    s0 = [(f"0{i:03d}", _jpeg(_img(i)), f"unique {i}") for i in range(8)]
    s0 += [("0100", _jpeg(_img(101).resize((150, 125)), 70), "copy of e1"), ("0101", b"not an image", "corrupt")]
    s1 = [(f"1{i:03d}", _jpeg(_img(50 + i)), f"unique {i}") for i in range(5)]
    s1 += [("1100", _jpeg(_img(103).resize((64, 53))), "copy of e3")]
    _write_shard(shards / "00000.tar", s0)
    _write_shard(shards / "00001.tar", s1)
    return {"eval": evals, "shards": shards, "tmp": tmp_path}


def _keys(folder: Path) -> dict[str, set[str]]:
    out = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            out[shard.name] = {m.name.split(".")[0] for m in tar}
    return out


def _reference_dups(corpus: dict, max_hamming: int) -> set[str]:
    """Plain loop: every shard image against every eval image with imagehash's own distance."""
    ev = [imagehash.phash(Image.open(p).convert("RGB")) for p in sorted(corpus["eval"].rglob("*.png"))]
    dups = set()
    for shard in sorted(corpus["shards"].glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                if m.name.endswith(".jpg"):
                    try:
                        h = imagehash.phash(Image.open(tar.extractfile(m)).convert("RGB"))
                    except Exception:
                        continue
                    if min(h - e for e in ev) <= max_hamming:
                        dups.add(m.name.split(".")[0])
    return dups


def test_phash_removes_copies_matches_reference(corpus: dict) -> None:
    out = corpus["tmp"] / "clean"
    report = dedup_shards(corpus["shards"], corpus["eval"], out)
    assert _reference_dups(corpus, 4) == {"0100", "1100"}
    assert {r["key"] for r in report.removed} == {"0100", "1100"}
    assert {r["eval_image"] for r in report.removed} == {"sub/e1.png", "sub/e3.png"}
    kept = _keys(out)
    assert kept["00000.tar"] == {f"0{i:03d}" for i in range(8)} and len(kept["00001.tar"]) == 5
    assert report.skipped["corrupt_image"] == 1 and (report.samples_in, report.samples_out) == (16, 13)
    saved = json.loads((out / "dedup_report.json").read_text())
    assert saved["removed"][0]["url"].startswith("http://x/") and saved["eval_images"] == 5


def test_karpathy_json_and_shard_eval_sources(corpus: dict) -> None:
    kjson = corpus["tmp"] / "karpathy.json"
    kjson.write_text(json.dumps({"images": [{"filepath": "sub", "filename": "e1.png", "split": "test"}]}))
    r1 = dedup_shards(str(corpus["shards"] / "{00000..00001}.tar"), kjson, corpus["tmp"] / "o1",
                      image_root=corpus["eval"])
    assert [r["key"] for r in r1.removed] == ["0100"]
    r2 = dedup_shards(corpus["shards"], str(corpus["shards"] / "00001.tar"), corpus["tmp"] / "o2")
    assert len(r2.removed) == 6  # every image of shard 1 matches itself


def test_broken_shard_counted(corpus: dict) -> None:
    data = (corpus["shards"] / "00000.tar").read_bytes()
    (corpus["shards"] / "00000.tar").write_bytes(data[: len(data) // 2] + b"\x00garbage" * 3)
    report = dedup_shards(corpus["shards"], corpus["eval"], corpus["tmp"] / "o")
    assert report.skipped["broken_shard"] == 1 and report.samples_out >= 5


def test_embedding_method_threshold(corpus: dict, monkeypatch) -> None:
    class FakeBundle:
        dim = 48

        def encode_images(self, images):
            x = torch.tensor(np.stack([np.asarray(im.resize((4, 4)), np.float32).reshape(-1) for im in images]))
            x = x - x.mean(dim=1, keepdim=True)
            return torch.nn.functional.normalize(x, dim=-1)

    import openalign.corpus.dedup as dedup_mod

    monkeypatch.setattr(dedup_mod, "load_bundle", lambda path, **kw: FakeBundle())
    report = dedup_shards(corpus["shards"], corpus["eval"], corpus["tmp"] / "o",
                          DedupConfig(method="embedding", model_dir="fake"))
    assert {r["key"] for r in report.removed} == {"0100", "1100"}
    assert all(r["score"] > 0.975 for r in report.removed)
    with pytest.raises(UserError, match="--model"):
        dedup_shards(corpus["shards"], corpus["eval"], corpus["tmp"] / "o", DedupConfig(method="embedding"))


def test_bad_inputs(corpus: dict) -> None:
    bad = corpus["tmp"] / "bad.json"
    bad.write_text('{"annotations": []}')
    with pytest.raises(UserError, match="bad.json.*'images'"):
        dedup_shards(corpus["shards"], bad, corpus["tmp"] / "o")
    with pytest.raises(UserError, match="nothere"):
        dedup_shards(corpus["tmp"] / "nothere" / "0.tar", corpus["eval"], corpus["tmp"] / "o")
