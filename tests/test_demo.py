"""The demo end to end at toy size: every stage runs and writes its outputs."""

import json
from dataclasses import replace

from openalign.apps.demo import DemoConfig, run_demo


def test_demo_runs_end_to_end_small(tmp_path):
    base = DemoConfig()
    cfg = replace(base, out=str(tmp_path / "demo"), num_train=96, num_heldout=12, vocab_size=300, workers=1,
                  train=replace(base.train, steps=3, batch_size=16, warmup_steps=1, log_every=1, ckpt_every=2,
                                workers=0))
    summary = run_demo(cfg)
    out = tmp_path / "demo"
    results = json.loads((out / "results.json").read_text())
    assert results["retrieval"]["num_images"] == 12 and results["retrieval"]["num_texts"] == 60
    assert 0 <= results["retrieval"]["text_to_image_R@1"] <= 100
    assert abs(results["chance_text_to_image"]["text_to_image_R@1"] - 100 / 12) < 1e-9
    assert results["train"]["steps"] == 3 and summary["examples"]
    page = (out / "report.html").read_text()
    assert "data:image/png;base64" in page and "R@1" in page and page.count("<figure>") >= 5
    assert (out / "run" / "model" / "config.json").is_file()
