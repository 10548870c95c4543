"""Training-step throughput on whatever device is present: samples/s, MFU, peak memory, communication.

Every configuration runs ``Trainer.one_step`` itself (``openalign.train.step.train_step``: gradients
of the global-batch loss, gradient mean across processes, grad norm, Lamb, schedule, temperature
clamp) on a Trainer built from a ``TrainConfig`` and a model (``Trainer(cfg, info, model=...)``: no
tokenizer or shards), on one in-memory batch per process (uint8 pixels, padded token ids). The
configurations run one after another in the same process, each on a fresh model with the same
initial weights (``build_model``, seed 0), with their own warm-up steps; each figure is the median
of the timed steps. Configurations (``--configs``):

fp32         the per-process batch ``--batch`` in one pass, float32: the baseline of the ratios
bf16         the same with bf16 autocast (what ``openalign train --bf16`` does)
bf16+compile the same through ``torch.compile`` (only with ``--compile``; its compilation happens in
             the warm-up steps and is not timed)
large-batch  bf16, feature-cached micro-batches: global batch ``--large-batch`` in micro-batches of
             ``--micro`` per process (pass 1 without a graph, the global loss, pass 2 with a graph)

Figures per configuration:

* samples/s: global batch / median seconds per step;
* model FLOPs: counted once with ``torch.utils.flop_counter.FlopCounterMode`` on one forward +
  backward of the model (and the loss) at batch 2, divided by 2, times the samples/s. Model FLOPs
  credit one forward and one backward per sample: the feature-cached step's extra forward (pass 1,
  about a third more work) and any gradient-checkpointing recompute are not credited, as MFU is
  defined. torch's counter overcounts the weight gradient of grouped convolutions by the number
  of groups (EfficientNet's depthwise convolutions: ~14x too many FLOPs for b3-mini); the count
  here uses a corrected formula for ``convolution_backward``;
* MFU: model FLOPs/s per device / the device's peak dense bf16 FLOP/s (``PEAK_BF16_TFLOPS``, keyed
  by ``torch.cuda.get_device_name()``, or ``--peak-tflops``); "n/a" on CPU or an unknown device;
* peak memory per GPU: ``torch.cuda.max_memory_allocated`` over the configuration's steps
  (model, optimizer state and activations), the largest across processes;
* under torchrun (NCCL on GPU, gloo on CPU): the share of the step taken by the embedding
  all-gather (image + text embeddings, forward and backward of ``gather_with_grad``, (b, D)
  float32 with b the per-process batch) and by the gradient all-reduce (one flat float32 tensor of
  every parameter), each timed ALONE right after the configuration's steps, median of 5. Within
  the step they run as timed here (nothing overlaps them), so the shares are what communication
  costs; they are not a trace of the step.

Without a GPU the script sizes itself for CI: the ``tiny`` preset, batch 8, large batch 64 in
micro-batches of 16, 1 torch thread -- well under a minute.

    .venv/bin/python bench/gpu_step.py                    # CPU: tiny; GPU: b7-base (batch 64/GPU, 4096 in 256)
    .venv/bin/python bench/gpu_step.py --compile --json bench/out/gpu_step.json
    torchrun --nproc_per_node 8 bench/gpu_step.py --compile --json bench/out/gpu_step_8gpu.json
    .venv/bin/python bench/gpu_step.py --steps 1 --warmup 1 --json /tmp/g.json   # smoke (the test)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, get_shape

from openalign.losses import contrastive_loss, gather_with_grad
from openalign.models.preprocess import normalize_pixels
from openalign.models.presets import get_preset
from openalign.train.config import TrainConfig
from openalign.train.distributed import DistInfo, barrier, init_distributed
from openalign.train.loop import Trainer, build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling bench, also when a test imports this file
from train_throughput import make_batch  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s per device.
# Matched as substrings of torch.cuda.get_device_name(), first match wins (so "H100 PCIe" before
# "H100", "A100" before "A10", "L40S" before "L4").
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("GH200", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),  # SXM
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("B200", 2250.0),
    ("A100", 312.0),  # SXM and PCIe
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
]

CONFIGS = ["fp32", "bf16", "bf16+compile", "large-batch"]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_tflops(device_name: str) -> float | None:
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


# ---------------------------------------------------------------------------------------------
# model FLOPs per sample
# ---------------------------------------------------------------------------------------------
def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, groups, output_mask, out_shape, **kwargs) -> int:
    """torch's ``convolution_backward`` formula with the weight gradient divided by ``groups``.

    torch (2.13) counts the weight gradient as a conv of (C_in, B, H, W) by (C_out, B, H', W'), i.e.
    as if every input channel met every output channel: ``groups`` times too many for a grouped
    convolution (C times for a depthwise one). The input gradient is counted right.
    """
    def t(shape):
        return [shape[1], shape[0], *shape[2:]]

    flops = 0
    if output_mask[0]:  # grad_input as conv_transpose(grad_out, weight): weight already (C_out, C_in/g, k, k)
        flops += conv_flop_count(grad_out_shape, w_shape, get_shape(out_shape[0]), not transposed)
    if output_mask[1]:
        gw = get_shape(out_shape[1])
        if transposed:
            flops += conv_flop_count(t(grad_out_shape), t(x_shape), t(gw), transposed=False) // groups
        else:
            flops += conv_flop_count(t(x_shape), t(grad_out_shape), t(gw), transposed=False) // groups
    return flops


def model_flops_per_sample(cfg: TrainConfig, vocab: int, seq_len: int, device: str, n: int = 2) -> float:
    """FLOPs of one forward + backward of the model and the loss, per sample, counted at batch ``n``."""
    model = build_model(cfg, vocab_size=vocab).to(device).train()
    batch = make_batch(model.preset.image_size, n, vocab, seq_len, seed=0)
    pixels = normalize_pixels(batch["pixel_values"].to(device))
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as fc:
        img, txt = model(pixels, ids, mask)
        contrastive_loss(img, txt, model.temperature)["loss"].backward()  # local loss: no collectives here
    flops = fc.get_total_flops() / n
    del model, img, txt
    return flops


# ---------------------------------------------------------------------------------------------
# data and timing
# ---------------------------------------------------------------------------------------------
def sync(info: DistInfo) -> None:
    if info.device.startswith("cuda"):
        torch.cuda.synchronize(info.device)


def timed(fn, info: DistInfo, reps: int) -> list[float]:
    """Seconds per call of ``fn``, every process starting together (barrier) and the device drained."""
    out = []
    for _ in range(reps):
        sync(info)
        barrier(info)
        t0 = time.perf_counter()
        fn()
        sync(info)
        barrier(info)
        out.append(time.perf_counter() - t0)
    return out


def comm_seconds(info: DistInfo, local: int, dim: int, n_params: int, reps: int = 5) -> tuple[float, float]:
    """Median seconds of (embedding all-gather fwd+bwd for image and text, flat gradient all-reduce)."""
    img = torch.randn(local, dim, device=info.device, requires_grad=True)
    txt = torch.randn(local, dim, device=info.device, requires_grad=True)

    def gather() -> None:
        all_img, all_txt = gather_with_grad(img), gather_with_grad(txt)  # (N, D) each
        (all_img.sum() + all_txt.sum()).backward()

    flat = torch.zeros(n_params, device=info.device)

    def reduce() -> None:
        dist.all_reduce(flat)

    gather()
    reduce()  # first calls set up the communicators
    g = statistics.median(timed(gather, info, reps))
    r = statistics.median(timed(reduce, info, reps))
    return g, r


# ---------------------------------------------------------------------------------------------
# one configuration
# ---------------------------------------------------------------------------------------------
@dataclass
class Result:
    name: str
    global_batch: int
    micro: int | None
    bf16: bool
    compile: bool
    step_s: list[float] = field(default_factory=list)
    status: str = "ok"
    flops_per_sample: float = 0.0
    median_s: float | None = None
    samples_per_s: float | None = None
    model_tflops_per_s: float | None = None
    mfu: float | None = None
    peak_mem_gib: float | None = None
    gather_s: float | None = None
    gather_share: float | None = None
    allreduce_s: float | None = None
    allreduce_share: float | None = None
    vs_baseline: float | None = None
    note: str = ""


def compile_pooler_note(model: torch.nn.Module) -> str:
    """Why a compiled step can be slow: transformers' EfficientNet pools with ``AvgPool2d(hidden_dim,
    ceil_mode=True)``; inductor lowers a pool whose kernel equals its stride to a k x k reduction per
    output, masked down to the few real pixels (``AlignVisionConfig.hidden_dim`` is 2560 at every size:
    6.5M masked loads per pooled value, for a final feature map of 2 x 2 (tiny) or 10 x 10 (289 px))."""
    pool = getattr(model.align.vision_model, "pooler", None)
    if isinstance(pool, torch.nn.AvgPool2d):
        k = pool.kernel_size if isinstance(pool.kernel_size, int) else pool.kernel_size[0]
        if k > 5:
            return (f"the image tower pools with nn.AvgPool2d({k}, ceil_mode=True) (transformers' EfficientNet), "
                    f"which torch.compile lowers to a {k} x {k} reduction per output; an equivalent "
                    "nn.AdaptiveAvgPool2d(1) avoids it (docs/benchmarks.md)")
    return ""


def run_config(name: str, args: argparse.Namespace, info: DistInfo, flops: float, peak: float | None) -> Result:
    large = name == "large-batch"
    bf16, compiled = name != "fp32", name == "bf16+compile"
    global_batch = args.large_batch if large else args.batch * info.world_size
    micro = args.micro if large else None
    res = Result(name, global_batch, micro, bf16, compiled, flops_per_sample=flops)
    cfg = TrainConfig(preset=args.preset, batch_size=global_batch, micro_batch_size=micro, bf16=bf16, compile=compiled,
                      channels_last=not args.no_channels_last, grad_checkpointing=args.grad_checkpointing,
                      steps=100_000, warmup_steps=10, seed=0)
    local = global_batch // info.world_size
    batch = make_batch(get_preset(args.preset).image_size, local, args.vocab, args.seq_len, seed=1000 + info.rank)
    cuda = info.device.startswith("cuda")
    tr = None
    try:
        tr = Trainer(cfg, info, model=build_model(cfg, vocab_size=args.vocab))
        if compiled:
            res.note = compile_pooler_note(tr.model)
        if cuda:
            batch = {k: v.to(info.device) for k, v in batch.items()}  # on the device, as a prefetching loader leaves it
            torch.cuda.reset_peak_memory_stats(info.device)
        losses: list[float] = []

        def step() -> None:
            losses.append(tr.one_step(batch)["loss"])

        timed(step, info, args.warmup)
        res.step_s = timed(step, info, args.steps)
        if not all(math.isfinite(x) for x in losses):
            raise RuntimeError(f"{name}: non-finite loss {losses}")
        if cuda:
            res.peak_mem_gib = torch.cuda.max_memory_allocated(info.device) / 2**30
        if info.enabled:
            n_params = sum(p.numel() for p in tr.model.parameters() if p.requires_grad)
            res.gather_s, res.allreduce_s = comm_seconds(info, local, tr.model.embed_dim, n_params)
    except torch.cuda.OutOfMemoryError:
        if info.enabled:  # the other processes wait in a collective: crash them all rather than hang
            raise
        res.status = "OOM"
    finally:
        tr = None  # the model, optimizer state and activations go before the next configuration
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    if res.step_s:
        res.median_s = statistics.median(res.step_s)
        res.samples_per_s = global_batch / res.median_s
        res.model_tflops_per_s = flops * res.samples_per_s / 1e12
        if peak:
            res.mfu = res.model_tflops_per_s / (peak * info.world_size)
        if res.gather_s is not None:
            res.gather_share = res.gather_s / res.median_s
            res.allreduce_share = res.allreduce_s / res.median_s
    if info.enabled and res.peak_mem_gib is not None:
        every: list = [None] * info.world_size
        dist.all_gather_object(every, res.peak_mem_gib)
        res.peak_mem_gib = max(every)
    return res


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def _num(x: float | None, spec: str, na: str = "n/a") -> str:
    return na if x is None else format(x, spec)


def _pct(x: float | None, na: str = "n/a") -> str:
    return na if x is None else f"{100 * x:.1f}%"


def print_table(rows: list[Result], info: DistInfo, mfu_note: str, base: str) -> None:
    hdr = (f"{'config':<13} {'global batch':>12} {'micro':>5} {'s/step':>8} {'samples/s':>10} {'vs ' + base:>9} "
           f"{'TFLOP/s':>8} {'MFU':>6} {'peak GiB/GPU':>12} {'emb gather':>10} {'grad allreduce':>14}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        head = f"{r.name:<13} {r.global_batch:>12} {r.micro or '-':>5}"
        if r.status != "ok":
            print(f"{head} {r.status:>8}")
            continue
        print(f"{head} {r.median_s:>8.3f} {r.samples_per_s:>10.1f} {_num(r.vs_baseline, '.2f') + 'x':>9} "
              f"{r.model_tflops_per_s:>8.3f} {_pct(r.mfu):>6} {_num(r.peak_mem_gib, '.2f'):>12} "
              f"{_pct(r.gather_share):>10} {_pct(r.allreduce_share):>14}")
    print(f"MFU: {mfu_note}")
    for r in rows:
        if r.note:
            print(f"note, {r.name}: {r.note}")
    if not info.enabled:
        print("emb gather / grad allreduce: n/a (1 process; run under torchrun to measure them)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default=None, help="default: b7-base on a GPU, tiny on CPU")
    ap.add_argument("--batch", type=int, default=None, help="per-process batch of the one-pass configs (GPU 64, CPU 8)")
    ap.add_argument("--large-batch", type=int, default=None, help="GLOBAL batch of large-batch (GPU 4096, CPU 64)")
    ap.add_argument("--micro", type=int, default=None, help="micro-batch of large-batch, per process (GPU 256, CPU 16)")
    ap.add_argument("--configs", default="fp32,bf16,bf16+compile,large-batch",
                    help=f"comma list from {CONFIGS}; bf16+compile runs only with --compile")
    ap.add_argument("--compile", action="store_true", help="add the bf16+compile configuration (torch.compile)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per configuration (GPU 10, CPU 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per configuration (GPU 3, CPU 1)")
    ap.add_argument("--seq-len", type=int, default=None, help="longest caption in the batch, tokens (GPU 64, CPU 24)")
    ap.add_argument("--vocab", type=int, default=None, help="default: the preset's vocabulary")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak dense bf16 TFLOP/s (MFU)")
    ap.add_argument("--no-channels-last", action="store_true", help="NCHW image tower (default: channels_last)")
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (0 = torch's default)")
    ap.add_argument("--json", default="", help="write the figures here")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    info = init_distributed()
    gpu = info.device.startswith("cuda")
    if gpu:
        defaults = {"preset": "b7-base", "batch": 64, "large_batch": 4096, "micro": 256, "steps": 10, "warmup": 3,
                    "seq_len": 64}
    else:  # CI size: well under a minute on one CPU thread
        defaults = {"preset": "tiny", "batch": 8, "large_batch": 64, "micro": 16, "steps": 3, "warmup": 1,
                    "seq_len": 24}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.vocab = args.vocab or get_preset(args.preset).vocab_size
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(names) - set(CONFIGS)
    if unknown:
        raise SystemExit(f"unknown configs {sorted(unknown)}; known: {CONFIGS}")
    if not args.compile:
        names = [c for c in names if c != "bf16+compile"]

    device_name = torch.cuda.get_device_name(info.device) if gpu else cpu_name()
    peak = args.peak_tflops or (peak_tflops(device_name) if gpu else None)
    if peak:
        mfu_note = f"model FLOPs/s per device / {peak:g} TFLOP/s peak dense bf16 ({device_name})"
    elif gpu:
        mfu_note = f"n/a (peak bf16 FLOP/s of {device_name!r} not in the table; pass --peak-tflops)"
    else:
        mfu_note = "n/a (CPU)"
    log = print if info.is_main else (lambda *a, **k: None)
    tf32 = (f"; TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, TF32 cuDNN {torch.backends.cudnn.allow_tf32}"
            if gpu else "")
    log(f"torch {torch.__version__}, device {device_name} x {info.world_size} process(es), "
        f"{torch.get_num_threads()} torch thread(s); preset {args.preset}, seq_len {args.seq_len}, vocab {args.vocab}"
        f"{tf32}", flush=True)

    base_cfg = TrainConfig(preset=args.preset, channels_last=not args.no_channels_last, seed=0)
    flops = model_flops_per_sample(base_cfg, args.vocab, args.seq_len, info.device)
    log(f"model FLOPs per sample (forward + backward, FlopCounterMode at batch 2): {flops / 1e9:.3f} GFLOP", flush=True)

    rows: list[Result] = []
    for name in names:
        log(f"  {name}: {args.warmup} warm-up + {args.steps} timed steps ...", flush=True)
        rows.append(run_config(name, args, info, flops, peak))
    base = next((r for r in rows if r.samples_per_s), None)
    for r in rows:
        if base and r.samples_per_s:
            r.vs_baseline = r.samples_per_s / base.samples_per_s
    if info.enabled:
        dist.destroy_process_group()
    if not info.is_main:
        return
    print()
    print_table(rows, info, mfu_note, base.name if base else "-")
    if args.json:
        out = {"torch": torch.__version__, "device": info.device, "device_name": device_name,
               "world_size": info.world_size, "threads": torch.get_num_threads(), "preset": args.preset,
               "seq_len": args.seq_len, "vocab": args.vocab, "steps": args.steps, "warmup": args.warmup,
               "peak_bf16_tflops": peak, "flops_per_sample": flops, "flop_count": "FlopCounterMode, fwd+bwd at batch 2",
               "baseline": base.name if base else None, "configs": [asdict(r) for r in rows]}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"figures: {args.json}")


if __name__ == "__main__":
    main()
