"""LAMB, parameter groups and the warm-up + linear-decay schedule.

LAMB is written here because no well-kept CPU+GPU implementation exists as a package:
torch-optimizer is unmaintained since 2021, apex's FusedLAMB needs CUDA, and timm pulls a CUDA
build of torch on this machine. It follows You et al. 2020 (Adam moments with bias correction,
decoupled weight decay added to the update, per-tensor trust ratio ||w|| / ||update||).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


class Lamb(torch.optim.Optimizer):
    """LAMB. Groups with ``adapt=False`` (no-decay params: norms, biases, temperature) skip the trust ratio."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, adapt: bool = True):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, adapt=adapt)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                g = p.grad.float() if p.grad.dtype != torch.float32 else p.grad
                m.mul_(b1).add_(g, alpha=1 - b1)  # first moment
                v.mul_(b2).addcmul_(g, g, value=1 - b2)  # second moment
                update = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt_().add_(group["eps"]))
                if group["weight_decay"] != 0:
                    update.add_(p, alpha=group["weight_decay"])
                ratio = 1.0
                if group["adapt"]:
                    w_norm, u_norm = p.norm(), update.norm()
                    ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.sub_(update * (group["lr"] * ratio))
        return loss


def is_text_param(name: str) -> bool:
    """The text tower's parameters (BERT and its projection) by their name in the model."""
    return "text_model." in name or "text_projection." in name


def param_groups(model: nn.Module, weight_decay: float, lr: float, temperature_lr: float | None = None,
                 text_lr_scale: float = 1.0) -> list[dict]:
    """Weight decay on matrices and conv kernels only: not on norms, biases or the temperature.

    The temperature gets its own group so its learning rate can differ (``temperature_lr``): with
    an Adam-style update it moves about one lr per step, so from 1.0 it needs ~1k steps at 1e-3.
    ``text_lr_scale`` != 1 puts the text tower in groups of its own at ``lr * text_lr_scale`` (0
    locks it, as LiT locks a tower); the schedule scales every group alike.
    """
    buckets: dict[tuple[bool, bool], list] = {}
    temp = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith("temperature"):
            temp.append(p)
            continue
        text = text_lr_scale != 1.0 and is_text_param(name)
        decay = not (p.ndim <= 1 or name.endswith(".bias"))
        buckets.setdefault((text, decay), []).append(p)
    groups = []
    for text in (False, True):
        for decay in (True, False):
            params = buckets.get((text, decay), [])
            if params or not text:  # the two plain groups always exist (checkpoints expect them)
                groups.append({"params": params, "weight_decay": weight_decay if decay else 0.0, "adapt": decay,
                               "lr": lr * (text_lr_scale if text else 1.0)})
    if temp:
        groups.append({"params": temp, "weight_decay": 0.0, "adapt": False, "lr": temperature_lr or lr})
    return groups


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float,
                    temperature_lr: float | None = None, text_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    if text_lr_scale < 0:
        raise ValueError(f"text_lr_scale={text_lr_scale}: use a scale >= 0 (0 locks the text tower)")
    groups = param_groups(model, weight_decay, lr, temperature_lr, text_lr_scale)
    if name == "lamb":
        return Lamb(groups, lr=lr)
    if name == "adamw":
        for g in groups:
            g.pop("adapt")
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-6)
    raise ValueError(f"optimizer={name!r}: use lamb or adamw")


def warmup_linear_decay(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def build_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    if warmup >= total:
        new = max(1, total // 10)
        log.warning("warmup_steps=%d >= steps=%d: warming up over %d steps instead", warmup, total, new)
        warmup = new
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_linear_decay(s, warmup, total))


