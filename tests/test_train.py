"""Trainer: CLI smoke run, plain-transformers output, skipped-sample counts, exact resume, bad checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from openalign.train.config import TrainConfig
from openalign.train.loop import train

from conftest import write_shards


def _cfg(data, out, **kw):
    base = dict(shards=data["shards"], tokenizer=data["tokenizer"], out=str(out), steps=4, batch_size=8,
                lr=1e-2, warmup_steps=1, workers=1, log_every=1, ckpt_every=2, shuffle_buffer=8)
    base.update(kw)
    return TrainConfig(**base)


def _losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_cli_train_writes_run_and_loadable_model(tiny_data, tmp_path):
    from transformers import AlignModel, AlignProcessor

    from openalign.cli.main import main

    out = tmp_path / "run"
    rc = main(["train", "--shards", tiny_data["shards"], "--tokenizer", tiny_data["tokenizer"], "--out", str(out),
               "--steps", "3", "--batch-size", "8", "--micro-batch-size", "4", "--warmup-steps", "1",
               "--workers", "0", "--log-every", "1", "--set", "ckpt_every=2"])
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["micro_batch_size"] == 4 and cfg["train"]["optimizer"] == "lamb"
    assert len(_losses(out)) == 3 and list((out / "tensorboard").iterdir())
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]
    AlignModel.from_pretrained(str(out / "model"))
    AlignProcessor.from_pretrained(str(out / "model"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["samples_seen"] == 24


def test_bad_samples_are_skipped_and_counted(tmp_path, tiny_data):
    shards = write_shards(tmp_path / "bad", 40, per_shard=20, corrupt=3, empty=2)
    # a truncated shard: cut the second tar in half
    second = tmp_path / "bad" / "00001.tar"
    second.write_bytes(second.read_bytes()[: second.stat().st_size // 2])
    res = train(_cfg(tiny_data, tmp_path / "run", shards=shards, steps=2, ckpt_every=0))
    assert res.skipped["corrupt_image"] >= 3 and res.skipped["empty_caption"] >= 2
    assert res.skipped["broken_shard_errors"] >= 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped"]["corrupt_image"] >= 3


def test_temperature_is_learned_and_positive(tiny_data, tmp_path):
    res = train(_cfg(tiny_data, tmp_path / "run", steps=3, ckpt_every=0, temperature_lr=0.5, min_temperature=0.05))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["temperature"] != 1.0 and all(r["temperature"] >= 0.05 for r in rows)
    fixed = train(_cfg(tiny_data, tmp_path / "fixed", steps=2, ckpt_every=0, fixed_temperature=1 / 64))
    rows = [json.loads(x) for x in (tmp_path / "fixed" / "metrics.jsonl").read_text().splitlines()]
    assert all(abs(r["temperature"] - 1 / 64) < 1e-7 for r in rows)
    assert res.step == 3 and fixed.step == 2


def _train_cmd(data, out, steps):
    return [sys.executable, "-m", "openalign.cli.main", "train", "--shards", data["shards"], "--tokenizer",
            data["tokenizer"], "--out", str(out), "--steps", str(steps), "--batch-size", "8", "--micro-batch-size", "4",
            "--warmup-steps", "1", "--lr", "1e-2", "--workers", "2", "--log-every", "1", "--ckpt-every", "2",
            "--shuffle-buffer", "8"]


def test_sigkill_and_resume_gives_the_same_losses(tiny_data, tmp_path):
    steps = 7
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(tiny_data, ref, steps), check=True, capture_output=True)
    run = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(tiny_data, run, steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once step 5 is logged: after the step-4 checkpoint
        m = run / "metrics.jsonl"
        if m.is_file() and len(m.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "model").exists()
    subprocess.run(_train_cmd(tiny_data, run, steps) + ["--resume"], check=True, capture_output=True)
    assert _losses(run) == pytest.approx(_losses(ref), abs=1e-6)
    assert len(_losses(run)) == steps


def test_truncated_checkpoint_is_refused_and_previous_used(tiny_data, tmp_path, caplog):
    from openalign.train import checkpoint as ckpt

    run = tmp_path / "run"
    train(_cfg(tiny_data, run, steps=4, ckpt_every=2))
    last = run / "checkpoints" / "step-00000004" / "model.safetensors"
    last.write_bytes(last.read_bytes()[:100])
    with caplog.at_level("ERROR"):
        found = ckpt.find_latest_valid(run / "checkpoints")
    assert found.name == "step-00000002"
    assert "checksum mismatch" in caplog.text and "step-00000004" in caplog.text
    with pytest.raises(ckpt.CheckpointError, match="truncated or corrupted"):
        ckpt.load_checkpoint(run / "checkpoints" / "step-00000004")
    # a half-written checkpoint folder (no meta.json) is never picked up either
    (run / "checkpoints" / "step-00000009").mkdir()
    assert ckpt.find_latest_valid(run / "checkpoints").name == "step-00000002"


def test_bad_inputs_fail_with_one_line(tmp_path, tiny_data, capsys):
    from openalign.cli.main import main

    assert main(["train", "--tokenizer", tiny_data["tokenizer"], "--out", str(tmp_path)]) == 2
    assert "--shards" in capsys.readouterr().err
    assert main(["train", "--shards", tiny_data["shards"], "--tokenizer", tiny_data["tokenizer"],
                 "--batch-size", "10", "--micro-batch-size", "4", "--out", str(tmp_path)]) == 2
    assert "micro_batch_size" in capsys.readouterr().err
    assert main(["train", "--shards", tiny_data["shards"], "--tokenizer", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "tokenizer" in capsys.readouterr().err


def test_max_minutes_stops_early_and_saves(tiny_data, tmp_path):
    res = train(_cfg(tiny_data, tmp_path / "run", steps=50, max_minutes=1e-4, ckpt_every=0))
    assert 0 <= res.step < 50  # the budget ran out before (or right after) the first step
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == res.step
