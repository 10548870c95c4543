"""Icon corpus: Iconify sets read from a folder (loose JSON, npm layout, npm tarball), the licence filter,
rendering, held-out sets, Karpathy and classification splits, noise counts, and no npm with --from."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openalign.corpus import icons
from openalign.errors import UserError
from openalign.media.karpathy import read_karpathy
from openalign.media.labeled import read_labeled
from openalign.media.shards import expand_urls, iter_samples

SIZE, NOISE, VARIANTS = 40, 0.25, 8
HOUSE = '<path fill="currentColor" d="M4 11L12 3l8 8v10H4z"/>'
RING = '<path fill="none" stroke="currentColor" stroke-width="2" d="M12 4a8 8 0 1 0 0 16a8 8 0 1 0 0-16"/>'
STAR = '<path fill="currentColor" d="M12 2l3 7h7l-6 4l2 8l-6-5l-6 5l2-8l-6-4h7z"/>'
ARROW = '<path fill="currentColor" d="M3 10h12V5l7 7l-7 7v-5H3z"/>'
BLOCK = '<rect width="24" height="24" fill="currentColor"/>'  # fills its whole box: a known ink fraction


def _info(name: str, spdx: str, author: str) -> dict:
    return {"name": name, "author": {"name": author}, "license": {"title": spdx, "spdx": spdx}}


def write_sets(root: Path) -> Path:
    """alpha: npm package layout (icons.json + info.json + metadata.json); beta: one self-contained file;
    gamma: a non-commercial licence (must be skipped); delta: an ``npm pack`` tarball."""
    alpha = root / "alpha"
    alpha.mkdir(parents=True)
    (alpha / "icons.json").write_text(json.dumps({
        "prefix": "alpha", "width": 24, "height": 24,
        "icons": {"home": {"body": HOUSE}, "home-outline": {"body": RING + HOUSE}, "star": {"body": STAR},
                  "arrow-right": {"body": ARROW}, "block": {"body": BLOCK}, "old-thing": {"body": STAR, "hidden": True},
                  "bell": {"body": RING}},
        "aliases": {"house": {"parent": "home"}, "arrow-left": {"parent": "arrow-right", "hFlip": True}}}))
    (alpha / "info.json").write_text(json.dumps(_info("Alpha Icons", "MIT", "Ann")))
    (alpha / "metadata.json").write_text(json.dumps({"categories": {"Buildings": ["home", "home-outline"]}}))
    (root / "beta.json").write_text(json.dumps({
        "prefix": "beta", "info": _info("Beta Set", "Apache-2.0", "Bob"), "width": 16, "height": 16,
        "icons": {n: {"body": b.replace("24", "16")} for n, b in [
            ("home-filled", HOUSE), ("star-bold", STAR), ("ring", RING), ("bell-2", RING), ("block", BLOCK),
            ("arrow", ARROW)]},
        "categories": {"Buildings": ["home-filled"], "Shapes": ["star-bold", "ring", "block"], "Alerts": ["bell-2"]}}))
    (root / "gamma.json").write_text(json.dumps({
        "prefix": "gamma", "info": _info("Gamma", "CC-BY-NC-4.0", "Gil"), "icons": {"home": {"body": HOUSE}}}))
    (root / "package.json").write_text("{}")  # npm side files are not even read
    (root / "notes.json").write_text('{"hello": 1}')  # other JSON is read, counted and left out
    with tarfile.open(root / "iconify-json-delta-1.0.0.tgz", "w:gz") as tar:
        for name, data in [("package/icons.json", {"prefix": "delta", "width": 24, "height": 24,
                                                   "icons": {"home-sharp": {"body": HOUSE}, "star": {"body": STAR},
                                                             "bell": {"body": RING}}}),
                           ("package/info.json", _info("Delta", "CC0-1.0", "Dee"))]:
            raw = json.dumps(data).encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return root


@pytest.fixture(scope="module")
def sets_dir(tmp_path_factory) -> Path:
    return write_sets(tmp_path_factory.mktemp("iconsets"))


@pytest.fixture(scope="module")
def corpus(sets_dir, tmp_path_factory) -> icons.IconCorpusInfo:
    cfg = icons.IconsConfig(from_dir=str(sets_dir), image_size=SIZE, variants=VARIANTS, noise_rate=NOISE,
                            heldout_sets=("beta",), classify_min_per_class=1, shard_size=50, workers=1, seed=5)
    return icons.build_icon_corpus(tmp_path_factory.mktemp("icons_out"), cfg)


def _samples(info: icons.IconCorpusInfo) -> list[dict]:
    return list(iter_samples(expand_urls(info.shards), Counter()))


def test_concepts_drop_style_words_only_at_the_end() -> None:
    assert icons.concept_of("home-outline") == icons.concept_of("home") == "home"
    assert icons.concept_of("arrow-left-bold") == "arrow left"
    assert icons.concept_of("house-variant-outline") == "house"
    assert icons.concept_of("home-2") == "home"
    assert icons.concept_of("fill-drip") == "fill drip"
    assert icons.concept_of("outline") == "outline"  # never empty


def test_reading_sets_aliases_hidden_and_transforms(sets_dir) -> None:
    skipped: Counter = Counter()
    sets = {s.prefix: s for s in icons.read_sets(sets_dir, skipped)}
    assert sorted(sets) == ["alpha", "beta", "delta", "gamma"] and skipped == Counter(not_an_icon_set=1)
    alpha = {i.name: i for i in sets["alpha"].icons}
    assert "old-thing" not in alpha and sets["alpha"].hidden == 1
    assert alpha["home"].aliases == ("house",) and "house" not in alpha  # a plain alias names its parent
    assert alpha["arrow-left"].hflip and alpha["arrow-left"].body == ARROW  # a flipped alias is its own picture
    assert alpha["home"].categories == ("Buildings",)
    assert sets["alpha"].licence["spdx"] == "MIT" and sets["alpha"].author == "Ann"  # from info.json beside it
    assert sets["delta"].licence["spdx"] == "CC0-1.0" and len(sets["delta"].icons) == 3  # from the tarball
    assert icons.licence_reason(sets["gamma"]) == "licence:CC-BY-NC-4.0"


def test_licence_filter_and_stats(corpus) -> None:
    st = json.loads((corpus.root / "stats.json").read_text())
    used = {s["prefix"]: s for s in st["sets_used"]}
    assert sorted(used) == ["alpha", "beta", "delta"]
    assert used["alpha"]["licence"]["spdx"] == "MIT" and used["alpha"]["author"] == "Ann"
    assert used["alpha"]["icons"] == 7  # 6 visible + the flipped alias
    assert used["beta"]["split"] == "heldout" and used["beta"]["train_images"] == 0
    assert used["delta"]["train_images"] == 3 * VARIANTS
    [gamma] = st["sets_skipped"]
    assert gamma["prefix"] == "gamma" and gamma["reason"] == "licence:CC-BY-NC-4.0" and gamma["source"].endswith("gamma.json")
    assert st["skipped"] == {"licence:CC-BY-NC-4.0": 1, "not_an_icon_set": 1}
    assert st["num_train"] == corpus.num_train == (7 + 3) * VARIANTS


def test_rendered_pngs_are_real_images_of_the_icon(corpus) -> None:
    samples = _samples(corpus)
    assert len(samples) == corpus.num_train
    for s in samples:
        img = Image.open(io.BytesIO(s["png"]))
        assert img.format == "PNG" and img.size == (SIZE, SIZE) and img.mode == "RGB"
        meta = json.loads(s["json"])
        px = np.asarray(img, dtype=np.int32).reshape(-1, 3)
        fg = np.array([int(meta["fg"][k:k + 2], 16) for k in (1, 3, 5)])
        ink = (np.abs(px - fg).sum(1) < 30).mean()
        assert 0.02 < ink < 0.9, f"{meta['name']}: {ink:.3f} of the pixels in the ink colour"
        if meta["name"] == "block":  # reference: a box filling the icon covers (1 / (1 + 2 * padding))^2
            expected = (1 / (1 + 2 * meta["padding"])) ** 2
            assert abs(ink - expected) < 0.06, (ink, expected)


def test_heldout_sets_never_reach_training(corpus) -> None:
    metas = [json.loads(s["json"]) for s in _samples(corpus)]
    assert {m["set"] for m in metas} == {"alpha", "delta"}
    assert all(m.get("caption_from", {}).get("set") != "beta" for m in metas)
    assert not any("beta" in s["txt"].decode().lower() for s in _samples(corpus))


def test_karpathy_split_loads(corpus) -> None:
    split = read_karpathy(corpus.heldout_json, corpus.heldout_image_root)
    names = sorted(Path(p).stem for p in split.image_paths)
    assert names == ["arrow", "bell-2", "block", "home-filled", "ring", "star-bold"]  # one per concept
    assert len(split.texts) == 5 * len(names)
    for j, text in enumerate(split.texts):  # clean captions name the concept
        concept = icons.concept_of(Path(split.image_paths[split.text_to_image[j]]).stem)
        assert concept in text.lower()
    assert all(Image.open(p).size == (SIZE, SIZE) for p in split.image_paths)


def test_category_split(corpus) -> None:
    data = read_labeled(corpus.classify_root)
    assert data.classes == ["alerts", "buildings", "shapes"]
    names = json.loads((corpus.classify_root / "classnames.json").read_text())["icons_category"]
    assert names == ["alerts", "buildings", "shapes"]
    got = sorted((data.classes[lab], Path(p).name) for p, lab in zip(data.paths, data.labels))
    assert got == [("alerts", "beta-bell-2.png"), ("buildings", "beta-home-filled.png"), ("shapes", "beta-block.png"),
                   ("shapes", "beta-ring.png"), ("shapes", "beta-star-bold.png")]  # held-out set only
    assert "{c}" in json.loads((corpus.classify_root / "templates.json").read_text())["icons_category"][0]


def test_noise_counts_match_the_rate(corpus) -> None:
    metas = [json.loads(s["json"]) | {"txt": s["txt"].decode()} for s in _samples(corpus)]
    counts = Counter(m["noise"] for m in metas)
    assert dict(counts) == {"none" if k == "clean" else k: v for k, v in corpus.noise_counts.items()}
    n = len(metas)
    assert counts["junk"] + counts["mismatch"] == round(NOISE * n)
    assert abs(counts["junk"] - counts["mismatch"]) <= 1
    for m in metas:
        assert m["txt"] == m["caption"]
        if m["noise"] == "mismatch":
            assert m["caption_from"]["concept"] != m["concept"]
        if m["noise"] == "none":
            words = set(m["txt"].lower().replace("_", " ").replace("-", " ").replace(".", " ").split())
            assert set(m["concept"].split()) <= words or any(a.replace("-", " ") in m["txt"].lower()
                                                             for a in m["aliases"])


def test_from_never_calls_npm(sets_dir, tmp_path, monkeypatch) -> None:
    from openalign.cli.main import main

    def boom(*a, **k):
        raise AssertionError("npm called with --from")

    monkeypatch.setattr(icons.subprocess, "run", boom)
    monkeypatch.setattr(icons.shutil, "which", boom)
    rc = main(["data", "icons", "--from", str(sets_dir), "--out", str(tmp_path / "o"), "--image-size", "32",
               "--workers", "1", "--heldout-sets", "delta", "--classify-min-per-class", "1"])
    assert rc == 0
    st = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert st["heldout_sets"] == ["delta"] and st["classify_source"] == "all_sets"


def test_fetch_packs_each_set_once(tmp_path, monkeypatch) -> None:
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        pkg, dest = cmd[2], Path(cmd[cmd.index("--pack-destination") + 1])
        (dest / f"{pkg.lstrip('@').replace('/', '-')}-1.2.3.tgz").write_bytes(b"")
        return type("R", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setattr(icons.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(icons.subprocess, "run", fake_run)
    icons.fetch_sets(["mdi", "tabler"], tmp_path)
    icons.fetch_sets(["mdi"], tmp_path)  # cached: not fetched again
    assert [c[1:3] for c in calls] == [["pack", "@iconify-json/mdi"], ["pack", "@iconify-json/tabler"]]
    monkeypatch.setattr(icons.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="npm: not found on PATH.*--from"):
        icons.fetch_sets(["lucide"], tmp_path)


def test_bad_input_is_one_clear_line(sets_dir, tmp_path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "icons.json").write_text('{"prefix": "x", "icons": {"a": {"width": 3}}}')
    with pytest.raises(UserError, match=r"icons\.json: icons\.a\.body missing"):
        icons.read_sets(bad, Counter())
    (bad / "icons.json").write_text('{"prefix": "x", "icons": {"../up": {"body": ""}}}')
    with pytest.raises(UserError, match=r"icons\.\.\./up: '\.\./up' is not an icon name"):
        icons.read_sets(bad, Counter())
    (bad / "icons.json").write_text("{nope")
    with pytest.raises(UserError, match="icons.json: not valid JSON"):
        icons.read_sets(bad, Counter())
    cfg = icons.IconsConfig(from_dir=str(sets_dir), heldout_sets=("gamma",))
    with pytest.raises(UserError, match=r"--heldout-sets gamma: not among the sets used \(skipped: licence:CC-BY-NC"):
        icons.plan_corpus(cfg, sets_dir)
    only_nc = tmp_path / "nc"
    only_nc.mkdir()
    (only_nc / "gamma.json").write_text((sets_dir / "gamma.json").read_text())
    with pytest.raises(UserError, match="no usable icon set.*allowed licences: MIT"):
        icons.plan_corpus(icons.IconsConfig(), only_nc)
    with pytest.raises(UserError, match="--noise-rate"):
        icons.check_config(icons.IconsConfig(noise_rate=2.0))


@pytest.mark.slow
def test_worker_processes_give_the_same_bytes(sets_dir, tmp_path) -> None:
    cfg = icons.IconsConfig(from_dir=str(sets_dir), image_size=32, variants=2, shard_size=8, workers=1)
    one = icons.build_icon_corpus(tmp_path / "one", cfg)
    two = icons.build_icon_corpus(tmp_path / "two", icons.IconsConfig(**{**cfg.__dict__, "workers": 2}))
    for a, b in zip(expand_urls(one.shards), expand_urls(two.shards), strict=True):
        assert Path(a).read_bytes() == Path(b).read_bytes()
    assert (one.root / "heldout" / "karpathy.json").read_bytes() == (two.root / "heldout" / "karpathy.json").read_bytes()


def test_concept_classes_come_from_heldout_sets_and_are_shared(sets_dir) -> None:
    cfg = icons.IconsConfig(from_dir=str(sets_dir), heldout_sets=("beta",), classify_by="concept",
                            classify_min_per_class=1)
    plan = icons.plan_corpus(cfg, sets_dir)
    got = sorted((cls, ic.set, ic.name) for cls, ic in plan.classify)
    # "ring" is drawn by beta alone and "arrow" is "arrow right"/"arrow left" elsewhere: not shared concepts
    assert got == [("bell", "beta", "bell-2"), ("block", "beta", "block"), ("home", "beta", "home-filled"),
                   ("star", "beta", "star-bold")]
    assert plan.classify_source == "heldout_sets" and plan.total_images == len(plan.train) + 6 + 4
