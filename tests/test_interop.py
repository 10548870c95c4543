"""Pretrained interop: a tiny random AlignModel saved in exactly the kakaobrain/align-base layout loads
through ``load_bundle`` and gives the embeddings of plain ``AlignModel`` + ``AlignProcessor``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from openalign.models.bundle import load_bundle

CROP, RESIZE = 60, 72  # align-base's 289 / 346, scaled down
WORDS = ["a", "photo", "of", "the", "red", "blue", "cat", "dog", "on", "grass", "sky", "##s"]
TEXTS = ["a photo of the red cat", "blue dogs on grass", "sky", "the cat on the red grass of a dog photo"]


def _preprocessor_config() -> dict:
    """align-base's preprocessor_config.json with the sizes scaled down."""
    return {
        "crop_size": {"height": CROP, "width": CROP},
        "do_center_crop": True,
        "do_normalize": False,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_processor_type": "EfficientNetImageProcessor",
        "image_std": [0.47853944, 0.4732864, 0.47434163],
        "include_top": False,
        "processor_class": "AlignProcessor",
        "resample": 2,
        "rescale_factor": 1 / 127.5,
        "rescale_offset": True,
        "size": {"height": RESIZE, "width": RESIZE},
    }


def save_align_base_layout(out: Path) -> Path:
    """config.json + model.safetensors + vocab.txt/tokenizer files + preprocessor_config.json."""
    from transformers import AlignModel, BertTokenizerFast

    from openalign.models.presets import get_preset

    out.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=True, model_max_length=64)
    tok.save_pretrained(str(out))
    torch.manual_seed(0)
    config = get_preset("tiny").with_(image_size=CROP).align_config(vocab_size=len(vocab))
    model = AlignModel(config).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval-mode BN matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model.save_pretrained(str(out), safe_serialization=True)
    (out / "preprocessor_config.json").write_text(json.dumps(_preprocessor_config(), indent=2))
    return out


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(80, 80), (120, 64), (50, 97), (300, 200)]  # squares, wide, tall, larger than the resize
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB") for w, h in sizes]


@pytest.fixture(scope="module")
def align_dir(tmp_path_factory) -> Path:
    return save_align_base_layout(tmp_path_factory.mktemp("align-base"))


def test_layout_is_align_base(align_dir) -> None:
    names = {p.name for p in align_dir.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.txt", "preprocessor_config.json"} <= names
    assert "openalign.json" not in names


def test_pixels_match_align_processor(align_dir) -> None:
    from transformers import AlignProcessor

    bundle = load_bundle(align_dir)
    ours = torch.stack([bundle.transform(im) for im in _images()])
    ref = AlignProcessor.from_pretrained(str(align_dir))(images=_images(), return_tensors="pt")["pixel_values"]
    assert ours.shape == ref.shape == (4, 3, CROP, CROP)
    assert torch.allclose(ours, ref, atol=1e-5), float((ours - ref).abs().max())


def test_embeddings_match_plain_transformers(align_dir) -> None:
    from transformers import AlignModel, AlignProcessor

    bundle = load_bundle(align_dir)
    model = AlignModel.from_pretrained(str(align_dir)).eval()
    processor = AlignProcessor.from_pretrained(str(align_dir))
    with torch.no_grad():
        pix = processor(images=_images(), return_tensors="pt")["pixel_values"]
        ref_img = F.normalize(model.get_image_features(pixel_values=pix).pooler_output, dim=-1)
        enc = processor(text=TEXTS, padding=True, return_tensors="pt")
        ref_txt = F.normalize(model.get_text_features(**enc).pooler_output, dim=-1)
    ours_img = bundle.encode_images(_images())
    ours_txt = bundle.encode_texts(TEXTS)
    assert ours_img.shape == ref_img.shape and ours_txt.shape == ref_txt.shape
    assert torch.allclose(ours_img, ref_img, atol=1e-5), float((ours_img - ref_img).abs().max())
    assert torch.allclose(ours_txt, ref_txt, atol=1e-5), float((ours_txt - ref_txt).abs().max())


def test_batched_file_pipeline_matches(align_dir, tmp_path) -> None:
    """The evaluations' DataLoader path (JPEG files, decode workers) equals plain transformers too."""
    from transformers import AlignModel, AlignProcessor

    from openalign.models.embed import embed_image_files

    paths = []
    for i, im in enumerate(_images()):
        paths.append(tmp_path / f"{i}.jpg")
        im.save(paths[-1], quality=90)
    bundle = load_bundle(align_dir)
    ours = embed_image_files(bundle, paths, batch_size=3, workers=1, progress=False)
    model = AlignModel.from_pretrained(str(align_dir)).eval()
    processor = AlignProcessor.from_pretrained(str(align_dir))
    with torch.no_grad():
        pix = processor(images=[Image.open(p) for p in paths], return_tensors="pt")["pixel_values"]
        ref = F.normalize(model.get_image_features(pixel_values=pix).pooler_output, dim=-1)
    assert ours.ok.all() and torch.allclose(ours.embeddings, ref, atol=1e-5)


def test_align_base_batchnorm_momentum_read_as_tf(align_dir, tmp_path) -> None:
    """align-base's config says 0.99 in TF's sense (keep 99% of the running average): in torch that is
    momentum 0.01, on every BatchNorm, so fine-tuning does not replace the statistics by the last batch."""
    import shutil

    from torch import nn

    from openalign.models.dual_encoder import DualEncoder

    copy = tmp_path / "align-base"
    shutil.copytree(align_dir, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["vision_config"]["batch_norm_momentum"] = 0.99  # what the published align-base config.json says
    (copy / "config.json").write_text(json.dumps(cfg))
    model = DualEncoder.from_pretrained(copy)
    momenta = {round(m.momentum, 6) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert momenta == {0.01}
