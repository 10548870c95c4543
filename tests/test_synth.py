"""Synthetic corpus: readable shards, determinism, noise rate, held-out combos, Karpathy JSON, CLI."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from openalign.corpus import synth
from openalign.media.shards import expand_urls, iter_samples
from openalign.train.data import ShardStream

N, NOISE = 300, 0.3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> synth.CorpusInfo:
    out = tmp_path_factory.mktemp("synth")
    return synth.generate_corpus(out, num_train=N, num_heldout=20, noise_rate=NOISE, seed=3, image_size=48,
                                 shard_size=100)


def _metas(info: synth.CorpusInfo) -> list[dict]:
    return [json.loads(s["json"]) for s in iter_samples(expand_urls(info.shards), Counter())]


def test_shards_readable_by_webdataset(corpus):
    import webdataset as wds

    urls = expand_urls(corpus.shards)
    assert len(urls) == 3 and all(Path(u).is_file() for u in urls)
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(samples) == N
    s = samples[0]
    assert s["jpg"].size == (48, 48) and s["txt"].strip()
    assert {"attributes", "noisy", "noise", "caption"} <= set(s["json"])


def test_shards_readable_by_shard_stream(corpus):
    def transform(img, rng):
        return torch.from_numpy(__import__("numpy").asarray(img.convert("RGB"), dtype="float32")).permute(2, 0, 1)

    stream = ShardStream(expand_urls(corpus.shards), batch_size=20, transform=transform, epochs=1, shuffle_buffer=0)
    batches = list(stream)
    assert len(batches) == N // 20
    assert batches[0]["pixel_values"].shape == (20, 3, 48, 48)
    assert all(t for b in batches for t in b["texts"])
    assert sum(b["state"]["counts"].get("corrupt_image", 0) for b in batches) == 0


def test_noise_rate_and_kinds(corpus):
    metas = _metas(corpus)
    noisy = [m for m in metas if m["noisy"]]
    assert len(noisy) == round(NOISE * N)  # exact by construction, honoured well within tolerance
    kinds = Counter(m["noise"] for m in noisy)
    assert kinds == Counter({k: v for k, v in corpus.noise_counts.items() if k != "clean"})
    assert set(kinds) == set(synth.NOISE_KINDS) and min(kinds.values()) >= len(noisy) // 3
    for m in metas:
        if m["noise"] == "none":
            assert m["caption"] == m["clean_caption"]
        elif m["noise"] == "wrong_attr":
            diff = [k for k in m["attributes"] if m["attributes"][k] != m["caption_attributes"][k]]
            assert diff == [m["wrong_attribute"]]
        elif m["noise"] == "swap":
            a, b = m["attributes"], m["caption_attributes"]
            assert (a["colour"], a["shape"]) != (b["colour"], b["shape"])
            assert m["caption"] == metas[m["swapped_with"]]["clean_caption"]  # literally the other's caption


def test_noise_plan_close_to_rate_for_any_size():
    for n, rate in [(1000, 0.2), (7, 0.5), (10, 0.0), (10, 1.0)]:
        plan = synth.noise_plan(n, rate, seed=1)
        assert abs(sum(p != "none" for p in plan) - rate * n) <= 0.5


def test_heldout_combos_never_in_training(corpus):
    held = set(synth.heldout_combos(0.15))
    assert len(held) == round(0.15 * 64)
    # every colour and shape still occurs in training, with other partners
    train = set(synth.train_combos(0.15))
    assert {c for c, _ in train} == set(synth.COLOURS) and {s for _, s in train} == set(synth.SHAPES)
    for m in _metas(corpus):
        for attrs in (m["attributes"], m.get("caption_attributes")):
            if attrs:
                assert (attrs["colour"], attrs["shape"]) not in held
    data = json.loads(corpus.heldout_json.read_text())
    assert all((im["attributes"]["colour"], im["attributes"]["shape"]) in held for im in data["images"])


def test_karpathy_json(corpus):
    data = json.loads(corpus.heldout_json.read_text())
    assert data["dataset"] == "synth" and len(data["images"]) == corpus.num_heldout == 20
    for i, im in enumerate(data["images"]):
        assert im["imgid"] == i and im["split"] == "test" and im["filepath"] == ""
        assert (corpus.heldout_image_root / im["filepath"] / im["filename"]).is_file()
        raws = [s["raw"] for s in im["sentences"]]
        assert len(raws) == 5 and len({r.lower() for r in raws}) == 5
        colour_words = synth.COLOUR_WORDS.get(im["attributes"]["colour"], [im["attributes"]["colour"]])
        assert all(any(w in r.lower() for w in colour_words) for r in raws)


def test_deterministic_by_seed_and_independent_of_workers(tmp_path):
    kw = dict(num_train=24, num_heldout=3, image_size=32, shard_size=8)
    a = synth.generate_corpus(tmp_path / "a", seed=5, **kw)
    b = synth.generate_corpus(tmp_path / "b", seed=5, workers=2, **kw)
    c = synth.generate_corpus(tmp_path / "c", seed=6, **kw)
    for ua, ub in zip(expand_urls(a.shards), expand_urls(b.shards)):
        assert Path(ua).read_bytes() == Path(ub).read_bytes()
    assert a.heldout_json.read_text() == b.heldout_json.read_text()
    assert Path(expand_urls(a.shards)[0]).read_bytes() != Path(expand_urls(c.shards)[0]).read_bytes()


def test_captions_name_colour_and_shape():
    rng = random.Random(0)
    for _ in range(200):
        attrs = synth.sample_attrs(rng, synth.train_combos())
        cap = synth.make_caption(attrs, rng).lower()
        assert any(w in cap for w in synth.COLOUR_WORDS.get(attrs["colour"], [attrs["colour"]]))
        assert any(s in cap for s, _ in synth.SHAPE_WORDS[attrs["shape"]])


def test_classification_split(tmp_path):
    root = synth.write_classification_split(tmp_path / "shapes", attribute="shape", n_per_class=2, seed=0,
                                            image_size=32)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert folders == sorted(synth.SHAPES)
    assert all(len(list((root / f).glob("*.jpg"))) == 2 for f in folders)
    assert json.loads((root / "classnames.json").read_text())["synth_shape"] == folders
    assert "{c}" in json.loads((root / "templates.json").read_text())["synth_shape"][0]
    with pytest.raises(ValueError):
        synth.write_classification_split(tmp_path / "x", attribute="texture")


def _cli(monkeypatch, argv: list[str]) -> int:
    from openalign.cli import main as cli_main

    # only the commands under test: other entry points need not import for this smoke test
    monkeypatch.setattr(cli_main, "COMMANDS", {"data": ["openalign.cli.data_synth"]})
    return cli_main.main(argv)


def test_cli_synth(tmp_path, monkeypatch, capsys):
    out = tmp_path / "c"
    rc = _cli(monkeypatch, ["data", "synth", "--out", str(out), "--num-train", "30", "--num-heldout", "4",
                            "--shard-size", "10", "--image-size", "32", "--noise-rate", "0.2"])
    assert rc == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["num_train"] == 30 and stats["noise_counts"]["clean"] == 24 and stats["num_shards"] == 3
    assert "heldout" in capsys.readouterr().out


def test_cli_synth_bad_input(tmp_path, monkeypatch, capsys):
    rc = _cli(monkeypatch, ["data", "synth", "--out", str(tmp_path), "--noise-rate", "1.5"])
    assert rc == 2 and "--noise-rate" in capsys.readouterr().err


def _object_pixels(img) -> int:
    """Pixels of the object colour (red objects on a plain grey background)."""
    import numpy as np

    a = np.asarray(img).astype(int)
    return int(((a[..., 0] > 150) & (a[..., 1] < 90) & (a[..., 2] < 90)).sum())


@pytest.mark.parametrize("count", ["one", "three"])
def test_object_scale_draws_larger_objects_that_still_fit(count):
    attrs = {"colour": "red", "shape": "square", "size": "small", "position": "centre", "count": count,
             "background": "grey"}
    base = _object_pixels(synth.render(attrs, 80, random.Random(0)))
    same = _object_pixels(synth.render(attrs, 80, random.Random(0), object_scale=1.0))
    big = _object_pixels(synth.render(attrs, 80, random.Random(0), object_scale=1.5))
    assert same == base  # the default world is unchanged
    assert 1.8 < big / base < 2.7  # area ~ 1.5^2
    # large objects are capped so that `count` of them fit side by side: 0.9 / n of the side each
    large = {**attrs, "size": "large"}
    huge = _object_pixels(synth.render(large, 80, random.Random(0), object_scale=3.0))
    n = synth.COUNTS.index(count) + 1
    side = 0.9 / n * 80 * 0.85  # a square's side is 0.85 / sqrt(2) of its diameter... bounded above by this
    assert huge <= n * side * side


def test_object_scale_reaches_heldout_and_stats(tmp_path):
    info = synth.generate_corpus(tmp_path / "c", num_train=10, num_heldout=4, noise_rate=0.0, seed=1,
                                 image_size=48, object_scale=1.5)
    other = synth.generate_corpus(tmp_path / "d", num_train=10, num_heldout=4, noise_rate=0.0, seed=1,
                                  image_size=48)
    assert json.loads((info.root / "stats.json").read_text())["object_scale"] == 1.5
    a = (info.heldout_image_root / "00000.jpg").read_bytes()
    b = (other.heldout_image_root / "00000.jpg").read_bytes()
    assert a != b  # same attributes and seed, larger objects


def test_fix_holds_scene_attributes_everywhere_and_keeps_the_rest(tmp_path):
    fix = "count=one,background=grey"
    info = synth.generate_corpus(tmp_path / "c", num_train=40, num_heldout=12, noise_rate=0.25, seed=2,
                                 image_size=32, shard_size=20, fix=fix)
    plain = synth.generate_corpus(tmp_path / "d", num_train=40, num_heldout=12, noise_rate=0.25, seed=2,
                                  image_size=32, shard_size=20)

    fixed, free = _metas(info), _metas(plain)
    assert all(m["attributes"]["count"] == "one" and m["attributes"]["background"] == "grey" for m in fixed)
    assert {m["attributes"]["count"] for m in free} != {"one"}  # the unfixed world does vary them
    # the other attributes are drawn as in the unfixed world, sample by sample
    for a, b in zip(fixed, free):
        for k in ("colour", "shape", "size", "position"):
            assert a["attributes"][k] == b["attributes"][k]
    held = json.loads(info.heldout_json.read_text())["images"]
    assert all(e["attributes"]["count"] == "one" and e["attributes"]["background"] == "grey" for e in held)
    assert json.loads((info.root / "stats.json").read_text())["fixed"] == {"background": "grey", "count": "one"}
    # a classification split of a fixed attribute still varies it (else it would have one class)
    root = synth.write_classification_split(tmp_path / "cls", "count", n_per_class=2, image_size=32, fix=fix)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(synth.COUNTS)


@pytest.mark.parametrize("bad", ["colour=red", "count=four", "size", "weather=rain"])
def test_fix_names_what_can_be_fixed(bad):
    with pytest.raises(ValueError, match="fix"):
        synth.parse_fixed(bad)


def test_fix_cli_error_is_one_line(tmp_path, capsys):
    from openalign.cli.main import main
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--num-train", "4", "--fix", "count=four"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "count is one of one, two, three" in err[0]


@pytest.mark.parametrize("cmd", [["data", "synth", "--num-train", "4"], ["demo"]])
@pytest.mark.parametrize("flags, says", [(["--fix", "weather=rain"], "--fix 'weather=rain'"),
                                         (["--colour-mention", "1.5"], "--colour-mention 1.5: must be between 0 and 1")])
def test_scene_flags_fail_the_same_one_line_way_on_both_commands(tmp_path, capsys, cmd, flags, says):
    from openalign.cli.main import main
    assert main([*cmd, "--out", str(tmp_path / "x"), *flags]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]
    assert not (tmp_path / "x").exists()  # refused before any work
    assert synth.scene_flag_error("count=one", 0.5) is None


def test_colour_mention_leaves_the_colour_out_of_that_share_of_training_captions(tmp_path):
    info = synth.generate_corpus(tmp_path / "c", num_train=400, num_heldout=6, noise_rate=0.0, seed=3,
                                 image_size=16, shard_size=200, colour_mention=0.5)
    words = {w for c in synth.COLOURS for w in synth.COLOUR_WORDS.get(c, [c])}
    shape_words = {w for forms in synth.SHAPE_WORDS.values() for pair in forms for w in pair}
    metas = _metas(info)

    def names(text, vocab):
        low = f" {text.lower()} "
        return any(f" {w} " in low or f" {w}," in low for w in vocab)

    with_colour = sum(names(m["caption"], words) for m in metas)
    assert 0.4 * len(metas) < with_colour < 0.6 * len(metas), with_colour
    assert all(names(m["caption"], shape_words) for m in metas)  # the shape is always named
    assert not any(" in " == m["caption"][-4:] for m in metas)
    held = json.loads(info.heldout_json.read_text())["images"]
    assert all(names(s["raw"], words) for e in held for s in e["sentences"])  # held-out captions always do
    assert json.loads((info.root / "stats.json").read_text())["colour_mention"] == 0.5
    with pytest.raises(ValueError, match="colour_mention"):
        synth.generate_corpus(tmp_path / "d", num_train=2, num_heldout=0, colour_mention=1.5)
