"""One optimizer step: the global-batch ALIGN loss, its gradients, and the update.

``train_step`` is the whole update, in order: (1) gradients of the global-batch loss,
(2) their mean across processes, (3) clipping, (4) the optimizer step, (5) the LR schedule,
(6) the temperature clamp. ``Trainer.one_step`` is a call to it.

The gradients (``accumulate_grads``) come in micro-batches smaller than the per-process batch
when asked (the paper's 16k batch on small hardware), with features cached:

1. pass 1: embed every micro-batch without a graph; BatchNorm layers normalise each micro-batch
   with its own statistics (per-device BatchNorm, as the paper) but their running statistics are
   updated ONCE, with the statistics of the whole per-process batch (:func:`one_bn_update`), as
   one pass over that batch would: the number of micro-batches does not change the averages;
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
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from openalign.losses import global_contrastive_loss
from openalign.models.preprocess import normalize_pixels
from openalign.train.config import TrainConfig
from openalign.train.distributed import DistInfo, all_reduce_mean, all_reduce_mean_grads


@dataclass(frozen=True)
class StepSpec:
    """Everything one step needs besides the model, optimizer, schedule and batch."""

    seed: int
    micro_batch_size: int | None  # None = the whole per-process batch in one pass
    label_smoothing: float = 0.1
    negatives_fraction: float = 1.0
    bf16: bool = False
    rank: int = 0
    device: str = "cpu"
    world_size: int = 1
    grad_clip: float | None = None  # None = no clipping (the norm is still computed, for the log)
    min_temperature: float = 1e-3

    @classmethod
    def from_config(cls, cfg: TrainConfig, info: DistInfo) -> StepSpec:
        return cls(seed=cfg.seed, micro_batch_size=cfg.micro_batch_size or cfg.batch_size // info.world_size,
                   label_smoothing=cfg.label_smoothing, negatives_fraction=cfg.negatives_fraction, bf16=cfg.bf16,
                   rank=info.rank, device=info.device, world_size=info.world_size, grad_clip=cfg.grad_clip,
                   min_temperature=cfg.min_temperature)


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


@contextlib.contextmanager
def one_bn_update(model: nn.Module) -> Iterator[None]:
    """Forward passes inside see frozen running statistics; on exit every BatchNorm gets one
    momentum update with the mean and unbiased variance of all the inputs it saw (the union of the
    micro-batches), exactly what a single train-mode pass over them would have applied.

    Hand-written: torch has no way to defer BatchNorm's running-statistics update across calls.
    """
    bns = [m for m in model.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.training]
    seen: dict[nn.Module, list] = {}

    def collect(m: nn.Module, inputs: tuple, _out: torch.Tensor) -> None:
        x = inputs[0].detach().double()  # (B, C, ...) -> per-channel count, sum, sum of squares
        dims = [0, *range(2, x.dim())]
        acc = seen.setdefault(m, [0, 0.0, 0.0])
        acc[0] += x.numel() // x.shape[1]
        acc[1] = acc[1] + x.sum(dims)
        acc[2] = acc[2] + (x * x).sum(dims)

    handles = [m.register_forward_hook(collect) for m in bns]
    try:
        with frozen_bn_stats(model):
            yield
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        for m, (n, total, squares) in seen.items():
            if isinstance(m, nn.SyncBatchNorm) and torch.distributed.is_initialized():
                stats = torch.stack([torch.full_like(total, float(n)), total, squares])  # global, as SyncBN
                torch.distributed.all_reduce(stats)
                n, total, squares = int(stats[0, 0].item()), stats[1], stats[2]
            mean = total / n
            var = (squares / n - mean * mean).clamp_(min=0) * (n / max(1, n - 1))  # unbiased, as torch
            m.num_batches_tracked.add_(1)
            mom = m.momentum if m.momentum is not None else 1.0 / float(m.num_batches_tracked)
            m.running_mean.mul_(1 - mom).add_(mean.to(m.running_mean.dtype), alpha=mom)
            m.running_var.mul_(1 - mom).add_(var.to(m.running_var.dtype), alpha=mom)


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


def accumulate_grads(model: nn.Module, batch: dict, step: int, spec: StepSpec) -> dict[str, torch.Tensor]:
    """Accumulate the gradient of the global-batch loss into ``.grad``; return the loss terms.

    Gradients are per-process; ``train_step`` averages them across processes.
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

    # 1. embeddings of every micro-batch, no graph; one BatchNorm update for the whole batch
    with torch.no_grad(), one_bn_update(model):
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


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
               batch: dict, step: int, spec: StepSpec, forward: nn.Module | None = None) -> dict[str, float]:
    """One optimizer update from this process's share of the global batch; returns the metrics to log.

    ``batch``: ``pixel_values`` (n, 3, H, W) uint8, ``input_ids``/``attention_mask`` (n, L), n = the
    per-process batch. ``forward`` runs the model (a ``torch.compile`` wrapper of ``model``, say);
    ``model`` by default.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    # 1. gradient of the global-batch loss into .grad: this process's rows of the (N, N) logits
    out = accumulate_grads(model if forward is None else forward, batch, step, spec)  # () loss terms
    # 2. mean over processes: every process now holds the gradient of the global loss
    all_reduce_mean_grads(params, spec.world_size)
    # 3. clip the global norm (at inf: only measure it)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, spec.grad_clip or math.inf)  # ()
    # 4. update the weights, drop the gradients
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    # 5. learning rate for the next step
    scheduler.step()
    # 6. keep a learnable temperature positive
    if model.temperature.requires_grad:
        with torch.no_grad():
            model.temperature.clamp_(min=spec.min_temperature)
    loss = all_reduce_mean(out["loss"], spec.world_size)  # () mean over processes, for the log
    return {"loss": float(loss), "loss_i2t": float(out["loss_i2t"]), "loss_t2i": float(out["loss_t2i"]),
            "temperature": model.temperature.item(), "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm)}
