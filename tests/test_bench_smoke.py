"""Smoke test of ``bench/gpu_step.py`` at its CPU size, and a reference check of its FLOP count.

No timing assertions: only that the script runs and reports positive figures.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
GPU_STEP = ROOT / "bench" / "gpu_step.py"


def _load_gpu_step():
    if "bench_gpu_step" in sys.modules:
        return sys.modules["bench_gpu_step"]
    spec = importlib.util.spec_from_file_location("bench_gpu_step", GPU_STEP)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    return mod


def test_gpu_step_runs_at_cpu_size(tmp_path):
    out = tmp_path / "gpu_step.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU size even on a GPU box
    proc = subprocess.run([sys.executable, str(GPU_STEP), "--steps", "1", "--warmup", "1", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["preset"] == "tiny" and res["device"] == "cpu"
    assert res["flops_per_sample"] > 0
    names = [c["name"] for c in res["configs"]]
    assert names == ["fp32", "bf16", "large-batch"]
    for c in res["configs"]:
        assert c["status"] == "ok", c
        assert c["samples_per_s"] > 0 and c["flops_per_sample"] > 0, c
        assert c["mfu"] is None  # n/a on CPU
    large = res["configs"][-1]
    assert large["micro"] < large["global_batch"]  # feature-cached micro-batches
    assert "MFU: n/a (CPU)" in proc.stdout


def test_flop_count_of_grouped_conv_backward():
    """The corrected formula: a depthwise conv's backward costs twice its forward (input + weight grads)."""
    gpu_step = _load_gpu_step()
    conv = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    forward = 2 * 2 * 10 * 10 * 8 * 3 * 3  # 2 FLOPs per multiply-add, batch 2, 10 x 10 outputs, 8 channels, 3 x 3
    mapping = {torch.ops.aten.convolution_backward: gpu_step._conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as fc:
        conv(x).sum().backward()
    counts = {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}
    assert counts["aten.convolution"] == forward
    assert counts["aten.convolution_backward"] == 2 * forward
    # an ungrouped conv keeps torch's own count
    dense = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False)
    y = torch.randn(2, 4, 10, 10, requires_grad=True)
    with FlopCounterMode(display=False) as ref:
        dense(y).sum().backward()
    with FlopCounterMode(display=False, custom_mapping=mapping) as ours:
        dense(y).sum().backward()
    assert ours.get_total_flops() == ref.get_total_flops()


def test_peak_table_lookup():
    gpu_step = _load_gpu_step()
    assert gpu_step.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_step.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_step.peak_tflops("NVIDIA H200") == 989.0
    assert gpu_step.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_step.peak_tflops("NVIDIA L4") == 121.0
    assert gpu_step.peak_tflops("Some Future GPU") is None
