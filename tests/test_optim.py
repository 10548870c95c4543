"""LAMB against a plain reference computation; parameter groups; the schedule."""

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
