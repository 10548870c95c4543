"""Training samples/s: OpenALIGN's trainer step vs a naive ``AlignModel(return_loss=True)`` + AdamW loop.

Both sides train the SAME model (same preset, same initial weights) on the SAME in-memory batch,
in the same process, with the same batch size; the variants are interleaved round by round (one
step of each per round, order rotated) so that load from other users of a shared machine hits
every variant alike. Warm-up steps are excluded; each figure is the median of the timed steps.

ours   ``Trainer.one_step`` itself (``Trainer(cfg, info, model=...)``: no tokenizer or shards), i.e.
       ``openalign.train.step.train_step``: gradients (uint8 pixels normalised on the fly,
       L2-normalised float32 embeddings, the paper's loss in float32 -- SUM of both directions),
       gradient-norm computation (clip at inf), Lamb, schedule, temperature clamp. Variants: bf16 autocast, channels_last, both, and AdamW in
       place of Lamb (isolates the optimizer's cost).
ours elementwise-dropout
       ``ours`` with transformers' stochastic depth put back: each EfficientNet block's
       ``DropConnect`` (per-sample: whole residual branches, ``DualEncoder.from_preset``) swapped for
       the ``nn.Dropout`` of the same rate that ``AlignModel`` builds there (element-wise), on its own
       copy of the model (same initial weights). The ratio ``ours`` / this row shows what the
       fidelity change costs per step. The ``tiny`` preset has drop-connect rate 0 (both modules
       return their input); ``--drop-connect-rate R`` sets rate R * i / N in block i of N for every
       variant (the naive model's ``nn.Dropout`` too), so that the comparison means something there.
naive  ``transformers.AlignModel(config)`` with our weights copied in; pixels already float32 in
       [-1, 1] in memory (what ``AlignProcessor`` hands you); ``model(..., return_loss=True)``,
       ``loss.backward()``, ``torch.optim.AdamW`` over all parameters, ``zero_grad()``.

The two compute the same network; what differs is the step around it:

* Lamb costs more per step than AdamW (per tensor: Adam moments + bias correction, a weight norm,
  an update norm and a trust ratio, in a Python loop), and the trainer also computes the global
  gradient norm. The ``ours adamw`` row shows what that costs; the second table times the
  optimizer step alone.
* uint8 pixels: ``normalize_pixels`` costs one elementwise pass per step (timed below), but the
  batch is 4x smaller in memory and in data-loader IPC -- a win in the real loader, not here,
  where both sides read from memory.
* bf16 autocast on this CPU (AVX512-BF16, no AMX): helps the matmul-heavy parts (BERT, 1x1 convs)
  but EfficientNet's depthwise convolutions run slower in bf16 on CPU, so the image tower can
  lose more than the text tower gains. The rows show which wins per preset.
* channels_last: oneDNN's preferred layout for convolutions; it can help or hurt depending on the
  op mix (depthwise + squeeze-excite).

The loss itself is the same size on both sides (a B x B matrix in float32).

    .venv/bin/python bench/train_throughput.py [--presets tiny,b3-mini] [--batch tiny=64,b3-mini=8]
        [--steps tiny=10,b3-mini=4] [--warmup 2] [--variants all] [--threads 1] [--png bench/out/train_throughput.png]
        [--drop-connect-rate R]
    # the stochastic-depth check alone
    .venv/bin/python bench/train_throughput.py --presets b3-mini --variants "ours,ours elementwise-dropout" --no-parts
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AlignModel

from openalign.losses import global_contrastive_loss
from openalign.models.dual_encoder import DropConnect, DualEncoder
from openalign.models.preprocess import normalize_pixels
from openalign.models.presets import get_preset
from openalign.train.config import TrainConfig
from openalign.train.distributed import DistInfo
from openalign.train.loop import Trainer, build_model
from openalign.train.optim import build_optimizer

VARIANTS = ["naive", "ours", "ours elementwise-dropout", "ours bf16", "ours channels_last", "ours bf16+channels_last",
            "ours adamw"]


def parse_per_preset(text: str, presets: list[str], cast=int) -> dict[str, int]:
    """'64' -> every preset 64; 'tiny=64,b3-mini=8' -> per preset (missing ones keep defaults)."""
    if "=" not in text:
        return {p: cast(text) for p in presets}
    out = {}
    for part in text.split(","):
        k, v = part.split("=")
        out[k.strip()] = cast(v)
    return out


def make_batch(image_size: int, batch: int, vocab: int, seq_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """uint8 pixels (B, 3, S, S), token ids padded to the longest caption (B, L), attention mask."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(2, seq_len // 3), seq_len + 1, (batch,), generator=g)
    lengths[0] = seq_len  # padded to the longest, as our tokenizer pads
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    ids = torch.randint(5, vocab, (batch, seq_len), generator=g) * mask
    ids[:, 0] = 2  # [CLS]
    return {"pixel_values": torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8, generator=g),
            "input_ids": ids, "attention_mask": mask}


