"""The paper's model family: every EfficientNet image tower x BERT text tower is a plain AlignModel."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from transformers import AlignConfig, AlignModel

from openalign.errors import UserError
from openalign.models import DualEncoder, get_preset
from openalign.models.presets import (
    IMAGE_TOWERS,
    TEXT_TOWERS,
    ModelPreset,
    get_image_tower,
    get_text_tower,
)
from openalign.train.config import TrainConfig

IMAGE = [f"efficientnet-b{i}" for i in range(8)] + ["efficientnet-l2"]
TEXT = ["bert-mini", "bert-small", "bert-medium", "bert-base", "bert-large"]
# the last stage's width (ALIGN's embedding: no top conv), as the EfficientNet checkpoints have it
NATIVE = {"b0": 320, "b1": 320, "b2": 352, "b3": 384, "b4": 448, "b5": 512, "b6": 576, "b7": 640, "l2": 1376}


def test_registries_hold_the_paper_family():
    assert IMAGE_TOWERS.names() == sorted(IMAGE) and TEXT_TOWERS.names() == sorted(TEXT)
    for name in IMAGE:
        assert get_image_tower(name).native_dim == NATIVE[name.rsplit("-", 1)[1]]
    l2 = get_image_tower("efficientnet-l2")
    assert (l2.width_coefficient, l2.depth_coefficient, l2.resolution) == (4.3, 5.3, 800)
    b7 = get_image_tower("efficientnet-b7")
    assert (b7.width_coefficient, b7.depth_coefficient, b7.resolution, b7.dropout_rate) == (2.0, 3.1, 600, 0.5)
    shapes = {t: (get_text_tower(t).layers, get_text_tower(t).hidden, get_text_tower(t).heads) for t in TEXT}
    assert shapes == {"bert-mini": (4, 256, 4), "bert-small": (4, 512, 8), "bert-medium": (8, 512, 8),
                      "bert-base": (12, 768, 12), "bert-large": (24, 1024, 16)}
    assert all(get_text_tower(t).intermediate == 4 * get_text_tower(t).hidden for t in TEXT)


def test_named_presets_are_shorthands_for_towers():
    for name, image, text in [("b3-mini", "efficientnet-b3", "bert-mini"), ("b7-base", "efficientnet-b7", "bert-base")]:
        p = get_preset(name)
        assert (p.image_tower, p.text_tower, p.image_size) == (image, text, 289)
        assert ModelPreset.from_towers(name, image, text) == p
        assert p.with_towers(image, text) == p  # naming its own towers changes nothing
    assert get_preset("l2-large").with_towers("efficientnet-l2", "bert-large") == get_preset("l2-large")


def test_with_towers_swaps_only_what_is_named():
    base = get_preset("b3-mini")
    p = base.with_towers(image_tower="efficientnet-b5")
    assert p.name == "efficientnet-b5+bert-mini" and p.native_dim == 512
    assert (p.text_hidden, p.text_layers, p.image_size, p.bn_momentum) == (256, 4, 289, base.bn_momentum)
    q = get_preset("tiny").with_towers(text_tower="bert-small", image_size=96)
    assert q.name == "tiny+bert-small" and q.width_coefficient == 0.5 and q.image_size == 96 and q.resize_size == 115
    assert (q.text_hidden, q.text_heads, q.text_intermediate) == (512, 8, 2048)
    assert get_preset("tiny").with_towers() == get_preset("tiny")


@pytest.mark.parametrize(("image", "text"), list(itertools.product(IMAGE, TEXT)))
def test_every_combination_is_a_plain_align_model(image, text):
    """Config for all; the module tree on the meta device (no weights) checks what transformers builds."""
    p = ModelPreset.from_towers("x", image, text)
    it, tt = get_image_tower(image), get_text_tower(text)
    cfg = p.align_config()
    assert isinstance(cfg, AlignConfig) and cfg.projection_dim == it.native_dim
    assert p.with_(embed_dim=96).align_config().projection_dim == 96
    v, t = cfg.vision_config, cfg.text_config
    assert (v.width_coefficient, v.depth_coefficient, v.num_hidden_layers) == (
        it.width_coefficient, it.depth_coefficient, it.num_blocks)
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.intermediate_size) == (
        tt.hidden, tt.layers, tt.heads, tt.intermediate)
    with torch.device("meta"):
        m = DualEncoder.from_preset(p)
    assert type(m.align) is AlignModel and m.image_projection is None
    blocks = m.align.vision_model.encoder.blocks
    assert len(blocks) == it.num_blocks and blocks[-1].projection.project_conv.out_channels == it.native_dim
    assert len(m.align.text_model.encoder.layer) == tt.layers
    assert tuple(m.align.text_projection.weight.shape) == (it.native_dim, tt.hidden)


@pytest.mark.parametrize("text", ["bert-mini", "bert-small"])
def test_small_combinations_run(text):
    p = get_preset("tiny").with_towers("efficientnet-b0", text, image_size=64)
    m = DualEncoder.from_preset(p, vocab_size=120, seed=0).eval()
    with torch.no_grad():
        img, txt = m(torch.randn(2, 3, 64, 64), torch.randint(5, 120, (2, 6)))
    assert img.shape == txt.shape == (2, 320)


def test_small_combination_round_trips_through_plain_transformers(tmp_path):
    p = get_preset("tiny").with_towers("efficientnet-b0", "bert-mini", image_size=64)
    m = DualEncoder.from_preset(p, vocab_size=120, seed=0).eval()
    m.save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "openalign.json").read_text())
    assert meta["transformers_loadable"] and meta["preset"]["image_tower"] == "efficientnet-b0"
    assert "element-wise dropout" in meta["stochastic_depth"]
    plain = AlignModel.from_pretrained(str(tmp_path / "m")).eval()
    x, ids = torch.randn(2, 3, 64, 64), torch.randint(5, 120, (2, 6))
    with torch.no_grad():
        out = plain(pixel_values=x, input_ids=ids)
        ours_img, ours_txt = m(x, ids)
    assert torch.allclose(out.image_embeds, ours_img, atol=1e-5)
    assert torch.allclose(out.text_embeds, ours_txt, atol=1e-5)
    assert DualEncoder.from_pretrained(tmp_path / "m").preset == p


@pytest.mark.parametrize(("field", "value", "known"), [
    ("image_tower", "efficientnet-b9", "efficientnet-l2"),
    ("text_tower", "bert-huge", "bert-medium"),
])
def test_unknown_tower_names_the_value_and_the_known_ones(field, value, known):
    with pytest.raises(UserError, match=value) as err:
        get_preset("tiny").with_towers(**{field: value})
    assert known in str(err.value) and "known:" in str(err.value)
    with pytest.raises(UserError, match="b3-mini"):
        get_preset("b3-minor")
    with pytest.raises(UserError, match="32 px"):
        get_preset("tiny").with_towers(image_size=16)


def test_train_config_builds_the_named_towers():
    from openalign.train.loop import build_model

    cfg = TrainConfig(image_tower="efficientnet-b0", text_tower="bert-mini", image_size=64, channels_last=False)
    model = build_model(cfg, vocab_size=100)
    assert model.preset.name == "efficientnet-b0+bert-mini" and model.preset.image_size == 64
    assert model.embed_dim == 320 and model.align.config.text_config.hidden_size == 256


def test_cli_flags_pick_the_towers(tmp_path, tiny_data, capsys):
    from openalign.cli.main import main

    common = ["train", "--shards", tiny_data["shards"], "--tokenizer", tiny_data["tokenizer"], "--steps", "1",
              "--batch-size", "4", "--warmup-steps", "1", "--workers", "0", "--ckpt-every", "0"]
    assert main([*common, "--out", str(tmp_path / "bad"), "--image-tower", "efficientnet-b9"]) == 2
    err = capsys.readouterr().err
    assert "efficientnet-b9" in err and "efficientnet-b0" in err
    out = tmp_path / "run"
    assert main([*common, "--out", str(out), "--image-tower", "efficientnet-b0", "--text-tower", "bert-mini",
                 "--image-size", "64"]) == 0
    preset = json.loads((out / "model" / "openalign.json").read_text())["preset"]
    assert (preset["image_tower"], preset["text_tower"], preset["image_size"]) == ("efficientnet-b0", "bert-mini", 64)
    config = AlignModel.config_class.from_pretrained(str(out / "model"))
    assert config.projection_dim == 320 and config.text_config.num_hidden_layers == 4
