"""Retrieval evaluation: R@K against a brute-force reference, perfect/random models, bad input, CLI."""

from __future__ import annotations

import json
import random

import pytest
import torch
from eval_helpers import PerfectBundle, save_tiny_model, write_karpathy

from openalign.errors import UserError
from openalign.evals.metrics import retrieval_metrics
from openalign.evals.retrieval import evaluate_retrieval
from openalign.media.karpathy import read_karpathy


def brute_force(img: torch.Tensor, txt: torch.Tensor, t2i: list[int], ks=(1, 5, 10)) -> dict[str, float]:
    """Plain loops: rank by score, ties broken by lower index; CLIP_benchmark's hit rules."""
    s = (img @ txt.t()).tolist()
    n_img, n_txt = len(s), len(s[0])
    out = {}
    for k in ks:
        hits = 0
        for i in range(n_img):
            order = sorted(range(n_txt), key=lambda j: (-s[i][j], j))[:k]
            hits += any(t2i[j] == i for j in order)
        out[f"image_to_text_R@{k}"] = 100.0 * hits / n_img
        hits = 0
        for j in range(n_txt):
            order = sorted(range(n_img), key=lambda i: (-s[i][j], i))[:k]
            hits += t2i[j] in order
        out[f"text_to_image_R@{k}"] = 100.0 * hits / n_txt
    return out


@pytest.mark.parametrize("quantised", [False, True])
def test_metrics_match_brute_force(quantised: bool) -> None:
    g = torch.Generator().manual_seed(1)
    n_img, caps = 30, 5
    img = torch.randn(n_img, 8, generator=g)
    txt = torch.randn(n_img * caps, 8, generator=g)
    if quantised:  # few distinct values -> many exact ties in the scores
        img, txt = img.sign(), txt.sign()
        txt[::7] = img[torch.arange(0, n_img * caps, 7) // caps]  # some exact duplicates of their image
    t2i = [j // caps for j in range(n_img * caps)]
    random.Random(0).shuffle(t2i)  # captions need not be grouped
    got = retrieval_metrics(img, txt, t2i)
    ref = brute_force(img, txt, t2i)
    for key, val in ref.items():
        assert got[key] == pytest.approx(val, abs=1e-4), key
    assert got["mean_recall"] == pytest.approx(sum(ref.values()) / len(ref))


def test_perfect_and_random_embeddings() -> None:
    n_img, caps = 200, 5
    t2i = [j // caps for j in range(n_img * caps)]
    eye = torch.eye(n_img)
    perfect = retrieval_metrics(eye, eye[t2i], t2i)
    assert all(v == 100.0 for v in perfect.values())
    g = torch.Generator().manual_seed(0)
    rand = retrieval_metrics(torch.randn(n_img, 64, generator=g), torch.randn(n_img * caps, 64, generator=g), t2i)
    assert rand["text_to_image_R@10"] == pytest.approx(100 * 10 / n_img, abs=2.5)  # chance: 5%
    assert rand["image_to_text_R@1"] < 5 and rand["mean_recall"] < 12


def test_pipeline_perfect_model_with_corrupt_image(tmp_path) -> None:
    kj = write_karpathy(tmp_path, n_test=12, corrupt=2)
    res = evaluate_retrieval(PerfectBundle(dim=16), kj, tmp_path / "images", batch_size=5, workers=1,
                             progress=False)
    assert res["image_to_text_R@1"] == 100.0 and res["text_to_image_R@1"] == 100.0
    assert res["mean_recall"] == 100.0
    assert (res["num_images"], res["num_texts"], res["skipped_images"]) == (10, 50, 2)


def test_embedding_cache_reused(tmp_path) -> None:
    kj = write_karpathy(tmp_path, n_test=6)
    cache = tmp_path / "cache"
    a = evaluate_retrieval(PerfectBundle(dim=8), kj, tmp_path / "images", cache_dir=cache, progress=False)
    assert len(list(cache.glob("*.safetensors"))) == 1
    b = evaluate_retrieval(PerfectBundle(dim=8), kj, tmp_path / "images", cache_dir=cache, progress=False)
    assert a == b


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda p: p.unlink(), "file not found"),
        (lambda p: p.write_text("{not json"), "not valid JSON"),
        (lambda p: p.write_text(json.dumps({"imgs": []})), "field 'images'"),
        (lambda p: p.write_text(json.dumps({"images": [{"split": "test"}]})), "images[0].filename"),
        (lambda p: p.write_text(json.dumps({"images": [{"filename": "a.png", "split": "test"}]})),
         "images[0].sentences"),
        (lambda p: p.write_text(json.dumps({"images": [{"filename": "a", "split": "test", "sentences": [{}]}]})),
         "images[0].sentences[0].raw"),
        (lambda p: p.write_text(json.dumps({"images": [{"filename": "a", "split": "val",
                                                        "sentences": [{"raw": "x"}]}]})), "no images with split"),
    ],
)
def test_bad_input_is_user_error(tmp_path, mutate, needle) -> None:
    kj = write_karpathy(tmp_path, n_test=2)
    mutate(kj)
    with pytest.raises(UserError) as err:
        read_karpathy(kj, tmp_path / "images")
    msg = str(err.value)
    assert needle in msg and str(kj) in msg and "\n" not in msg


