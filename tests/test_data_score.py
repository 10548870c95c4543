"""``openalign data score``: image-text cosine per pair, resumable, filtered over the whole corpus."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import COLOURS, SHAPES, draw
from PIL import Image

from openalign.cli.main import main
from openalign.corpus.score import (
    MANIFEST,
    PARTS_DIR,
    STATS_FILE,
    TABLE_FILE,
    ScoreConfig,
    score_shards,
    select,
)
from openalign.errors import UserError
from openalign.models.embed import embed_batches

PER_SHARD, N = 5, 14  # 3 shards: 5 + 5 + 4 samples
BAD = {3: "corrupt_image", 7: "empty_caption"}  # sample index -> why it cannot be scored


def _write_shards(folder: Path) -> dict[str, tuple[bytes, str]]:
    """Shards of coloured shapes with KEY.json (url); returns key -> (jpeg bytes, caption) of every sample."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = {}
    for n in range(N):
        c, s = list(COLOURS)[n % 4], SHAPES[(n // 4) % 2]
        buf = io.BytesIO()
        draw(c, s, size=40 + 4 * n).save(buf, format="JPEG")
        jpg, caption = buf.getvalue(), f"a {c} {s}"
        if BAD.get(n) == "corrupt_image":
            jpg = b"not a jpeg"
        if BAD.get(n) == "empty_caption":
            caption = "  "
        key = f"{n:09d}"
        samples[key] = (jpg, caption)
        members = [("jpg", jpg), ("txt", caption.encode()), ("json", json.dumps({"url": f"http://x/{n}.jpg"}).encode())]
        with tarfile.open(folder / f"{n // PER_SHARD:05d}.tar", "a") as tar:
            for ext, data in members:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return samples


def _tar_meta(folder: Path) -> dict[str, dict]:
    """key -> KEY.json of every sample in the folder's shards."""
    out = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                if m.name.endswith(".json"):
                    out[m.name.split(".")[0]] = json.loads(tar.extractfile(m).read())
    return out


def _parts(out: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(f) for f in sorted((out / PARTS_DIR).glob("*.parquet"))], ignore_index=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Two tiny dual encoders (different seeds) sharing a tokenizer, saved as model directories."""
    from openalign.models.dual_encoder import DualEncoder
    from openalign.models.tokenizer import train_wordpiece

    tmp = tmp_path_factory.mktemp("score_models")
    texts = [f"a {c} {s}" for c in COLOURS for s in SHAPES] * 5
    tok = train_wordpiece(texts, tmp / "tok", vocab_size=80, min_frequency=1)
    for name, seed in (("a", 0), ("b", 1)):
        DualEncoder.from_preset("tiny", vocab_size=len(tok), seed=seed).save_pretrained(tmp / name, tokenizer=tok)
    return {"a": tmp / "a", "b": tmp / "b"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, tuple[bytes, str]]]:
    folder = tmp_path_factory.mktemp("score_shards")
    return folder, _write_shards(folder)


@pytest.fixture(scope="module")
def reference(models, corpus) -> dict[str, float]:
    """key -> cosine of plain transformers AlignModel features, for every scorable sample."""
    from transformers import AlignModel, AlignProcessor

    model = AlignModel.from_pretrained(str(models["a"])).eval()
    processor = AlignProcessor.from_pretrained(str(models["a"]))
    good = {k: v for k, v in corpus[1].items() if int(k) not in BAD}
    images = [Image.open(io.BytesIO(jpg)).convert("RGB") for jpg, _ in good.values()]
    with torch.no_grad():
        pix = processor(images=images, return_tensors="pt")["pixel_values"]
        img = F.normalize(model.get_image_features(pixel_values=pix).pooler_output, dim=-1)
        enc = processor(text=[c for _, c in good.values()], padding=True, return_tensors="pt")
        txt = F.normalize(model.get_text_features(**enc).pooler_output, dim=-1)
    return dict(zip(good, (img * txt).sum(-1).tolist()))


@pytest.fixture(scope="module")
def bundle(models):
    """Model a, loaded once: the library calls take it ready (the CLI tests load it themselves)."""
    from openalign.models.bundle import load_bundle

    return load_bundle(models["a"])


def _cfg(models, **kw) -> ScoreConfig:
    return ScoreConfig(**{"model_dir": str(models["a"]), "num_workers": 0, "batch_size": 4, **kw})


def _score(bundle, models, shards: Path, out: Path, hooks: dict | None = None, **kw) -> dict:
    """score_shards with model a (loaded once), no bars; ``kw`` are ScoreConfig fields."""
    return score_shards(str(shards), out, _cfg(models, **kw), bundle=bundle, progress=False, **(hooks or {}))


def test_scores_equal_plain_transformers_cosine(models, bundle, corpus, reference, tmp_path: Path) -> None:
    folder, samples = corpus
    # shards out, decoded by 2 DataLoader workers (shards interleave in the stream)
    stats = _score(bundle, models, folder, tmp_path / "s", num_workers=2)
    meta = _tar_meta(tmp_path / "s")
    assert set(meta) == set(reference) and stats["scored"] == len(reference) == stats["kept"]
    for k, ref in reference.items():
        assert meta[k]["similarity"] == pytest.approx(ref, abs=1e-4)
        assert meta[k]["url"] == f"http://x/{int(k)}.jpg"  # the rest of KEY.json is kept
    # the other members are unchanged
    with tarfile.open(tmp_path / "s" / "00000.tar") as tar:
        assert tar.extractfile("000000000.jpg").read() == samples["000000000"][0]
    # parquet out: same scores, the documented columns
    _score(bundle, models, folder, tmp_path / "p", format="parquet")
    table = pd.read_parquet(tmp_path / "p" / TABLE_FILE)
    assert list(table.columns) == ["key", "shard", "url", "caption", "similarity"]
    got = dict(zip(table["key"], table["similarity"]))
    assert got.keys() == reference.keys()
    assert max(abs(got[k] - reference[k]) for k in reference) < 1e-4
    assert table.set_index("key").loc["000000006", "shard"] == "00001.tar"
    # batches never mix shards: 0 or 2 decode workers give the very same floats
    assert all(got[k] == meta[k]["similarity"] for k in reference)


def test_corrupt_image_and_empty_caption_skipped_and_counted(models, bundle, corpus, tmp_path: Path) -> None:
    folder, _ = corpus
    broken = tmp_path / "in"
    broken.mkdir()
    for f in folder.glob("*.tar"):
        (broken / f.name).write_bytes(f.read_bytes())
    with tarfile.open(broken / "00002.tar") as tar:
        second = tar.getmembers()[3].offset  # where the shard's second sample starts
    data = (broken / "00002.tar").read_bytes()
    (broken / "00002.tar").write_bytes(data[:second] + b"\x01" * 700)  # damaged after its first sample
    stats = _score(bundle, models, broken, tmp_path / "o")
    assert stats["skipped"]["corrupt_image"] == 1 and stats["skipped"]["empty_caption"] == 1
    assert stats["skipped"]["broken_shard"] >= 1
    assert stats["scored"] == 10 - 2 + 1  # two full shards less the two bad samples, one sample before the damage
    saved = json.loads((tmp_path / "o" / STATS_FILE).read_text())
    assert saved["skipped"] == stats["skipped"] and saved["scored"] == stats["scored"]
    meta = _tar_meta(tmp_path / "o")
    assert "000000003" not in meta and "000000007" not in meta and "000000010" in meta
    parts = _parts(tmp_path / "o").set_index("key")
    assert parts.loc["000000003", "skipped"] == "corrupt_image" and np.isnan(parts.loc["000000003", "similarity"])


def test_keep_fraction_keeps_exactly_the_top_fraction(models, bundle, corpus, reference, tmp_path: Path) -> None:
    folder, _ = corpus
    stats = _score(bundle, models, folder, tmp_path / "o", keep_fraction=0.5)
    parts = _parts(tmp_path / "o").dropna(subset=["similarity"])
    k = 6  # round(0.5 * 12 scored)
    top = parts.sort_values("similarity", ascending=False, kind="stable")["key"].head(k).tolist()
    assert set(_tar_meta(tmp_path / "o")) == set(top)
    assert stats["kept"] == k and stats["removed"] == 12 - k
    assert stats["threshold"] == pytest.approx(sorted(reference.values(), reverse=True)[k - 1], abs=1e-4)
    # pass 2 again with another filter: the scores are reused, the shards rewritten for it
    cut = float(np.median(parts["similarity"]))
    stats = _score(bundle, models, folder, tmp_path / "o", min_score=cut)
    assert stats["shards_scored_now"] == 0 and stats["threshold"] == cut
    assert set(_tar_meta(tmp_path / "o")) == set(parts["key"][parts["similarity"] >= cut])


def test_select_ties_min_score_and_nothing_scored() -> None:
    nan = float("nan")
    sel = select({"a": np.array([0.5, nan, 0.5]), "b": np.array([0.5, 0.1])}, None, 0.5)
    assert sel.kept == 2 and sel.scored == 4 and sel.threshold == 0.5  # ties: the earlier pairs stay
    assert sel.masks["a"].tolist() == [True, False, True] and sel.masks["b"].tolist() == [False, False]
    sel = select({"a": np.array([0.9, 0.2, 0.4, 0.8])}, 0.5, 0.75)  # top 3 = 0.9, 0.8, 0.4; >= 0.5 of those
    assert sel.masks["a"].tolist() == [True, False, False, True] and sel.threshold == 0.5
    sel = select({"a": np.array([nan])}, None, 0.5)
    assert sel.kept == 0 and sel.threshold is None


def test_resume_after_kill_redoes_only_unfinished_shards(models, bundle, corpus, tmp_path: Path) -> None:
    folder, _ = corpus
    full = _score(bundle, models, folder, tmp_path / "full", keep_fraction=0.5)

    def kill(name: str) -> None:
        raise KeyboardInterrupt  # right after the first shard's part is committed

    with pytest.raises(KeyboardInterrupt):
        _score(bundle, models, folder, tmp_path / "r", keep_fraction=0.5, hooks={"on_part": kill})
    assert [f.name for f in (tmp_path / "r" / PARTS_DIR).glob("*.parquet")] == ["00000.parquet"]
    assert not (tmp_path / "r" / STATS_FILE).exists()

    seen: list[str] = []

    def spy(bundle, dataset, *args, **kwargs):
        seen.extend(dataset.names)
        return embed_batches(bundle, dataset, *args, **kwargs)

    again = _score(bundle, models, folder, tmp_path / "r", keep_fraction=0.5, hooks={"embed": spy})
    assert seen == ["00001.tar", "00002.tar"] and (again["shards_scored_now"], again["shards_reused"]) == (2, 1)
    drop = ("output", "shards_scored_now", "shards_reused")
    assert {k: v for k, v in again.items() if k not in drop} == {k: v for k, v in full.items() if k not in drop}
    for name in ("00000.tar", "00001.tar", "00002.tar"):
        assert (tmp_path / "r" / name).read_bytes() == (tmp_path / "full" / name).read_bytes()
    pd.testing.assert_frame_equal(_parts(tmp_path / "r"), _parts(tmp_path / "full"))
    seen.clear()  # a third run: nothing left to score
    third = _score(bundle, models, folder, tmp_path / "r", keep_fraction=0.5, hooks={"embed": spy})
    assert third["shards_scored_now"] == 0 and seen == []


def test_rerun_with_another_model_is_refused(models, bundle, corpus, tmp_path: Path, capsys) -> None:
    folder, _ = corpus
    _score(bundle, models, folder, tmp_path / "o")
    other = ScoreConfig(model_dir=str(models["b"]), num_workers=0)
    with pytest.raises(UserError, match="scored with another model"):
        score_shards(str(folder), tmp_path / "o", other, progress=False)
    rc = main(["data", "score", str(folder), "--out", str(tmp_path / "o"), "--model", str(models["b"]),
               "--workers", "0"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("openalign: error:")]
    assert rc == 2 and len(errors) == 1 and "new --out folder" in errors[0]
    assert json.loads((tmp_path / "o" / MANIFEST).read_text())["model"]["dir"] == str(models["a"].resolve())


def test_cli_scores_filters_and_reports(models, corpus, tmp_path: Path, capsys) -> None:
    folder, _ = corpus
    rc = main(["data", "score", f"{folder}/{{00000..00002}}.tar", "--out", str(tmp_path / "o"), "--model",
               str(models["a"]), "--workers", "0", "--keep-fraction", "0.25", "--format", "parquet"])
    out = capsys.readouterr().out
    assert rc == 0 and "12 pairs scored" in out and "3 kept" in out
    assert len(pd.read_parquet(tmp_path / "o" / TABLE_FILE)) == 3


@pytest.mark.parametrize("flags, message", [
    (["--keep-fraction", "0"], "--keep-fraction 0.0: must be in (0, 1]"),
    (["--min-score", "2"], "--min-score 2.0: a cosine is in [-1, 1]"),
])
def test_bad_filter_values_are_one_line_errors(models, corpus, tmp_path: Path, capsys, flags, message) -> None:
    rc = main(["data", "score", str(corpus[0]), "--out", str(tmp_path / "o"), "--model", str(models["a"]), *flags])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("openalign: error:")]
    assert rc == 2 and len(errors) == 1 and message in errors[0]


def test_out_folder_of_the_inputs_is_refused(models, bundle, corpus) -> None:
    with pytest.raises(UserError, match="would be overwritten"):
        _score(bundle, models, corpus[0], corpus[0])
