"""The demo end to end at toy size: every stage runs and writes its outputs."""

import json
from dataclasses import replace

from openalign.apps.demo import DemoConfig, example_queries_for, named_values, run_demo
from openalign.corpus.synth import SHAPES


def test_demo_runs_end_to_end_small(tmp_path):
    base = DemoConfig()
    cfg = replace(base, out=str(tmp_path / "demo"), num_train=96, num_heldout=12, vocab_size=300, workers=1,
                  zeroshot_per_class=2,
                  train=replace(base.train, steps=3, batch_size=16, warmup_steps=1, log_every=1, ckpt_every=2,
                                workers=0))
    summary = run_demo(cfg)
    out = tmp_path / "demo"
    results = json.loads((out / "results.json").read_text())
    assert results["retrieval"]["num_images"] == 12 and results["retrieval"]["num_texts"] == 60
    assert 0 <= results["retrieval"]["text_to_image_R@1"] <= 100
    assert abs(results["chance_text_to_image"]["text_to_image_R@1"] - 100 / 12) < 1e-9
    assert results["train"]["steps"] == 3 and summary["examples"]
    # zero-shot shape and colour on held-out combinations, each beside its chance (1 / classes)
    shape, colour = results["zeroshot"]["shape"], results["zeroshot"]["colour"]
    assert shape["num_classes"] == len(SHAPES) and shape["num_images"] == 2 * len(SHAPES)
    assert abs(shape["chance"] - 100 / len(SHAPES)) < 1e-9 and 0 <= shape["top1"] <= 100
    assert abs(colour["chance"] - 12.5) < 1e-9 and 0 <= colour["top1"] <= 100
    page, md = (out / "report.html").read_text(), (out / "report.md").read_text()
    assert "data:image/png;base64" in page and "R@1" in page and page.count("<figure>") >= 5
    for text in (page, md):
        assert f"<td>shape</td><td>{shape['top1']:.1f}</td><td class=chance>12.5</td>" in text or \
            f"| shape | {shape['top1']:.1f} | 12.5 |" in text
        assert "colour" in text and "chance" in text
    # the example queries include two that differ only by shape, each with its shape/colour hit counts
    a, b = (named_values(e["query"]) for e in results["examples"][:2])
    assert a["colour"] == b["colour"] and a["shape"] != b["shape"]
    assert "shape " in md and "/5" in md and (out / "report-curves.png").stat().st_size > 0
    assert (out / "run" / "model" / "config.json").is_file()


def test_example_queries_pair_combos_differing_by_one_attribute(tmp_path):
    combos = [("blue", "heart"), ("green", "diamond"), ("green", "triangle"), ("orange", "diamond"),
              ("purple", "hexagon"), ("purple", "star")]
    images = [{"filename": f"{i}.jpg", "sentences": [], "attributes": {"colour": c, "shape": s}}
              for i, (c, s) in enumerate(combos)]
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"images": images}))
    q = example_queries_for(path)
    # two pairs that differ only by shape, one only by colour ("a green diamond" is not repeated), one long query
    assert q == ("a green diamond", "a green triangle", "a purple hexagon", "a purple star", "an orange diamond",
                 "three small purple stars on a striped background")
    assert named_values(q[-1]) == {"colour": {"purple"}, "shape": {"star"}}
    assert named_values("two crosses, in red") == {"colour": {"red"}, "shape": {"cross"}}
    assert named_values("IMG_2041.JPG") == {}


def test_colour_blocks_order_training_images_in_single_colour_runs(tmp_path):
    from collections import Counter

    from openalign.corpus import synth
    from openalign.media.shards import expand_urls, iter_samples

    info = synth.generate_corpus(tmp_path, num_train=24, num_heldout=2, noise_rate=0.25, image_size=32,
                                 shard_size=10, colour_block=4)
    metas = [json.loads(s["json"]) for s in iter_samples(expand_urls(info.shards), Counter())]
    colours = [m["attributes"]["colour"] for m in metas]
    assert colours == [synth.COLOURS[(i // 4) % len(synth.COLOURS)] for i in range(24)]
    held = set(synth.heldout_combos())
    assert not {(m["attributes"]["colour"], m["attributes"]["shape"]) for m in metas} & held
    swapped = [m for m in metas if m["noise"] == "swap"]  # a swapped caption describes another block's image
    assert swapped and all(m["caption_attributes"] == metas[m["swapped_with"]]["attributes"]
                           for m in swapped if m["swapped_with"] >= 0)
