"""The paper's big contrastive batch on small hardware: peak memory and seconds per sample.

Each configuration runs in a FRESH subprocess, so its peak resident memory (``ru_maxrss`` of the
child) belongs to that configuration alone:

* ``plain``  -- one forward/backward over the whole batch (no micro-batching), the baseline;
* ``cached`` -- the feature-cached step at a fixed micro-batch: pass 1 (embeddings, no graph) +
  global loss and its gradient w.r.t. the embeddings + pass 2 (re-embed each micro-batch with a
  graph, back-propagate the cached gradients) + Lamb -- ``Trainer.one_step`` itself, on a
  Trainer built from the config and a model (``Trainer(cfg, info, model=...)``: no tokenizer or shards).

Reported per configuration: seconds per step and per sample (median of the timed steps), peak
RSS, the RSS already held before the step (interpreter + model + optimizer + the batch), and the
size of the in-memory uint8 pixel batch, which grows linearly with the batch by construction.

The second table runs the same global batch on 1 process and on 2 processes under
``python -m torch.distributed.run`` (gloo, 127.0.0.1): each process holds half the batch,
gathers the other's embeddings with gradients, computes its rows of the loss, and gradients are
averaged with ``all_reduce_mean_grads``.

Threads: on a 2-core machine shared with other jobs, 2 OpenMP threads in one process can run
many times slower than 1 (each parallel region waits for a descheduled thread), so the
1-process rows run with ``--threads`` (default 1) and also, unless ``--no-two-threads``, with 2
threads; torchrun processes get 1 thread each (torchrun's own default with several processes).

The parent never imports torch or openalign: on Linux a child's ``ru_maxrss`` starts from its
parent's resident size at spawn (600 MB held by the parent shows as a 613 MB peak in a bare
``python -c``), so a parent holding torch would inflate every small configuration's peak.

    .venv/bin/python bench/big_batch.py [--batches 256,2048,16384] [--micro 128] [--plain 256]
        [--dist-batch 2048] [--min-samples 2048] [--png bench/out/big_batch.png]
    # small smoke run
    .venv/bin/python bench/big_batch.py --batches 64,256 --micro 32 --plain 64 --dist-batch 128
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()


# ---------------------------------------------------------------------------------------------
# child: one configuration
# ---------------------------------------------------------------------------------------------
def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(args: argparse.Namespace) -> None:
    # lazy: child-only imports, so the parent stays small (see the module docstring on ru_maxrss)
    import torch
    import torch.distributed as dist

    from openalign.models.presets import get_preset
    from openalign.train.config import TrainConfig
    from openalign.train.distributed import barrier, init_distributed
    from openalign.train.loop import Trainer, build_model

    torch.set_num_threads(args.threads)
    info = init_distributed()
    micro = args.micro if args.mode == "cached" else None
    cfg = TrainConfig(preset=args.preset, batch_size=args.batch, micro_batch_size=micro, steps=100_000,
                      warmup_steps=10, seed=0)
    tr = Trainer(cfg, info, model=build_model(cfg, vocab_size=args.vocab))  # no tokenizer or shards

    local = args.batch // info.world_size
    size = get_preset(args.preset).image_size
    g = torch.Generator().manual_seed(1000 + info.rank)
    seq = args.seq_len
    lengths = torch.randint(max(2, seq // 3), seq + 1, (local,), generator=g)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    batch = {"pixel_values": torch.randint(0, 256, (local, 3, size, size), dtype=torch.uint8, generator=g),
             "input_ids": torch.randint(5, args.vocab, (local, seq), generator=g) * mask,
             "attention_mask": mask}
    pixels_mb = batch["pixel_values"].numel() / 2**20

    # warm-up on a small slice with the same micro-batch (kernels, optimizer state), not timed
    warm_n = min(local, 2 * micro) if micro else local
    tr.one_step({k: v[:warm_n] for k, v in batch.items()})
    base = rss_mb()
    times = []
    for _ in range(args.steps):
        barrier(info)
        t0 = time.perf_counter()
        m = tr.one_step(batch)
        barrier(info)
        times.append(time.perf_counter() - t0)
        if not math.isfinite(m["loss"]):
            raise RuntimeError(f"loss {m['loss']}")
    res = {"mode": args.mode, "batch": args.batch, "micro": micro, "world": info.world_size,
           "dim": get_preset(args.preset).dim, "threads": args.threads, "step_s": times, "peak_rss_mb": peak_rss_mb(), "base_rss_mb": base,
           "pixels_mb": pixels_mb, "loss": m["loss"]}
    if info.enabled:
        allres: list = [None] * info.world_size
        dist.all_gather_object(allres, res)
        res["peak_rss_mb"] = max(r["peak_rss_mb"] for r in allres)  # per process, the larger one
        res["base_rss_mb"] = max(r["base_rss_mb"] for r in allres)
        dist.destroy_process_group()
    if info.rank == 0:
        print("RESULT " + json.dumps(res), flush=True)


# ---------------------------------------------------------------------------------------------
# child: the loss alone at the largest batch: full logits, the library's tiles, a blockwise prototype
# ---------------------------------------------------------------------------------------------
def _make_blockwise():  # lazy torch import inside: called in the loss child only
    """A PROPOSAL (not used by the trainer): both directions of the loss in row blocks.

    ``openalign.losses.contrastive_loss`` materialises the (N, N) logits twice (one per
    direction) plus the scaled copy and the log-softmax autograd keeps for backward: at N=16,384
    that is several 1 GiB float32 matrices per step, the quadratic term the feature cache cannot
    hide. This version holds one (block, N) tile at a time: the forward computes row
    log-sum-exps (image->text) and an online column log-sum-exp (text->image) from the same
    tile; the backward recomputes each tile once and forms the gradient of BOTH directions from
    it (softmax - smoothed one-hot), so it needs 3 matmuls per tile instead of autograd's 6 plus
    far fewer full-size elementwise passes. Single process only here (no offset/gather).
    """
    import torch

    class _BlockwiseAlignLoss(torch.autograd.Function):
        @staticmethod
        def forward(ctx, img, txt, inv_t, eps: float, block: int):
            n, s = img.shape[0], float(inv_t)
            lse_i = torch.empty(n)
            col_m = torch.full((n,), -float("inf"))
            col_acc = torch.zeros(n)
            diag = torch.zeros((), dtype=torch.float64)
            for lo in range(0, n, block):
                z = (img[lo:lo + block] @ txt.t()).mul_(s)  # (b, N) logits, image rows x text columns
                lse_i[lo:lo + block] = torch.logsumexp(z, 1)
                new_m = torch.maximum(col_m, z.amax(0))
                col_acc = col_acc * torch.exp(col_m - new_m) + torch.exp(z - new_m).sum(0)  # online column logsumexp
                col_m = new_m
                diag += z[:, lo:lo + block].diagonal().sum().double()
            lse_t = col_m + col_acc.log()
            total = s * float(img.sum(0).double() @ txt.sum(0).double())  # sum of all logits
            off = (1 - eps) * diag + eps / n * total
            ctx.save_for_backward(img, txt, inv_t, lse_i, lse_t)
            ctx.eps, ctx.block = eps, block
            return ((lse_i.sum().double() - off) / n).float(), ((lse_t.sum().double() - off) / n).float()

        @staticmethod
        def backward(ctx, g1, g2):
            img, txt, inv_t, lse_i, lse_t = ctx.saved_tensors
            eps, block, n, s = ctx.eps, ctx.block, img.shape[0], float(inv_t)
            g1, g2 = float(g1) / n, float(g2) / n
            d_img, d_txt = torch.empty_like(img), torch.zeros_like(txt)
            d_s = torch.zeros((), dtype=torch.float64)
            for lo in range(0, n, block):
                raw = img[lo:lo + block] @ txt.t()  # (b, N)
                z = raw * s
                G = torch.exp(z - lse_i[lo:lo + block, None]).mul_(g1)  # i2t softmax rows
                G.add_(torch.exp(z.sub_(lse_t[None, :])), alpha=g2)  # t2i softmax, transposed
                G.sub_((g1 + g2) * eps / n)
                G[:, lo:lo + block].diagonal().sub_((g1 + g2) * (1 - eps))
                d_s += (G * raw).sum().double()
                G.mul_(s)
                d_img[lo:lo + block] = G @ txt
                d_txt += G.t() @ img[lo:lo + block]
            return d_img, d_txt, d_s.float().reshape(inv_t.shape), None, None


    def blockwise_loss(img, txt, temperature, label_smoothing=0.1, block=1024):
        inv_t = 1.0 / temperature.float()
        li, lt = _BlockwiseAlignLoss.apply(img.float(), txt.float(), inv_t, label_smoothing, block)
        return {"loss": li + lt, "loss_i2t": li, "loss_t2i": lt}

    return blockwise_loss


def loss_worker(args: argparse.Namespace) -> None:
    # lazy: child-only imports, so the parent stays small (see the module docstring on ru_maxrss)
    import torch
    import torch.nn.functional as F

    # not openalign.models.presets (the dim comes as --dim): transformers would add ~150 MB to the peak
    from openalign.losses import contrastive_loss

    torch.set_num_threads(args.threads)

    def full(a, b, t):  # the whole (N, N) logits at once, as before the tiling
        return contrastive_loss(a, b, t, max_logits=1 << 62)

    def tiled(a, b, t):  # the library's default: row tiles recomputed in backward above 2^24 logits
        return contrastive_loss(a, b, t)

    global_contrastive_loss = full
    fn = {"current": full, "tiled": tiled, "blockwise": _make_blockwise()}[args.mode]
    g = torch.Generator().manual_seed(0)
    n, d = args.batch, args.dim
    img0 = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    txt0 = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    # correctness against the current loss on a small slice (loss and all gradients)
    k = min(n, 512)
    ref = []
    for f in (global_contrastive_loss, fn):
        a, b = img0[:k].clone().requires_grad_(True), txt0[:k].clone().requires_grad_(True)
        t = torch.nn.Parameter(torch.tensor(0.5))
        out = f(a, b, t)
        (0.7 * out["loss_i2t"] + 1.3 * out["loss_t2i"]).backward()
        ref.append([out["loss_i2t"].detach(), out["loss_t2i"].detach(), a.grad, b.grad, t.grad])
    max_err = max(float((x - y).abs().max()) for x, y in zip(*ref))
    base = rss_mb()
    a, b = img0.clone().requires_grad_(True), txt0.clone().requires_grad_(True)
    t = torch.nn.Parameter(torch.tensor(1.0))
    t0 = time.perf_counter()
    out = fn(a, b, t)
    out["loss"].backward()
    res = {"mode": args.mode, "batch": n, "dim": d, "threads": args.threads, "step_s": [time.perf_counter() - t0],
           "peak_rss_mb": peak_rss_mb(), "base_rss_mb": base, "max_abs_diff_vs_current": max_err,
           "loss": float(out["loss"])}
    print("RESULT " + json.dumps(res), flush=True)


# ---------------------------------------------------------------------------------------------
# parent: launch, collect, print
# ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_child(mode: str, batch: int, args: argparse.Namespace, nproc: int = 1, threads: int | None = None) -> dict:
    steps = max(1, math.ceil(args.min_samples / batch))
    threads = threads or args.threads
    flags = ["--worker", "--mode", mode, "--batch", str(batch), "--micro", str(args.micro), "--preset", args.preset,
             "--steps", str(steps), "--threads", str(threads), "--vocab", str(args.vocab), "--seq-len", str(args.seq_len)]
    env = dict(os.environ)
    if nproc == 1:
        cmd = [sys.executable, str(HERE), *flags]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), str(HERE), *flags]
        env["OMP_NUM_THREADS"] = str(threads)
    label = f"{mode} batch {batch}" + (f" micro {args.micro}" if mode == "cached" else "") + f", {nproc} proc x {threads} thr"
    print(f"  running {label} ({steps} timed step{'s' if steps > 1 else ''}) ...", flush=True)
    return _collect(cmd, env, label, args.child_timeout)


def run_loss_child(mode: str, batch: int, dim: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(HERE), "--loss-worker", "--mode", mode, "--batch", str(batch), "--dim", str(dim),
           "--threads", str(args.threads)]
    label = f"loss alone ({mode}) batch {batch}"
    print(f"  running {label} ...", flush=True)
    return _collect(cmd, dict(os.environ), label, args.child_timeout)


def _collect(cmd: list[str], env: dict, label: str, timeout: float) -> dict:
    t0 = time.perf_counter()
    # own process group, so that a timeout also ends torchrun's worker processes
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        print(f"  {label}: over --child-timeout {timeout:.0f} s, skipped", flush=True)
        return {}
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(out[-4000:] + err[-4000:])
        raise SystemExit(f"{label}: child failed (exit {proc.returncode})")
    res = json.loads(lines[-1][len("RESULT "):])
    res["wall_s"] = time.perf_counter() - t0
    res["label"] = label
    return res


def print_loss_table(rows: list[dict]) -> None:
    hdr = f"{'loss alone (fwd+bwd)':<28} {'batch':>6} {'dim':>4} {'seconds':>8} {'peak RSS MB':>11} {'max |diff| vs current':>21}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        name = {"current": "full N x N logits", "tiled": "tiled (library default)",
                "blockwise": "blockwise (prototype)"}[r["mode"]]
        print(f"{name:<28} {r['batch']:>6} {r['dim']:>4} {r['step_s'][0]:>8.2f} {r['peak_rss_mb']:>11.0f} "
              f"{r['max_abs_diff_vs_current']:>21.2e}")


def s_per_step(r: dict) -> float:
    return statistics.median(r["step_s"])


def print_memory_table(rows: list[dict], plain: dict) -> None:
    base_sps = s_per_step(plain) / plain["batch"]
    hdr = (f"{'config':<22} {'batch':>6} {'micro':>5} {'s/step':>8} {'ms/sample':>9} {'vs plain':>8} "
           f"{'peak RSS MB':>11} {'before step':>11} {'pixels MB':>9}")
    print(hdr)
    print("-" * len(hdr))
    for r in [plain, *rows]:
        sps = s_per_step(r) / r["batch"]
        name = "plain (no micro)" if r["mode"] == "plain" else "feature-cached"
        print(f"{name:<22} {r['batch']:>6} {r['micro'] or '-':>5} {s_per_step(r):>8.2f} {sps * 1e3:>9.3f} "
              f"{sps / base_sps:>7.2f}x {r['peak_rss_mb']:>11.0f} {r['base_rss_mb']:>11.0f} {r['pixels_mb']:>9.1f}")


def print_dist_table(rows: list[dict]) -> None:
    ref = rows[0]
    hdr = f"{'processes x threads':<20} {'batch':>6} {'micro':>5} {'s/step':>8} {'samples/s':>9} {'vs 1 proc':>9} {'peak RSS MB/proc':>16}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        sps = r["batch"] / s_per_step(r)
        print(f"{str(r['world']) + ' x ' + str(r['threads']):<20} {r['batch']:>6} {r['micro'] or '-':>5} "
              f"{s_per_step(r):>8.2f} {sps:>9.1f} {sps / (ref['batch'] / s_per_step(ref)):>8.2f}x {r['peak_rss_mb']:>16.0f}")


def plot(rows: list[dict], plain: dict, dist_rows: list[dict], path: str) -> None:
    # lazy: only with --png, and the Agg backend must be chosen before pyplot is imported
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3 if dist_rows else 2, figsize=(15 if dist_rows else 10, 3.8))
    bs = [r["batch"] for r in rows]
    ax = axes[0]
    ax.plot(bs, [r["peak_rss_mb"] for r in rows], "o-", label="feature-cached: peak RSS")
    ax.plot(bs, [r["pixels_mb"] for r in rows], "s--", label="uint8 pixel batch")
    ax.axhline(plain["peak_rss_mb"], color="gray", ls=":", label=f"plain {plain['batch']}: peak RSS")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("global batch")
    ax.set_ylabel("MB")
    ax.set_title(f"memory (micro-batch {rows[0]['micro']})")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(bs, [s_per_step(r) / r["batch"] * 1e3 for r in rows], "o-", label="feature-cached")
    ax.axhline(s_per_step(plain) / plain["batch"] * 1e3, color="gray", ls=":", label=f"plain {plain['batch']}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("global batch")
    ax.set_ylabel("ms per sample (one full step)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title("cost per sample")
    if dist_rows:
        ax = axes[2]
        ax.bar([f"{r['world']} proc x {r['threads']} thr" for r in dist_rows],
               [r["batch"] / s_per_step(r) for r in dist_rows], color="#1f77b4")
        ax.set_ylabel("samples/s")
        ax.set_title(f"batch {dist_rows[0]['batch']}, gloo on one machine")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"figure: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batches", default="256,2048,16384", help="global batches for the feature-cached step")
    ap.add_argument("--micro", type=int, default=128, help="micro-batch size (fixed)")
    ap.add_argument("--plain", type=int, default=256, help="batch of the plain (no micro-batching) baseline")
    ap.add_argument("--dist-batch", type=int, default=2048, help="global batch for 2 vs 1 processes; 0 to skip")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--min-samples", type=int, default=2048,
                    help="timed steps per config = max(1, ceil(min_samples / batch))")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per single process")
    ap.add_argument("--no-two-threads", action="store_true", help="skip the 1 process x 2 threads row")
    ap.add_argument("--seq-len", type=int, default=24)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--png", default="bench/out/big_batch.png", help="'' to skip the figure")
    ap.add_argument("--no-loss-compare", action="store_true",
                    help="skip timing the loss alone (current vs the proposed blockwise loss) at the largest batch")
    ap.add_argument("--child-timeout", type=float, default=600, help="seconds before a configuration is skipped")
    # child-only flags
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--loss-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dim", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=["plain", "cached", "current", "tiled", "blockwise"], help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.loss_worker:
        return loss_worker(args)

    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    print(f"preset {args.preset}, micro-batch {args.micro}, {os.cpu_count()} CPUs, threads {args.threads}", flush=True)
    t_all = time.perf_counter()
    plain = run_child("plain", args.plain, args)
    rows = [run_child("cached", b, args) for b in batches]
    dist_rows = []
    if args.dist_batch:
        dist_rows.append(run_child("cached", args.dist_batch, args, nproc=1, threads=1))
        if not args.no_two_threads:
            dist_rows.append(run_child("cached", args.dist_batch, args, nproc=1, threads=2))
        dist_rows.append(run_child("cached", args.dist_batch, args, nproc=args.nproc, threads=1))
    loss_rows = []
    if not args.no_loss_compare:
        dim = next(r["dim"] for r in [plain, *rows] if r)  # the embedding width, as a training child reported it
        loss_rows = [r for r in (run_loss_child(m, max(batches), dim, args) for m in ("current", "tiled", "blockwise")) if r]
    rows = [r for r in rows if r]
    dist_rows = [r for r in dist_rows if r]
    print()
    print_memory_table(rows, plain)
    big = rows[-1]
    print(f"\ncost per sample at {big['batch']} vs plain {plain['batch']}: "
          f"{(s_per_step(big) / big['batch']) / (s_per_step(plain) / plain['batch']):.2f}x; "
          f"peak RSS {big['peak_rss_mb']:.0f} MB vs {rows[0]['peak_rss_mb']:.0f} MB at batch {rows[0]['batch']} "
          f"(+{big['peak_rss_mb'] - rows[0]['peak_rss_mb']:.0f} MB, of which uint8 pixels "
          f"+{big['pixels_mb'] - rows[0]['pixels_mb']:.0f} MB)")
    if loss_rows:
        print()
        print_loss_table(loss_rows)
    if dist_rows:
        print()
        print_dist_table(dist_rows)
    print(f"\ntotal wall time {time.perf_counter() - t_all:.0f} s")
    if args.png:
        plot(rows, plain, dist_rows, args.png)


if __name__ == "__main__":
    main()
