"""One training step: the global-batch ALIGN loss with feature-cached micro-batch accumulation.

With micro-batches smaller than the per-process batch (the paper's 16k batch on small hardware):

1. pass 1: embed every micro-batch without a graph (BatchNorm statistics update here, once);
2. the loss over the whole batch -- gathered across processes -- and its gradient with respect
   to the embeddings (and the temperature);
3. pass 2: re-embed each micro-batch with a graph and back-propagate the cached embedding
   gradients (BatchNorm running statistics frozen, dropout masks replayed).

Dropout masks come from an RNG seeded by (seed, step, global micro-batch index), so a micro-batch
draws the same masks in both passes, and 2 processes x 1 micro-batch draw exactly what
1 process x 2 micro-batches draws: the step is the same computation however it is split.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from openalign.models.preprocess import normalize_pixels
from openalign.losses import global_contrastive_loss


@dataclass(frozen=True)
class StepSpec:
    seed: int
    micro_batch_size: int | None
    label_smoothing: float = 0.1
    negatives_fraction: float = 1.0
    bf16: bool = False
    rank: int = 0
    device: str = "cpu"


@contextlib.contextmanager
def replay_rng(seed: int, step: int, chunk: int, device: str) -> Iterator[None]:
    """Fork the RNG and seed it from (seed, step, global micro-batch index)."""
    devices = [torch.device(device)] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(hash((seed, step, chunk)) & 0x7FFF_FFFF_FFFF_FFFF)
        yield


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm in train mode (batch statistics) but without touching its running statistics."""
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            saved.append((m, m.momentum, m.num_batches_tracked.clone()))
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, momentum, nbt in saved:
            m.momentum = momentum
            m.num_batches_tracked.copy_(nbt)


def _autocast(spec: StepSpec):
    if not spec.bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(spec.device).type, dtype=torch.bfloat16)


def _embed(model: nn.Module, batch: dict, sl: slice, spec: StepSpec) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = normalize_pixels(batch["pixel_values"][sl].to(spec.device, non_blocking=True))
    ids = batch["input_ids"][sl].to(spec.device, non_blocking=True)
    mask = batch["attention_mask"][sl].to(spec.device, non_blocking=True)
    with _autocast(spec):
        return model(pixels, ids, mask)  # (b, D), (b, D) L2-normalised float32


def train_step(model: nn.Module, batch: dict, step: int, spec: StepSpec) -> dict[str, torch.Tensor]:
    """Accumulate the gradient of the global-batch loss into ``.grad``; return the loss terms.

    Gradients are per-process; average them across processes afterwards (``all_reduce_mean_grads``).
    """
    n = batch["pixel_values"].shape[0]
    m = spec.micro_batch_size or n
    if n % m != 0:
        raise ValueError(f"per-process batch {n} is not a multiple of micro_batch_size {m}")
    chunks = [slice(i, i + m) for i in range(0, n, m)]
    first = spec.rank * len(chunks)  # global index of this process's first micro-batch
    temperature = model.temperature

    if len(chunks) == 1:  # plain step: one forward with a graph
        with replay_rng(spec.seed, step, first, spec.device):
            img, txt = _embed(model, batch, chunks[0], spec)
        out = global_contrastive_loss(img, txt, temperature, spec.label_smoothing, spec.negatives_fraction)
        with frozen_bn_stats(model):  # gradient checkpointing re-runs BatchNorm in backward
            out["loss"].backward()
        return {k: v.detach() for k, v in out.items()}

    # 1. embeddings of every micro-batch, no graph
    with torch.no_grad():
        embs = []
        for c, sl in enumerate(chunks):
            with replay_rng(spec.seed, step, first + c, spec.device):
                embs.append(_embed(model, batch, sl, spec))
    img = torch.cat([e[0] for e in embs]).requires_grad_(True)  # (n, D)
    txt = torch.cat([e[1] for e in embs]).requires_grad_(True)  # (n, D)
    # 2. global loss, d loss / d embeddings (and d loss / d temperature into its .grad)
    out = global_contrastive_loss(img, txt, temperature, spec.label_smoothing, spec.negatives_fraction)
    out["loss"].backward()
    g_img, g_txt = img.grad, txt.grad
    # 3. re-embed with a graph and push the cached gradients through the towers
    with frozen_bn_stats(model):
        for c, sl in enumerate(chunks):
            with replay_rng(spec.seed, step, first + c, spec.device):
                i_c, t_c = _embed(model, batch, sl, spec)
            torch.autograd.backward([i_c, t_c], [g_img[sl], g_txt[sl]])
    return {k: v.detach() for k, v in out.items()}