def set_stochastic_depth(vision: torch.nn.Module, rate: float | None, elementwise: bool) -> None:
    """Put ``nn.Dropout`` (transformers' element-wise) or ``DropConnect`` (ours, per sample) in every
    EfficientNet block, at the rate already there or, with ``rate``, at rate * i / N in block i of N."""
    blocks = vision.encoder.blocks
    for i, block in enumerate(blocks):
        old = block.projection.dropout
        r = (old.rate if isinstance(old, DropConnect) else old.p) if rate is None else rate * i / len(blocks)
        block.projection.dropout = torch.nn.Dropout(r) if elementwise else DropConnect(r)


def make_ours(preset: str, vocab: int, batch: int, bf16: bool, channels_last: bool, optimizer: str,
              elementwise_dropout: bool = False,
              drop_connect_rate: float | None = None) -> tuple[Callable[[], float], torch.nn.Module]:
    """A Trainer with the real model/optimizer/schedule/StepSpec, built from the config, but no tokenizer or shards."""
    cfg = TrainConfig(preset=preset, bf16=bf16, channels_last=channels_last, optimizer=optimizer, batch_size=batch,
                      steps=100_000, warmup_steps=10, seed=0)
    model = build_model(cfg, vocab_size=vocab)  # a model of its own: the same seed gives the same weights
    if elementwise_dropout or drop_connect_rate is not None:
        set_stochastic_depth(model.align.vision_model, drop_connect_rate, elementwise_dropout)
    tr = Trainer(cfg, DistInfo(), model=model)
    batch_ref: dict = {}

    def step() -> float:
        return tr.one_step(batch_ref["batch"])["loss"]

    step.batch_ref = batch_ref  # type: ignore[attr-defined]
    step.optimizer = tr.optimizer  # type: ignore[attr-defined]
    return step, tr.model


def make_naive(preset: str, vocab: int, init_state: dict,
               drop_connect_rate: float | None = None) -> tuple[Callable[[], float], torch.nn.Module]:
    model = AlignModel(get_preset(preset).align_config(vocab_size=vocab))
    model.load_state_dict(init_state)
    if drop_connect_rate is not None:
        set_stochastic_depth(model.vision_model, drop_connect_rate, elementwise=True)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
    batch_ref: dict = {}

    def step() -> float:
        b = batch_ref["batch"]
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], pixel_values=b["pixel_values"],
                    return_loss=True)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        return float(out.loss.detach())

    step.batch_ref = batch_ref  # type: ignore[attr-defined]
    step.optimizer = opt  # type: ignore[attr-defined]
    return step, model


@dataclass
class Row:
    preset: str
    variant: str
    batch: int
    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def sps(self) -> float:
        return self.batch / self.median


