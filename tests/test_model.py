"""Presets build plain AlignModels; saved models load in plain transformers with the same embeddings."""

import json

import pytest
import torch
from PIL import Image

from openalign.models import PRESETS, DualEncoder, get_preset
from openalign.models.bundle import load_bundle
from openalign.models.tokenizer import load_tokenizer


@pytest.mark.parametrize("name", ["tiny", "b3-mini", "b7-base", "l2-large"])
def test_preset_embedding_is_native_width(name):
    p = get_preset(name)
    cfg = p.align_config()
    assert cfg.projection_dim == p.native_dim
    # the native width of the last EfficientNet stage, as transformers computes it
    from transformers.models.align.modeling_align import round_filters

    assert round_filters(cfg.vision_config, 320) == p.native_dim
    assert {"tiny", "b3-mini", "b7-base", "l2-large"} <= set(PRESETS.names())


def test_presets_paper_shapes():
    assert get_preset("b7-base").native_dim == 640 and get_preset("l2-large").native_dim == 1376
    assert get_preset("b7-base").resize_size == 346 and get_preset("b7-base").image_size == 289


def test_encoders_normalised_and_temperature_init():
    m = DualEncoder.from_preset("tiny", vocab_size=300, seed=0).eval()
    img = m.encode_images(torch.randn(3, 3, 64, 64))
    txt = m.encode_texts(torch.randint(5, 300, (3, 7)), torch.ones(3, 7, dtype=torch.long))
    assert img.shape == txt.shape == (3, 160)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert m.temperature.item() == 1.0


def test_saved_model_loads_in_plain_transformers(tmp_path, tiny_data):
    from transformers import AlignModel, AlignProcessor

    tok = load_tokenizer(tiny_data["tokenizer"])
    m = DualEncoder.from_preset("tiny", vocab_size=len(tok), seed=1).eval()
    m.save_pretrained(tmp_path / "model", tokenizer=tok, summary={"steps": 0})
    meta = json.loads((tmp_path / "model" / "openalign.json").read_text())
    assert meta["transformers_loadable"] is True and meta["preset"]["name"] == "tiny"

    plain = AlignModel.from_pretrained(str(tmp_path / "model")).eval()
    proc = AlignProcessor.from_pretrained(str(tmp_path / "model"))
    images = [Image.new("RGB", (90, 70), (200, 20, 20)), Image.new("RGB", (50, 80), (20, 20, 200))]
    texts = ["a red square", "a blue circle"]
    inputs = proc(images=images, text=texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = plain(**inputs)
    bundle = load_bundle(tmp_path / "model")
    ours_img = bundle.encode_images(images)
    ours_txt = bundle.encode_texts(texts)
    assert torch.allclose(ours_img, out.image_embeds, atol=1e-5)
    # the processor pads to 64; padding does not change BERT's [CLS] output under the attention mask
    assert torch.allclose(ours_txt, out.text_embeds, atol=1e-5)


def test_embed_dim_option_adds_projection_and_says_so(tmp_path):
    p = get_preset("tiny").with_(embed_dim=64)
    m = DualEncoder.from_preset(p, vocab_size=100, seed=0).eval()
    assert m.encode_images(torch.randn(2, 3, 64, 64)).shape == (2, 64)
    m.save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "openalign.json").read_text())
    assert meta["transformers_loadable"] is False and "plain transformers" in meta["warning"]
    again = DualEncoder.from_pretrained(tmp_path / "m").eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(again.encode_images(x), m.encode_images(x), atol=1e-6)


# -- EfficientNet as its reference trains it (transformers' blocks differ in three places) --------


def _residual_block(m):
    """The deepest EfficientNet block with a residual connection (the highest drop-connect rate)."""
    blocks = m.align.vision_model.encoder.blocks
    i = max(i for i, b in enumerate(blocks) if b.projection.apply_dropout)
    return i, len(blocks), blocks[i].projection


def test_stochastic_depth_drops_whole_residual_branches_per_sample():
    rate = 0.9
    m = DualEncoder.from_preset(get_preset("tiny").with_(drop_connect_rate=rate), vocab_size=100, seed=0)
    i, n, proj = _residual_block(m)
    survival = 1 - rate * i / n
    torch.manual_seed(0)
    x = torch.randn(256, proj.project_conv.in_channels, 4, 4)
    shortcut = torch.zeros(256, proj.project_conv.out_channels, 4, 4)
    proj.train()
    with torch.no_grad():
        branch = proj.project_bn(proj.project_conv(x))  # batch statistics: the same in both calls
        out = proj(shortcut, x)
    zero = out.flatten(1).abs().amax(1) == 0
    scaled = torch.isclose(out, branch / survival, rtol=1e-4, atol=1e-5).flatten(1).all(1)
    assert bool((zero | scaled).all()), "each sample's branch is dropped whole or kept whole, scaled by 1/p"
    kept = scaled.float().mean().item()
    assert abs(kept - survival) < 4 * (survival * (1 - survival) / 256) ** 0.5
    proj.eval()
    with torch.no_grad():
        assert torch.equal(proj(shortcut + 1, x), proj.project_bn(proj.project_conv(x)) + 1)


