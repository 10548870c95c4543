"""LAMB against a plain reference computation; parameter groups; the schedule."""

import pytest
import torch

from openalign.models import DualEncoder
from openalign.train.optim import Lamb, param_groups, warmup_linear_decay


def reference_lamb(w, grads, lr, wd, b1=0.9, b2=0.999, eps=1e-6):
    m = torch.zeros_like(w)
    v = torch.zeros_like(w)
    w = w.clone()
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        u = (m / (1 - b1**t)) / (torch.sqrt(v / (1 - b2**t)) + eps) + wd * w
        trust = (w.norm() / u.norm()).item()
        w = w - lr * trust * u
    return w


def test_lamb_matches_reference():
    torch.manual_seed(0)
    w0 = torch.randn(5, 4)
    grads = [torch.randn(5, 4) for _ in range(4)]
    p = torch.nn.Parameter(w0.clone())
    opt = Lamb([p], lr=0.01, weight_decay=0.1)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    assert torch.allclose(p.detach(), reference_lamb(w0, grads, 0.01, 0.1), atol=1e-6)


def test_no_decay_groups():
    m = DualEncoder.from_preset("tiny", vocab_size=100, seed=0)
    groups = param_groups(m, 1e-5, lr=1e-3, temperature_lr=0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    decay = {names[id(p)] for p in groups[0]["params"]}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert groups[2]["params"][0] is m.temperature and groups[2]["lr"] == 0.1 and groups[2]["weight_decay"] == 0
    assert not any(n.endswith(".bias") or "norm" in n.lower() for n in decay)
    assert any("LayerNorm" in n for n in no_decay) and any("batchnorm" in n or "_bn" in n or "norm" in n for n in no_decay)
    assert all(p.ndim >= 2 for p in groups[0]["params"])


def test_warmup_then_linear_decay_to_zero():
    f = [warmup_linear_decay(s, 10, 110) for s in range(111)]
    assert f[0] == 0.1 and f[9] == 1.0 and f[10] == 1.0
    assert abs(f[60] - 0.5) < 1e-9 and f[110] == 0.0
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


def test_text_lr_scale_gives_the_text_tower_its_own_rate():
    m = DualEncoder.from_preset("tiny", vocab_size=100, seed=0)
    names = {id(p): n for n, p in m.named_parameters()}
    plain = param_groups(m, 1e-5, lr=1e-3)
    groups = param_groups(m, 1e-5, lr=1e-3, text_lr_scale=0.25)
    assert len(groups) == len(plain) + 2
    # every parameter in exactly one group, none lost
    assert sorted(names[id(p)] for g in groups for p in g["params"]) == sorted(names[id(p)] for g in plain for p in g["params"])
    for g in groups:
        text = {("text_model." in names[id(p)] or "text_projection." in names[id(p)]) for p in g["params"]}
        assert len(text) == 1  # a group is all text tower or none of it
        assert g["lr"] == (2.5e-4 if text == {True} else 1e-3)


def test_text_lr_scale_zero_locks_the_text_tower_and_scales_adamw_steps():
    from openalign.train.optim import build_optimizer
    torch.manual_seed(0)
    ids = torch.randint(5, 100, (4, 6))
    pixels = torch.randn(4, 3, 64, 64)

    def one_step(scale):
        m = DualEncoder.from_preset("tiny", vocab_size=100, seed=0).eval()  # no dropout: same gradients each time
        before = {n: p.detach().clone() for n, p in m.named_parameters()}
        opt = build_optimizer(m, "adamw", 1e-3, 0.0, text_lr_scale=scale)
        img, txt = m.image_features(pixels), m.text_features(ids, torch.ones_like(ids))
        torch.nn.functional.normalize(img, dim=-1).mul(torch.nn.functional.normalize(txt, dim=-1)).sum().backward()
        opt.step()
        return {n: (p.detach() - before[n]).abs().max().item() for n, p in m.named_parameters()}

    locked, half, full = one_step(0.0), one_step(0.5), one_step(1.0)
    text = [n for n in locked if "text_model." in n or "text_projection." in n]
    image = [n for n in locked if "vision_model." in n]
    assert text and image
    assert all(locked[n] == 0.0 for n in text)
    assert any(locked[n] > 0 for n in image)
    # AdamW's first step moves each weight by ~lr (sign of its gradient): half the rate, half the step
    moved = [n for n in text if full[n] > 1e-5]
    assert moved and all(abs(half[n] - 0.5 * full[n]) <= 0.05 * full[n] for n in moved)
    with pytest.raises(ValueError, match="text_lr_scale"):
        build_optimizer(DualEncoder.from_preset("tiny", vocab_size=100, seed=0), "adamw", 1e-3, 0.0, text_lr_scale=-1)
