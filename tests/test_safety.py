"""Unsafe-image stage with a synthetic "unsafe" class: red shapes are unsafe, blue ones are safe."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openalign.cli.main import main
from openalign.corpus import build as build_mod
from openalign.corpus.safety import (
    HEAD_FILE,
    STATS_FILE,
    SafetyClassifier,
    SafetyConfig,
    safety_shards,
)
from openalign.corpus.synth import encode_jpeg, render


def _image(colour: str, seed: int, size: int = 48) -> Image.Image:
    rng = random.Random(seed)
    attrs = {"colour": colour, "shape": rng.choice(["circle", "square", "star"]), "size": "large",
             "position": "centre", "count": rng.choice(["one", "two"]), "background": "grey"}
    return render(attrs, size, rng)


def _write_shards(folder: Path, colours: list[str], per_shard: int = 5) -> list[str]:
    """Shards of one sample per colour; returns the key of each sample, in order."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = []
    for n, colour in enumerate(colours):
        shard, key = folder / f"{n // per_shard:05d}.tar", f"{n:09d}"
        keys.append(key)
        jpg = b"not an image" if colour == "corrupt" else encode_jpeg(_image(colour, 1000 + n))
        members = [("jpg", jpg), ("txt", f"a {colour} thing".encode()),
                   ("json", json.dumps({"url": f"http://x/{n}.jpg"}).encode())]
        with tarfile.open(shard, "a") as tar:
            for ext, data in members:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return keys


def _kept(folder: Path) -> set[str]:
    keys = set()
    for shard in folder.glob("*.tar"):
        with tarfile.open(shard) as tar:
            keys |= {n.split(".")[0] for n in tar.getnames()}
    return keys


class ColourBundle:
    """A fake dual encoder: the image embedding is its L2-normalised mean RGB minus grey; a text
    naming red/green/blue embeds as that axis."""

    dim = 3

    def encode_images(self, images, batch_size: int = 64) -> torch.Tensor:
        x = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32)).mean((0, 1)) - 128
                         for im in images])
        return torch.nn.functional.normalize(x, dim=-1)

    def encode_texts(self, texts, batch_size: int = 256) -> torch.Tensor:
        axes = {"red": 0, "green": 1, "blue": 2}
        return torch.eye(3)[[next(i for w, i in axes.items() if w in t) for t in texts]]


def _train_head(bundle, steps: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression on the bundle's image embeddings: red = unsafe (1), blue = safe (0)."""
    imgs = [_image(c, s) for s in range(12) for c in ("red", "blue")]
    y = torch.tensor([1.0, 0.0] * 12)
    with torch.no_grad():
        x = bundle.encode_images(imgs)
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y).backward()
        opt.step()
    return w.detach(), b.detach()


COLOURS = ["red", "blue", "blue", "red", "blue", "blue", "red", "blue", "corrupt", "blue", "red", "blue"]


def _expect(keys: list[str]) -> set[str]:
    return {k for k, c in zip(keys, COLOURS) if c == "blue"}


def test_linear_head_removes_unsafe_keeps_safe(tmp_path: Path) -> None:
    keys = _write_shards(tmp_path / "in", COLOURS)
    bundle = ColourBundle()
    clf = SafetyClassifier(bundle, "linear", *_train_head(bundle))
    stats = safety_shards(str(tmp_path / "in"), tmp_path / "out", SafetyConfig(model_dir="fake"), classifier=clf)
    assert _kept(tmp_path / "out") == _expect(keys)
    assert (stats.unsafe, stats.samples_in, stats.samples_out) == (4, 12, 7) and stats.skipped["corrupt_image"] == 1
    saved = json.loads((tmp_path / "out" / STATS_FILE).read_text())
    assert saved["classifier"] == "linear" and sorted(r["key"] for r in saved["removed"]) == [
        k for k, c in zip(keys, COLOURS) if c == "red"]