def test_every_batchnorm_follows_the_preset_momentum(tmp_path):
    p = get_preset("tiny").with_(bn_momentum=0.01)
    m = DualEncoder.from_preset(p, vocab_size=100, seed=0)
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(bns) > 20 and {bn.momentum for bn in bns} == {0.01}
    m.save_pretrained(tmp_path / "m")
    again = DualEncoder.from_pretrained(tmp_path / "m")
    assert {mod.momentum for mod in again.modules() if isinstance(mod, torch.nn.BatchNorm2d)} == {0.01}


def test_depthwise_kernels_start_with_efficientnet_fan_out_init():
    m = DualEncoder.from_preset("b3-mini", vocab_size=100, seed=0)
    convs = [c for c in m.align.vision_model.modules() if isinstance(c, torch.nn.Conv2d)]
    depthwise = [c for c in convs if c.groups > 1 and c.groups == c.in_channels == c.out_channels]
    assert len(depthwise) == len(m.align.vision_model.encoder.blocks)
    for c in depthwise:  # fan_out = k * k * out / groups = k * k
        k = c.kernel_size[0]
        n = c.weight.numel()
        assert abs(c.weight.std().item() / (2 / (k * k)) ** 0.5 - 1) < 5 / (2 * n) ** 0.5
    stem = m.align.vision_model.embeddings.convolution  # dense convs: fan_out = k * k * out, as before
    assert abs(stem.weight.std().item() / (2 / (9 * stem.out_channels)) ** 0.5 - 1) < 0.2


def test_efficientnet_fixes_leave_the_state_dict_as_transformers_writes_it():
    from transformers import AlignModel

    p = get_preset("tiny").with_(drop_connect_rate=0.3)
    m = DualEncoder.from_preset(p, vocab_size=100, seed=0)
    plain = AlignModel(p.align_config(vocab_size=100))
    assert {k: v.shape for k, v in m.align.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}


def test_global_pool_is_adaptive_and_equal_to_transformers_pooling():
    """The image tower pools with AdaptiveAvgPool2d(1) (torch.compile lowers transformers'
    AvgPool2d(2560, ceil_mode) pathologically): same pooled features as transformers' own pooler."""
    import torch
    from torch import nn

    from openalign.models.dual_encoder import DualEncoder

    model = DualEncoder.from_preset("tiny", vocab_size=64, seed=0).eval()
    vision = model.align.vision_model
    assert isinstance(vision.pooler, nn.AdaptiveAvgPool2d)
    x = torch.randn(2, vision.config.hidden_dim, 3, 5)
    ref = nn.AvgPool2d(vision.config.hidden_dim, ceil_mode=True)(x)
    assert torch.allclose(vision.pooler(x), ref, atol=1e-6)


def test_conv_init_is_a_preset_choice():
    """`efficientnet` (the reference: depthwise std sqrt(2/(k*k))) for the paper's family; `tiny` keeps
    torch's fan-out (depthwise sqrt(C) smaller), which trains its AdamW demo far better."""
    import math

    from torch import nn

    from openalign.models.dual_encoder import DualEncoder
    from openalign.models.presets import get_preset

    assert get_preset("tiny").conv_init == "torch-fan-out" and get_preset("b3-mini").conv_init == "efficientnet"
    for kind, scale in (("efficientnet", 1.0), ("torch-fan-out", None)):
        model = DualEncoder.from_preset(get_preset("tiny").with_(conv_init=kind), vocab_size=64, seed=0)
        dw = [m for m in model.align.vision_model.modules()
              if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.out_channels]
        m = max(dw, key=lambda c: c.out_channels)
        k = m.kernel_size[0] * m.kernel_size[1]
        want = math.sqrt(2.0 / k) if scale else math.sqrt(2.0 / (k * m.out_channels))
        assert abs(m.weight.std().item() / want - 1) < 0.25, (kind, m.weight.std().item(), want)


def test_text_init_std_is_a_preset_choice():
    """The text tower starts with the preset's weight std (BERT's 0.02 for the named towers), and
    the trained model's config.json carries it as transformers' initializer_range."""
    assert get_preset("b7-base").text_init_std == 0.02
    for std in (0.02, 0.1):
        p = get_preset("tiny").with_(text_init_std=std)
        assert p.align_config().text_config.initializer_range == std
        m = DualEncoder.from_preset(p, vocab_size=500, seed=0)
        w = m.align.text_model.encoder.layer[0].attention.self.query.weight
        assert abs(float(w.std()) - std) < 0.1 * std
