"""One training step's loss and gradients, written to a file; run alone or under torchrun.

usage: dist_step_worker.py OUT.safetensors MICRO(0=none) FREEZE_BN(0/1) DROPOUT(0/1)
The global batch is 16 fixed samples; each of W processes takes its 16/W contiguous rows.
"""

import os
import sys

import torch
from safetensors.torch import save_file

from openalign.models import DualEncoder, get_preset
from openalign.train.distributed import all_reduce_mean, all_reduce_mean_grads, init_distributed
from openalign.train.step import StepSpec, accumulate_grads


def global_batch(n: int = 16) -> dict:
    g = torch.Generator().manual_seed(123)
    return {"pixel_values": torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8, generator=g),
            "input_ids": torch.randint(5, 200, (n, 12), generator=g),
            "attention_mask": torch.ones(n, 12, dtype=torch.long)}


def step_grads(micro: int | None, freeze_bn: bool, dropout: bool) -> dict[str, torch.Tensor]:
    info = init_distributed()
    preset = get_preset("tiny").with_(text_dropout=0.1 if dropout else 0.0)
    model = DualEncoder.from_preset(preset, vocab_size=200, seed=0)
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    batch = global_batch()
    per = 16 // info.world_size
    local = {k: v[info.rank * per : (info.rank + 1) * per] for k, v in batch.items()}
    out = accumulate_grads(model, local, step=3, spec=StepSpec(seed=7, micro_batch_size=micro, rank=info.rank))
    params = [p for p in model.parameters() if p.requires_grad]
    all_reduce_mean_grads(params, info.world_size)
    result = {f"grad.{n}": p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    result["loss"] = all_reduce_mean(out["loss"], info.world_size).reshape(1)
    # this process's BatchNorm running statistics after the step (per-device, as the paper)
    for n, b in model.named_buffers():
        if "running_mean" in n or "num_batches_tracked" in n:
            result[f"buf.{n}"] = b.detach().clone()
    return result


if __name__ == "__main__":
    path, micro, freeze_bn, dropout = sys.argv[1], int(sys.argv[2]) or None, sys.argv[3] == "1", sys.argv[4] == "1"
    res = step_grads(micro, freeze_bn, dropout)
    if int(os.environ.get("RANK", "0")) == 0:
        save_file({k: v.contiguous() for k, v in res.items()}, path)