def test_zero_shot_prompts_cosine_margin(tmp_path: Path) -> None:
    keys = _write_shards(tmp_path / "in", COLOURS)
    cfg = SafetyConfig(model_dir="fake", unsafe_prompts=("a red thing",), safe_prompts=("a blue thing", "green"))
    clf = SafetyClassifier(ColourBundle(), "zero-shot", unsafe_prompts=cfg.unsafe_prompts, safe_prompts=cfg.safe_prompts)
    stats = safety_shards(str(tmp_path / "in"), tmp_path / "out", cfg, classifier=clf)
    assert _kept(tmp_path / "out") == _expect(keys) and stats.unsafe == 4
    # a threshold above every margin removes nothing unsafe
    stats = safety_shards(str(tmp_path / "in"), tmp_path / "out2", SafetyConfig(threshold=2.0), classifier=clf)
    assert stats.unsafe == 0 and stats.samples_out == 11


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory) -> Path:
    """The tiny preset saved as a model directory, with a linear safety head trained on its embeddings."""
    from safetensors.torch import save_file

    from openalign.models.bundle import load_bundle
    from openalign.models.dual_encoder import DualEncoder
    from openalign.models.tokenizer import train_wordpiece

    tmp = tmp_path_factory.mktemp("safety")
    tok = train_wordpiece(["a red thing", "a blue thing", "a photo"] * 20, tmp / "tok", vocab_size=80, min_frequency=1)
    DualEncoder.from_preset("tiny", vocab_size=len(tok), seed=0).save_pretrained(tmp / "model", tokenizer=tok)
    w, b = _train_head(load_bundle(tmp / "model"), steps=500)
    save_file({"weight": w.reshape(1, -1).contiguous(), "bias": b}, str(tmp / "model" / HEAD_FILE))
    return tmp / "model"


def test_model_directory_with_head_through_the_cli(tiny_classifier: Path, tmp_path: Path, capsys) -> None:
    keys = _write_shards(tmp_path / "in", COLOURS)
    rc = main(["data", "safety", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--model", str(tiny_classifier)])
    out = capsys.readouterr().out
    assert rc == 0 and "4 unsafe images removed (linear classifier" in out
    assert _kept(tmp_path / "out") == _expect(keys)
    # zero-shot through the same (untrained) dual encoder runs and records its kind
    rc = main(["data", "safety", str(tmp_path / "in"), "--out", str(tmp_path / "zs"), "--model", str(tiny_classifier),
               "--classifier", "zero-shot", "--unsafe-prompt", "a red thing", "--safe-prompt", "a blue thing"])
    assert rc == 0 and json.loads((tmp_path / "zs" / STATS_FILE).read_text())["classifier"] == "zero-shot"


def test_without_classifier_the_rule_is_skipped_in_one_line(tmp_path: Path, capsys) -> None:
    _write_shards(tmp_path / "raw", COLOURS[:3])
    cfg = build_mod.BuildConfig(inputs=("x",), out_dir=str(tmp_path))
    logs: list[str] = []
    outputs, summary = build_mod.run_safety(cfg, tmp_path, False, log=logs.append)
    assert outputs == [] and "skipped" in summary and len(logs) == 1 and "NOT removed" in logs[0]
    assert build_mod.shard_dir_after(tmp_path, cfg, "safety") == tmp_path / "rules_shards"
    assert main(["data", "safety", str(tmp_path / "raw"), "--out", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().out.count("\n") == 1 and not (tmp_path / "o").exists()


def test_build_runs_safety_on_rules_shards(tiny_classifier: Path, tmp_path: Path) -> None:
    keys = _write_shards(tmp_path / "raw_shards", COLOURS)
    cfg = build_mod.BuildConfig(inputs=("x",), out_dir=str(tmp_path),
                                safety=SafetyConfig(model_dir=str(tiny_classifier)))
    build_mod.run_image_rules(cfg, tmp_path, False)
    outputs, summary = build_mod.run_safety(cfg, tmp_path, False)
    assert outputs[0] == "safe_shards" and summary["unsafe"] == 4 and summary["classifier"] == "linear"
    assert _kept(tmp_path / "safe_shards") == _expect(keys)
    assert build_mod.final_shard_dir(tmp_path, cfg) == tmp_path / "safe_shards"
