"""Retrieval metrics with CLIP_benchmark's definitions: the one R@K module (evaluations and the demo's top-k use it).

Image -> text: an image query hits at k if ANY of its captions is among the top-k texts.
Text -> image: every caption is its own query; it hits if its image is among the top-k images.
Ties are broken by index order (a stable sort), identically for every query.
"""

from __future__ import annotations

from typing import Sequence

import torch


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(Q, N) scores -> (Q, min(k, N)) indices of the highest scores, ties by lower index first."""
    k = min(k, scores.shape[1])
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return order[:, :k]


def recall_at_k(scores: torch.Tensor, positives: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Share of queries (rows) with at least one positive among their top k, in percent.

    scores: (Q, N) similarities; positives: (Q, N) bool, True where column is a correct answer.
    """
    kmax = max(ks)
    top = topk_indices(scores, kmax)  # (Q, kmax)
    hit = torch.gather(positives, 1, top)  # (Q, kmax) bool
    first_hit = torch.where(hit.any(1), hit.float().argmax(1), torch.full((hit.shape[0],), kmax, device=hit.device))
    return {k: float((first_hit < k).float().mean() * 100.0) for k in ks}


def retrieval_metrics(
    image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: Sequence[int] | torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """I2T and T2I R@K and their mean for (I, D) images and (T, D) texts; text j belongs to image text_to_image[j]."""
    t2i = torch.as_tensor(text_to_image, dtype=torch.long)
    scores = image_emb.float() @ text_emb.float().t()  # (I, T)
    pos = torch.zeros(scores.shape, dtype=torch.bool)
    pos[t2i, torch.arange(len(t2i))] = True
    i2t = recall_at_k(scores, pos, ks)
    t2i_r = recall_at_k(scores.t(), pos.t(), ks)
    out: dict[str, float] = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = i2t[k]
        out[f"text_to_image_R@{k}"] = t2i_r[k]
    out["mean_recall"] = sum(out.values()) / len(out)
    return out
