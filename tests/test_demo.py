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
    # shape with the colour given (and colour with the shape given) on the held-out images, beside chance
    given = results["given_other"]
    assert given["num_images"] == 12 and given["chance_shape"] == 100 / len(SHAPES) and given["chance_colour"] == 12.5
    assert 0 <= given["shape"] <= 100 and 0 <= given["colour"] <= 100
    page, md = (out / "report.html").read_text(), (out / "report.md").read_text()
    assert f"<td>shape</td><td>{given['shape']:.1f}</td><td class=chance>12.5</td><td>colour given" in page
    assert f"| shape | {given['shape']:.1f} | 12.5 | colour given; 12 images |" in md
    assert "data:image/png;base64" in page and "R@1" in page and page.count("<figure>") >= 5
    for text in (page, md):
        assert f"<td>shape</td><td>{shape['top1']:.1f}</td><td class=chance>12.5</td>" in text or \
            f"| shape | {shape['top1']:.1f} | 12.5 |" in text
        assert "colour" in text and "chance" in text
    # the example queries include two that differ only by shape, each with its shape/colour hit counts
    a, b = (named_values(e["query"]) for e in results["examples"][:2])
    assert a["colour"] == b["colour"] and a["shape"] != b["shape"]
    assert "shape " in md and "/5" in md and (out / "report-curves.png").stat().st_size > 0
    # beside each hit count, what a model knowing only the other attribute would show
    first = results["examples"][0]
    assert set(first["expected_knowing_other"]) == {"shape", "colour"} and set(first["hits"]) == {"shape", "colour"}
    assert f"(colour alone: {first['expected_knowing_other']['shape']:.1f})" in md
    assert (out / "run" / "model" / "config.json").is_file()
    # the report says what world the demo drew: one large centred object on grey, colour in half the captions
    assert "Scenes: scene attributes held fixed: size large, count one, position centre, background grey" in md
    assert "colour named in 50% of the training captions" in md and results["world"]["colour_mention"] == 0.5


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
    # with held-out captions, the long query is the longest caption of the last combination
    images[-1]["sentences"] = [{"raw": "a purple star"}, {"raw": "one big purple star in the centre, on grey"}]
    images[-2]["sentences"] = [{"raw": "a purple hexagon with a very very long caption indeed here"}]
    path.write_text(json.dumps({"images": images}))
    assert example_queries_for(path)[-1] == "one big purple star in the centre, on grey"
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


def test_accuracy_given_other_matches_a_plain_loop():
    import torch

    from openalign.apps.demo import accuracy_given_other

    g = torch.Generator().manual_seed(0)
    n_col, n_shp, dim, n = 3, 4, 5, 60
    combo = torch.nn.functional.normalize(torch.randn(n_col, n_shp, dim, generator=g), dim=-1)
    colours = torch.randint(0, n_col, (n,), generator=g).tolist()
    shapes = torch.randint(0, n_shp, (n,), generator=g).tolist()
    # images near their own caption, with enough noise that some are wrong
    img = torch.nn.functional.normalize(torch.stack([combo[c, s] for c, s in zip(colours, shapes)])
                                        + 0.8 * torch.randn(n, dim, generator=g), dim=-1)

    def dot(u, v):
        return sum(float(a) * float(b) for a, b in zip(u, v))

    right_shape = right_colour = 0
    for i, (c, s) in enumerate(zip(colours, shapes)):
        scores = [dot(img[i], combo[c, k]) for k in range(n_shp)]
        right_shape += scores.index(max(scores)) == s
        scores = [dot(img[i], combo[k, s]) for k in range(n_col)]
        right_colour += scores.index(max(scores)) == c
    got = accuracy_given_other(img, colours, shapes, combo)
    assert 0 < right_shape < n and 0 < right_colour < n  # the noise makes it a real test
    assert abs(got["shape"] - 100 * right_shape / n) < 1e-9 and abs(got["colour"] - 100 * right_colour / n) < 1e-9
    assert got["chance_shape"] == 25.0 and abs(got["chance_colour"] - 100 / 3) < 1e-9 and got["num_images"] == n

    # a colour-only model: every caption of a colour embeds to one point, so shape is a tie the
    # first shape wins (right only for images of shape 0), while colour is always right
    colour_only = torch.eye(dim)[:n_col].unsqueeze(1).expand(n_col, n_shp, dim)
    got = accuracy_given_other(colour_only[colours, 0], colours, shapes, colour_only)
    assert got["colour"] == 100.0 and abs(got["shape"] - 100 * shapes.count(0) / n) < 1e-9
    # images equal to their own caption's embedding: all right
    assert accuracy_given_other(combo[colours, shapes], colours, shapes, combo)["shape"] == 100.0


def test_expected_hits_knowing_other_counts_the_other_attributes_images():
    from openalign.apps.demo import expected_hits_knowing_other

    attrs = [("green", "diamond")] * 3 + [("green", "triangle")] * 1 + [("red", "diamond")] * 4
    entries = [{"attributes": {"colour": c, "shape": s}} for c, s in attrs]
    # colour only: 5 random green images hold 5 * 3/4 diamonds; shape only: 5 random diamonds, 5 * 3/7 green
    got = expected_hits_knowing_other(entries, {"colour": {"green"}, "shape": {"diamond"}}, 5)
    assert got == {"shape": 5 * 3 / 4, "colour": 5 * 3 / 7}
    assert expected_hits_knowing_other(entries, {"colour": {"green"}}, 5) == {}