def bench_preset(preset: str, batch: int, steps: int, warmup: int, seq_len: int, vocab: int,
                 variants: list[str], drop_connect_rate: float | None = None) -> list[Row]:
    p = get_preset(preset)
    data = make_batch(p.image_size, batch, vocab, seq_len)
    float_data = {**data, "pixel_values": normalize_pixels(data["pixel_values"])}  # the naive side's input
    steppers: dict[str, Callable[[], float]] = {}
    init_state = None
    for v in variants:
        if v == "naive":
            continue
        fn, model = make_ours(preset, vocab, batch, bf16="bf16" in v, channels_last="channels_last" in v,
                              optimizer="adamw" if "adamw" in v else "lamb",
                              elementwise_dropout="elementwise-dropout" in v, drop_connect_rate=drop_connect_rate)
        if init_state is None:
            init_state = {k: t.detach().clone() for k, t in model.align.state_dict().items()}
        fn.batch_ref["batch"] = data  # type: ignore[attr-defined]
        steppers[v] = fn
    if "naive" in variants:
        if init_state is None:
            init_state = DualEncoder.from_preset(preset, vocab_size=vocab, seed=0).align.state_dict()
        fn, _ = make_naive(preset, vocab, init_state, drop_connect_rate)
        fn.batch_ref["batch"] = float_data  # type: ignore[attr-defined]
        steppers["naive"] = fn
    order = [v for v in variants if v in steppers]
    times: dict[str, list[float]] = {v: [] for v in order}
    for r in range(warmup + steps):
        rot = order[r % len(order):] + order[: r % len(order)]
        for v in rot:
            t0 = time.perf_counter()
            loss = steppers[v]()
            dt = time.perf_counter() - t0
            if not math.isfinite(loss):
                raise RuntimeError(f"{preset} {v}: loss {loss}")
            if r >= warmup:
                times[v].append(dt)
        print(f"  [{preset}] round {r + 1}/{warmup + steps}{' (warm-up)' if r < warmup else ''}", flush=True)
    return [Row(preset, v, batch, times[v]) for v in order]


def time_parts(preset: str, batch: int, vocab: int, seq_len: int, reps: int = 5) -> dict[str, float]:
    """Milliseconds for the pieces that differ: optimizer steps alone, pixel normalisation, loss."""
    model = DualEncoder.from_preset(preset, vocab_size=vocab, seed=0)
    for prm in model.parameters():
        prm.grad = torch.randn_like(prm) * 1e-3
    out = {}
    for name in ("lamb", "adamw"):
        opt = build_optimizer(model, name, 1e-3, 1e-5)
        opt.step()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            opt.step()
            ts.append(time.perf_counter() - t0)
        out[f"optimizer step: {'Lamb (ours)' if name == 'lamb' else 'AdamW'}"] = statistics.median(ts) * 1e3
    params = [q for q in model.parameters() if q.grad is not None]
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, math.inf)
        ts.append(time.perf_counter() - t0)
    out["grad-norm (clip at inf)"] = statistics.median(ts) * 1e3
    px = make_batch(get_preset(preset).image_size, batch, vocab, seq_len)["pixel_values"]
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        normalize_pixels(px)
        ts.append(time.perf_counter() - t0)
    out["normalize_pixels (uint8 -> float)"] = statistics.median(ts) * 1e3
    emb = torch.nn.functional.normalize(torch.randn(batch, model.embed_dim), dim=-1)
    ts = []
    for _ in range(reps):
        a, b = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
        t0 = time.perf_counter()
        global_contrastive_loss(a, b, model.temperature)["loss"].backward()
        ts.append(time.perf_counter() - t0)
    out["loss fwd+bwd (float32)"] = statistics.median(ts) * 1e3
    return out


def print_table(rows: list[Row]) -> None:
    hdr = f"{'preset':<8} {'variant':<24} {'batch':>5} {'median s/step':>13} {'samples/s':>10} {'vs naive':>9}"
    print(hdr)
    print("-" * len(hdr))
    for preset in dict.fromkeys(r.preset for r in rows):
        rs = [r for r in rows if r.preset == preset]
        naive = next((r for r in rs if r.variant == "naive"), None)
        for r in rs:
            ratio = f"{r.sps / naive.sps:8.2f}x" if naive else "      -"
            print(f"{r.preset:<8} {r.variant:<24} {r.batch:>5} {r.median:>13.3f} {r.sps:>10.1f} {ratio:>9}")


