"""ALIGN's normalized-softmax contrastive loss, with negatives from the global batch.

logits = image . text / temperature over L2-normalised embeddings; label smoothing 0.1; the SUM
of the image-to-text and text-to-image cross-entropies (the paper; transformers' ``align_loss``
takes their mean, which halves the gradient). Each process computes its own rows against the
whole gathered batch, so memory per process is linear in the global batch.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint
import torch.distributed as dist
import torch.nn.functional as F


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process along dim 0, keeping the autograd graph.

    The backward of the gather sums each slice's gradients from all processes and hands the
    local slice back, so every process sees the gradient of the WHOLE loss w.r.t. its rows.
    Identity (no copy) when not distributed.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather  # lazy: only under torch.distributed

    return torch.cat(all_gather(x.contiguous()), dim=0)


# Above this many logits per direction (64 MB of float32) the loss is computed in row tiles whose
# logits are recomputed in backward: at batch 16,384 the full matrices and their autograd copies
# take ~6 GB, the tiles ~100 MB, for one extra matrix product (bench/big_batch.py).
MAX_LOGITS = 1 << 24


def _ce_sum(rows: torch.Tensor, cols: torch.Tensor, inv_t: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    return F.cross_entropy(rows.float() @ cols.float().t() * inv_t, labels, label_smoothing=eps, reduction="sum")


def _smoothed_ce(rows, cols, inv_t, labels, eps: float, max_logits: int) -> torch.Tensor:
    """Mean over rows of the label-smoothed cross-entropy of ``rows @ cols.T * inv_t``."""
    b, n = rows.shape[0], cols.shape[0]
    if b * n <= max_logits:
        return _ce_sum(rows, cols, inv_t, labels, eps) / b

    tile = max(1, max_logits // n)
    total = rows.new_zeros((), dtype=torch.float32)
    for i in range(0, b, tile):
        total = total + checkpoint(_ce_sum, rows[i : i + tile], cols, inv_t, labels[i : i + tile], eps,
                                   use_reentrant=False)
    return total / b


def contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    temperature: torch.Tensor,
    label_smoothing: float = 0.1,
    all_image_emb: torch.Tensor | None = None,
    all_text_emb: torch.Tensor | None = None,
    offset: int = 0,
    max_logits: int = MAX_LOGITS,
) -> dict[str, torch.Tensor]:
    """ALIGN loss for local rows against global columns.

    image_emb, text_emb: (B, D) local, L2-normalised.  all_*: (N, D) global (default: local).
    offset: index of the first local row inside the global batch.
    Returns ``loss`` (= i2t + t2i), ``loss_i2t``, ``loss_t2i``, and ``logits_scale``.
    Every process computes the mean over its own rows; averaging over processes (DDP) gives
    the mean over the global batch.
    """
    all_image_emb = image_emb if all_image_emb is None else all_image_emb
    all_text_emb = text_emb if all_text_emb is None else all_text_emb
    b = image_emb.shape[0]
    labels = torch.arange(offset, offset + b, device=image_emb.device)
    inv_t = 1.0 / temperature.float()
    # image -> text: local images (B, D) against all texts (N, D); text -> image likewise
    loss_i2t = _smoothed_ce(image_emb, all_text_emb, inv_t, labels, label_smoothing, max_logits)
    loss_t2i = _smoothed_ce(text_emb, all_image_emb, inv_t, labels, label_smoothing, max_logits)
    return {"loss": loss_i2t + loss_t2i, "loss_i2t": loss_i2t, "loss_t2i": loss_t2i, "logit_scale": inv_t.detach()}


def global_contrastive_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, temperature: torch.Tensor, label_smoothing: float = 0.1,
    negatives_fraction: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Gather embeddings from all processes (with gradients) and compute the local rows' loss.

    ``negatives_fraction`` < 1 keeps only that share of the global batch as candidates for each
    row (the paper's Table 8 ablation), always including the positive.
    """
    all_img = gather_with_grad(image_emb)
    all_txt = gather_with_grad(text_emb)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    offset = rank * image_emb.shape[0]
    if negatives_fraction >= 1.0:
        return contrastive_loss(image_emb, text_emb, temperature, label_smoothing, all_img, all_txt, offset)
    return _subsampled_negatives_loss(image_emb, text_emb, temperature, label_smoothing, all_img, all_txt, offset,
                                      negatives_fraction)


def _subsampled_negatives_loss(img, txt, temperature, label_smoothing, all_img, all_txt, offset, fraction):
    # Split the global batch into 1/fraction contiguous groups; each row's candidates are its own
    # group, as if the batch were that much smaller for the loss but not for the gradient step.
    n, b = all_img.shape[0], img.shape[0]
    groups = max(1, int(round(1.0 / fraction)))
    size = n // groups
    if size * groups != n:
        raise ValueError(f"global batch {n} is not divisible into {groups} negative groups")
    i2t, t2i = [], []
    row = 0
    while row < b:
        g_lo = (offset + row) // size * size  # first global index of this row's group
        end = min(b, g_lo + size - offset)  # local rows in the same group
        out = contrastive_loss(img[row:end], txt[row:end], temperature, label_smoothing,
                               all_img[g_lo : g_lo + size], all_txt[g_lo : g_lo + size], offset + row - g_lo)
        i2t.append(out["loss_i2t"] * (end - row))
        t2i.append(out["loss_t2i"] * (end - row))
        row = end
    li2t, lt2i = torch.stack(i2t).sum() / b, torch.stack(t2i).sum() / b
    return {"loss": li2t + lt2i, "loss_i2t": li2t, "loss_t2i": lt2i, "logit_scale": (1.0 / temperature.float()).detach()}
