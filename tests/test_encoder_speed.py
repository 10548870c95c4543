"""The fast encoder paths of ``ModelBundle`` agree with fp32 (correctness only, never timing).

Tolerances, on the tiny preset with random weights (L2-normalised embeddings):
- channels-last image tower: the same numbers as contiguous, |diff| <= 1e-5;
- bf16 image tower (autocast): cosine >= 0.999 per image, |diff| <= 0.02;
- bf16 / int8 text tower: cosine >= 0.999 per text;
- a query padded to its length bucket (the compiled path's input): |diff| <= 1e-5 vs unpadded.
"""

from __future__ import annotations

import pytest
import torch
from eval_helpers import WORDS, save_tiny_model

from openalign.models.bundle import (
    INT8_TEXT_MIN_WEIGHTS,
    ModelBundle,
    build_text_path,
    cpu_has_native_bf16,
    load_bundle,
    resolve_precision,
    text_linear_weights,
)
from openalign.models.embed import cache_key, compute_identity
from openalign.models.tokenizer import tokenize

TEXTS = [" ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 3 + i % 6)) for i in range(12)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("speed"))


@pytest.fixture(scope="module")
def pixels():
    torch.manual_seed(0)
    return torch.randn(6, 3, 64, 64)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1)


def test_channels_last_gives_the_same_image_embeddings(model_dir, pixels):
    plain = load_bundle(model_dir, channels_last=False).encode_pixels(pixels)
    fast = load_bundle(model_dir, channels_last=True).encode_pixels(pixels)
    assert torch.allclose(plain, fast, atol=1e-5), float((plain - fast).abs().max())


def test_bf16_image_tower_agrees_with_fp32(model_dir, pixels):
    ref = load_bundle(model_dir).encode_pixels(pixels)
    bundle = load_bundle(model_dir, image_precision="bf16")
    out = bundle.encode_pixels(pixels)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert float(_cos(out, ref).min()) >= 0.999
    assert float((out - ref).abs().max()) <= 0.02
    # fp32 stays available from the same bundle, exactly
    assert torch.allclose(bundle.encode_pixels(pixels, precision="fp32"), ref, atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_text_tower_agrees_with_fp32(model_dir, precision):
    ref = load_bundle(model_dir).encode_texts(TEXTS)
    bundle = load_bundle(model_dir, text_precision=precision)
    out = bundle.encode_texts(TEXTS)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert float(_cos(out, ref).min()) >= 0.999, float(_cos(out, ref).min())
    one = torch.cat([bundle.encode_texts([t]) for t in TEXTS[:4]])  # single queries: the server's case
    assert float(_cos(one, ref[:4]).min()) >= 0.999
    assert torch.allclose(bundle.encode_texts(TEXTS, precision="fp32"), ref, atol=1e-6)
    # the fp32 model itself is untouched by building the reduced copy
    assert all(p.dtype == torch.float32 for p in bundle.model.parameters())


def test_padding_to_a_query_bucket_keeps_the_embedding(model_dir):
    bundle = load_bundle(model_dir)
    path = build_text_path(bundle.model, "fp32")
    enc = tokenize(bundle.tokenizer, [TEXTS[3]], bundle.max_text_len)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    pids, pmask = bundle._pad_to_bucket(ids, mask)
    assert pids.shape[1] == 16 and int(pmask.sum()) == int(mask.sum())
    with torch.inference_mode():
        a, b = path(ids, mask), path(pids, pmask)
        direct = bundle.model.encode_texts(ids, mask)
    assert torch.allclose(a, direct, atol=1e-6)
    assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())


def test_options_round_trip_and_validate(model_dir):
    b = load_bundle(model_dir, image_precision="auto", text_precision="auto", compile_text=False)
    assert b.image_precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert b.text_precision == "fp32"  # a small text tower: fp32 is its fastest query path
    assert b.image_precision == resolve_precision("auto", "image", "cpu")
    settings = b.compute_settings()
    assert settings["image_precision"] == b.image_precision and settings["text_precision"] == b.text_precision
    assert settings["channels_last"] is True and settings["compile_text"] is False  # channels-last: CPU default
    exact = load_bundle(model_dir)
    assert (exact.image_precision, exact.text_precision, exact.autocast_bf16) == ("fp32", "fp32", False)
    again = ModelBundle(model=exact.model, tokenizer=exact.tokenizer, transform=exact.transform,
                        **{k: v for k, v in settings.items() if k != "autocast_bf16"})
    assert again.compute_settings() == settings
    with pytest.raises(ValueError, match="precision"):
        load_bundle(model_dir, image_precision="int8")  # int8 is a text-tower option only
    with pytest.raises(ValueError, match="precision"):
        load_bundle(model_dir, text_precision="fp16")


def test_auto_text_precision_follows_the_tower_size(model_dir):
    """auto: int8 for a text tower whose linear weights pass the threshold (BERT-base), else fp32;
    fp32 on GPUs (they use bf16 autocast); the count is of the text tower's linear layers only."""
    b = load_bundle(model_dir)
    text = b.model.align.text_model
    expected = sum(m.weight.numel() for m in text.modules() if isinstance(m, torch.nn.Linear))
    assert text_linear_weights(b.model) == expected > 0
    big, small = INT8_TEXT_MIN_WEIGHTS, INT8_TEXT_MIN_WEIGHTS - 1
    want_big = "int8" if torch.backends.quantized.supported_engines != ["none"] else "fp32"
    assert resolve_precision("auto", "text", "cpu", big) == want_big
    assert resolve_precision("auto", "text", "cpu", None) == want_big  # unknown size: assume large
    assert resolve_precision("auto", "text", "cpu", small) == "fp32"
    assert resolve_precision("auto", "text", "cuda", big) == "fp32"
    assert resolve_precision("auto", "image", "cuda") == "fp32"
    assert resolve_precision("bf16", "text", "cpu", small) == "bf16"  # explicit choices are kept


def test_cache_key_separates_image_precisions(model_dir):
    fp32, bf16 = load_bundle(model_dir), load_bundle(model_dir, image_precision="bf16")
    assert "image_precision" not in compute_identity(fp32)  # fp32 keys unchanged: old caches stay valid
    assert compute_identity(bf16)["image_precision"] == "bf16"
    assert cache_key(fp32, ["x.jpg"]) != cache_key(bf16, ["x.jpg"])
    # channels-last and the text tower do not change image embeddings: same key
    assert cache_key(fp32, ["x.jpg"]) == cache_key(load_bundle(model_dir, channels_last=False,
                                                               text_precision="int8"), ["x.jpg"])


@pytest.mark.slow
def test_compiled_text_tower_agrees_with_eager(model_dir):
    ref = load_bundle(model_dir).encode_texts(TEXTS[:3])
    bundle = load_bundle(model_dir, compile_text=True)
    out = torch.cat([bundle.encode_texts([t]) for t in TEXTS[:3]])  # every text fits the 16-token bucket
    assert torch.allclose(out, ref, atol=1e-4), float((out - ref).abs().max())
    assert len(bundle._compiled) == 1