def print_dropout_ratio(rows: list[Row], drop_connect_rate: float | None) -> None:
    """What the per-sample drop-connect costs against transformers' element-wise dropout, per preset."""
    for preset in dict.fromkeys(r.preset for r in rows):
        rs = {r.variant: r for r in rows if r.preset == preset}
        ours, elem = rs.get("ours"), rs.get("ours elementwise-dropout")
        if ours is None or elem is None:
            continue
        rate = drop_connect_rate if drop_connect_rate is not None else get_preset(preset).drop_connect_rate
        print(f"stochastic depth, {preset} (rate {rate:g}, block i of N at rate * i / N): ours (per-sample "
              f"drop-connect) {ours.sps:.1f} samples/s vs transformers' element-wise dropout {elem.sps:.1f} "
              f"samples/s: {ours.sps / elem.sps:.2f}x")


def plot(rows: list[Row], path: str) -> None:
    # lazy: only with --png, and the Agg backend must be chosen before pyplot is imported
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = list(dict.fromkeys(r.preset for r in rows))
    fig, axes = plt.subplots(1, len(presets), figsize=(5.5 * len(presets), 3.6), squeeze=False)
    for ax, preset in zip(axes[0], presets):
        rs = [r for r in rows if r.preset == preset]
        colors = ["#888888" if r.variant == "naive" else "#1f77b4" for r in rs]
        ax.barh([r.variant for r in rs], [r.sps for r in rs], color=colors)
        ax.invert_yaxis()
        ax.set_title(f"{preset} (batch {rs[0].batch})")
        ax.set_xlabel("training samples/s (median step)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"figure: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="tiny,b3-mini")
    ap.add_argument("--batch", default="tiny=64,b3-mini=8", help="N or preset=N,...")
    ap.add_argument("--steps", default="tiny=10,b3-mini=4", help="timed steps per variant: N or preset=N,...")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    ap.add_argument("--seq-len", type=int, default=24, help="longest caption in the batch (tokens)")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--variants", default="all", help=f"comma list from {VARIANTS} or 'all'")
    ap.add_argument("--no-parts", action="store_true", help="skip the per-part timings")
    ap.add_argument("--drop-connect-rate", type=float, default=None,
                    help="EfficientNet stochastic-depth rate R for every variant: block i of N at R * i / N "
                         "(default: the preset's; tiny's is 0)")
    ap.add_argument("--png", default="bench/out/train_throughput.png", help="'' to skip the figure")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (0 = torch's default); 1 because on a shared 2-core machine 2 OpenMP "
                         "threads stall whenever another job holds a core (measured 20-45x slower)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    batch = {"tiny": 64, "b3-mini": 8, **parse_per_preset(args.batch, presets)}
    steps = {"tiny": 10, "b3-mini": 4, **parse_per_preset(args.steps, presets)}
    variants = VARIANTS if args.variants == "all" else [v.strip() for v in args.variants.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    rows: list[Row] = []
    parts: dict[str, dict[str, float]] = {}
    for p in presets:
        b, n = batch.get(p, 8), steps.get(p, 4)
        print(f"{p}: batch {b}, {args.warmup} warm-up + {n} timed steps per variant", flush=True)
        rows += bench_preset(p, b, n, args.warmup, args.seq_len, args.vocab, variants, args.drop_connect_rate)
        if not args.no_parts:
            parts[p] = time_parts(p, b, args.vocab, args.seq_len)
    print()
    print_table(rows)
    print_dropout_ratio(rows, args.drop_connect_rate)
    if parts:
        print()
        print("where the step differs (ms, median of 5):")
        for p, d in parts.items():
            for k, v in d.items():
                print(f"  {p:<8} {k:<36} {v:9.2f}")
    if args.png:
        plot(rows, args.png)


if __name__ == "__main__":
    main()