def test_wrong_image_root_is_user_error(tmp_path) -> None:
    kj = write_karpathy(tmp_path, n_test=2)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(UserError, match="check --image-root"):
        read_karpathy(kj, tmp_path / "elsewhere")


def eval_only_main(monkeypatch):
    """``openalign`` main with only the eval group registered (other groups are other people's)."""
    from openalign.cli import main as cli

    monkeypatch.setattr(cli, "COMMANDS", {"eval": cli.COMMANDS["eval"]})
    return cli.main


def test_cli_smoke_tiny_model(tmp_path, capsys, monkeypatch) -> None:
    main = eval_only_main(monkeypatch)

    model = save_tiny_model(tmp_path)
    kj = write_karpathy(tmp_path, n_test=8, corrupt=1)
    rc = main(["eval", "retrieval", "--model", str(model), "--karpathy-json", str(kj), "--image-root",
               str(tmp_path / "images"), "--out", str(tmp_path / "out"), "--workers", "0", "--no-progress"])
    assert rc == 0
    assert "image → text" in capsys.readouterr().out
    res = json.loads((tmp_path / "out" / "retrieval.json").read_text())
    assert res["metrics"]["num_images"] == 7 and res["info"]["skipped_images"] == 1
    assert 0 <= res["metrics"]["mean_recall"] <= 100
    assert (tmp_path / "out" / "retrieval.md").is_file() and (tmp_path / "out" / "retrieval.png").is_file()
    api = evaluate_retrieval(str(model), kj, tmp_path / "images", workers=0, progress=False)  # the demo's call
    assert api["mean_recall"] == pytest.approx(res["metrics"]["mean_recall"], abs=1e-4)
    assert main(["eval", "retrieval", "--model", str(tmp_path / "nope"), "--karpathy-json", str(kj),
                 "--image-root", str(tmp_path)]) == 2


def test_embedding_cache_key_includes_device_and_precision(tmp_path) -> None:
    """bf16 autocast or another device computes other numbers: never served from an fp32/CPU entry."""
    from openalign.models.embed import cache_key

    paths = [str(tmp_path / "a.png")]
    fp32 = PerfectBundle(dim=8)
    bf16 = PerfectBundle(dim=8)
    bf16.autocast_bf16 = True
    gpu = PerfectBundle(dim=8)
    gpu.device = "cuda:0"
    half = PerfectBundle(dim=8)
    half.model = half.model.to(torch.float16)
    keys = {cache_key(b, paths) for b in (fp32, bf16, gpu, half)}
    assert len(keys) == 4
    import copy

    assert cache_key(fp32, paths) == cache_key(copy.deepcopy(fp32), paths)  # same weights and settings, same entry
