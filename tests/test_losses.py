"""The ALIGN loss against a plain reference computation (values and gradients, temperature included)."""

import math

import pytest
import torch
import torch.nn.functional as F

from openalign.losses import contrastive_loss, global_contrastive_loss


def reference_loss(img, txt, t, eps=0.1):
    """Plain loops: smoothed cross-entropy per row, both directions, summed."""
    n = img.shape[0]
    sim = img @ txt.t() / t  # (N, N)

    def ce(logits_row, target):
        logp = logits_row - torch.logsumexp(logits_row, 0)
        smooth = torch.full((n,), eps / n)
        smooth[target] += 1 - eps
        return -(smooth * logp).sum()

    i2t = sum(ce(sim[i], i) for i in range(n)) / n
    t2i = sum(ce(sim[:, j], j) for j in range(n)) / n
    return i2t + t2i


def _embs(n=12, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1).requires_grad_(True)
    txt = F.normalize(torch.randn(n, d, generator=g), dim=-1).requires_grad_(True)
    return img, txt


@pytest.mark.parametrize("t_val", [1.0, 1 / 64, 0.3])
def test_loss_and_gradients_match_reference(t_val):
    img, txt = _embs()
    t = torch.tensor(t_val, requires_grad=True)
    out = contrastive_loss(img, txt, t, 0.1)
    out["loss"].backward()
    g_img, g_txt, g_t = img.grad.clone(), txt.grad.clone(), t.grad.clone()
    img.grad = txt.grad = t.grad = None
    ref = reference_loss(img, txt, t)
    ref.backward()
    assert torch.allclose(out["loss"], ref, atol=1e-5)
    assert torch.allclose(g_img, img.grad, atol=1e-5)
    assert torch.allclose(g_txt, txt.grad, atol=1e-5)
    assert torch.allclose(g_t, t.grad, rtol=1e-4, atol=1e-6)
    assert g_t.abs() > 0


def test_sum_not_mean_of_directions():
    img, txt = _embs()
    t = torch.tensor(1.0)
    out = contrastive_loss(img, txt, t)
    assert torch.allclose(out["loss"], out["loss_i2t"] + out["loss_t2i"])
    # transformers' align_loss is the mean: ours is exactly twice it
    from transformers.models.align.modeling_align import align_loss

    assert torch.allclose(out["loss"], 2 * align_loss((txt @ img.t()) / t), atol=1e-5)


def test_chance_level_loss_value():
    # identical embeddings everywhere: every logit equal -> each direction is log(N)
    n = 16
    e = F.normalize(torch.ones(n, 4), dim=-1)
    out = contrastive_loss(e, e, torch.tensor(1.0), 0.1)
    assert math.isclose(out["loss"].item(), 2 * math.log(n), rel_tol=1e-5)


def test_local_rows_against_global_batch_equal_full_loss():
    img, txt = _embs(n=8)
    t = torch.tensor(0.5)
    full = contrastive_loss(img, txt, t)["loss"]
    halves = [contrastive_loss(img[s], txt[s], t, 0.1, img, txt, offset=s.start)["loss"] for s in (slice(0, 4), slice(4, 8))]
    assert torch.allclose(full, sum(halves) / 2, atol=1e-6)


def test_negatives_fraction_equals_smaller_batches():
    img, txt = _embs(n=8)
    t = torch.tensor(0.5)
    half = global_contrastive_loss(img, txt, t, 0.1, negatives_fraction=0.5)["loss"]
    ref = (contrastive_loss(img[:4], txt[:4], t)["loss"] + contrastive_loss(img[4:], txt[4:], t)["loss"]) / 2
    assert torch.allclose(half, ref, atol=1e-6)


def test_tiled_loss_equals_full_loss_values_and_gradients():
    img, txt = _embs(n=10)
    t = torch.tensor(0.2, requires_grad=True)
    full = contrastive_loss(img, txt, t)
    full["loss"].backward()
    ref = [img.grad.clone(), txt.grad.clone(), t.grad.clone()]
    img.grad = txt.grad = t.grad = None
    tiled = contrastive_loss(img, txt, t, max_logits=30)  # tiles of 3 rows, recomputed in backward
    tiled["loss"].backward()
    assert torch.allclose(tiled["loss"], full["loss"], atol=1e-6)
    for a, b in zip([img.grad, txt.grad, t.grad], ref):
        assert torch.allclose(a, b, atol=1e-6)
