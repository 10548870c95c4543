"""Long-tail synthetic world: Zipf frequencies, growing concept counts, distinct glyphs, splits, CLI."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from openalign.corpus import synth
from openalign.corpus import synth_longtail as lt
from openalign.media.karpathy import read_karpathy
from openalign.media.labeled import read_labeled
from openalign.media.shards import expand_urls, iter_samples

N, NOISE, CONCEPTS = 240, 0.3, 60


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> synth.CorpusInfo:
    out = tmp_path_factory.mktemp("longtail")
    return synth.generate_corpus(out, num_train=N, num_heldout=12, noise_rate=NOISE, seed=3, image_size=40,
                                 shard_size=80, world="long-tail", num_concepts=CONCEPTS)


def _metas(info: synth.CorpusInfo) -> list[dict]:
    return [json.loads(s["json"]) for s in iter_samples(expand_urls(info.shards), Counter())]


def _slope(counts: Counter, ranks: range) -> float:
    """Least-squares slope of log(count) against log(rank): the plain rank-frequency fit."""
    x = [math.log(r) for r in ranks]
    y = [math.log(counts[r]) for r in ranks]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)


@pytest.mark.parametrize("s", [0.8, 1.1, 1.5])
def test_concept_frequencies_follow_zipf(s):
    rng = random.Random(0)
    counts = Counter(o["rank"] for _ in range(4000) for o in lt.sample_attrs(rng, 300, s)["objects"])
    # the head ranks hold enough samples for a stable fit; every one of them was drawn
    assert _slope(counts, range(1, 21)) == pytest.approx(-s, abs=0.15)
    probs = lt.zipf_probs(300, s)
    assert sum(probs) == pytest.approx(1.0) and probs[0] / probs[1] == pytest.approx(2 ** s)


def test_distinct_concepts_keep_growing_with_pairs():
    attrs = [lt.train_attrs(0, i, 300, 1.1) for i in range(2000)]
    curve = {c["pairs"]: c for c in lt.concept_curve(attrs)}
    for n in (20, 200, 2000):  # against a plain count over the first n images
        assert curve[n]["objects"] == len({o["concept"] for a in attrs[:n] for o in a["objects"]})
    assert curve[20]["objects"] < curve[200]["objects"] < curve[2000]["objects"] < 300
    assert curve[200]["object_colour"] < curve[2000]["object_colour"]


def test_strata_split_probability_mass():
    bands, probs = lt.strata(300, 1.1), lt.zipf_probs(300, 1.1)
    assert bands == sorted(bands, key=lt.STRATA.index)  # head ranks first, then torso, then tail
    head = sum(p for p, b in zip(probs, bands) if b == "head")
    assert 0.5 <= head < 0.5 + probs[0] and set(bands) == set(lt.STRATA)
    for n in (3, 5, 40):
        for s in (0.0, 0.5, 3.0, 10.0):  # flat or steep laws and tiny catalogues still have three strata
            assert set(lt.strata(n, s)) == set(lt.STRATA), (n, s)


def test_distinct_concepts_render_to_different_images():
    concepts = lt.catalogue(lt.MAX_CONCEPTS)
    assert len({c.name for c in concepts}) == len({(c.outline, c.aspect, c.mark) for c in concepts}) == 384
    flat = []
    for c in concepts:
        attrs = {"objects": [{"concept": c.name, "rank": c.rank, "colour": "red", "size": "large"}],
                 "relation": None, "background": "grey"}
        flat.append(np.asarray(lt.render(attrs, 48, random.Random(0)), dtype=np.float64).ravel() / 255)
    x = np.stack(flat)
    sq = (x ** 2).sum(1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * x @ x.T, 0) / x.shape[1])  # pairwise RMS
    np.fill_diagonal(dist, np.inf)
    assert dist.min() > 0.02  # the closest pair (a hole or not) still differs visibly


def test_deterministic_by_seed_and_independent_of_workers(tmp_path):
    kw = {"num_train": 24, "num_heldout": 3, "image_size": 32, "shard_size": 8, "world": "long-tail",
          "num_concepts": 20}
    a = synth.generate_corpus(tmp_path / "a", seed=5, **kw)
    b = synth.generate_corpus(tmp_path / "b", seed=5, workers=2, **kw)
    c = synth.generate_corpus(tmp_path / "c", seed=6, **kw)
    for ua, ub in zip(expand_urls(a.shards), expand_urls(b.shards)):
        assert Path(ua).read_bytes() == Path(ub).read_bytes()
    assert a.heldout_json.read_text() == b.heldout_json.read_text()
    assert (tmp_path / "a/stats.json").read_text().replace("/a/", "/b/") == (tmp_path / "b/stats.json").read_text()
    assert Path(expand_urls(a.shards)[0]).read_bytes() != Path(expand_urls(c.shards)[0]).read_bytes()


def test_noise_and_clean_captions(corpus):
    metas = _metas(corpus)
    assert len(metas) == N and sum(m["noisy"] for m in metas) == round(NOISE * N)
    for m in metas:
        cap = m["caption"].lower()
        if m["noise"] == "none":  # a clean caption names every object's concept and colour
            assert all(o["concept"] in cap and o["colour"] in cap for o in m["attributes"]["objects"])
        elif m["noise"] == "wrong_attr":
            assert m["caption_attributes"] != m["attributes"]
        elif m["noise"] == "swap":
            assert m["caption_attributes"]["objects"][0]["concept"] != m["attributes"]["objects"][0]["concept"]


def test_stats_record_frequencies_and_curve(corpus):
    stats = json.loads((corpus.root / "stats.json").read_text())
    metas = _metas(corpus)
    freq = Counter(c for m in metas for c in {o["concept"] for o in m["attributes"]["objects"]})
    assert {c["name"]: c["train_images"] for c in stats["concepts"] if c["train_images"]} == dict(freq)
    assert stats["world"] == "long-tail" and len(stats["concepts"]) == CONCEPTS
    last = stats["distinct_vs_pairs"][-1]
    assert last["pairs"] == N and last["objects"] == len(freq)


def test_heldout_splits_load_and_are_stratified(corpus):
    full = read_karpathy(corpus.heldout_json, corpus.heldout_image_root)
    assert len(full.image_paths) == 12 and len(full.texts) == 60
    stats = json.loads((corpus.root / "stats.json").read_text())
    ranks = {b: range(v["ranks"][0], v["ranks"][1] + 1) for b, v in stats["strata"].items()}
    entries = json.loads(corpus.heldout_json.read_text())["images"]
    strata_json = corpus.heldout_json.parent / "karpathy_strata.json"
    for stratum in lt.STRATA:
        part = read_karpathy(strata_json, corpus.heldout_image_root, split=stratum)
        assert len(part.image_paths) == 4  # equal numbers per stratum
        mine = [e for e in entries if e["stratum"] == stratum]
        assert all(o["rank"] in ranks[stratum] for e in mine for o in e["attributes"]["objects"])
    # only the concepts vary, so retrieval cannot succeed on colour, size or relation alone
    looks = {(o["colour"], o["size"], e["attributes"]["relation"]) for e in entries for o in e["attributes"]["objects"]}
    assert looks == {(lt.HELDOUT_LOOK["colour"], lt.HELDOUT_LOOK["size"], lt.HELDOUT_LOOK["relation"])}


def test_zeroshot_split_loads(corpus, tmp_path):
    data = read_labeled(corpus.root / "zeroshot")
    names = [c.name for c in lt.catalogue(CONCEPTS)]
    assert data.classes == sorted(names) and len(data.paths) == 2 * CONCEPTS
    root = synth.write_classification_split(tmp_path / "cls", attribute="colour", n_per_class=1, image_size=32,
                                            world="long-tail")
    colours = read_labeled(root)
    assert colours.classes == sorted(lt.COLOURS)
    assert json.loads((root / "classnames.json").read_text())["synth_longtail_colour"] == colours.classes
    with pytest.raises(ValueError, match="long-tail"):
        synth.write_classification_split(tmp_path / "x", attribute="shape", world="long-tail")


def _cli(monkeypatch, argv: list[str]) -> int:
    from openalign.cli import main as cli_main

    monkeypatch.setattr(cli_main, "COMMANDS", {"data": ["openalign.cli.data_synth"]})
    return cli_main.main(argv)


def test_cli_world_flag(tmp_path, monkeypatch, capsys):
    out = tmp_path / "c"
    rc = _cli(monkeypatch, ["data", "synth", "--out", str(out), "--world", "long-tail", "--num-train", "20",
                            "--num-heldout", "3", "--shard-size", "10", "--image-size", "32", "--zipf-s", "1.3",
                            "--num-concepts", "12"])
    assert rc == 0 and "zeroshot" in capsys.readouterr().out
    stats = json.loads((out / "stats.json").read_text())
    assert stats["zipf_s"] == 1.3 and stats["num_concepts"] == 12 and stats["num_shards"] == 2
    assert _cli(monkeypatch, ["data", "synth", "--out", str(out), "--world", "long-tail", "--num-concepts", "999"]) == 2
    assert "--num-concepts" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _cli(monkeypatch, ["data", "synth", "--out", str(out), "--world", "huge"])
