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

from openalign.cli import main as cli_main
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


def _write_unusable_shards(root: Path) -> str:
    """Two shards whose captions sit under another extension (.caption), so no sample is usable."""
    import io
    import tarfile

    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for s in range(2):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for i in range(6):
                buf = io.BytesIO()
                Image.new("RGB", (40, 40), (i * 30, 0, 0)).save(buf, format="JPEG")
                for name, data in ((f"{s}{i:04d}.jpg", buf.getvalue()), (f"{s}{i:04d}.caption", b"a red square")):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(root / "{00000..00001}.tar")


def test_shards_without_a_usable_sample_stop_with_one_line(tiny_data, tmp_path, capsys):
    """No usable sample in a whole pass (captions under another extension): stop, naming the shards and
    the skip counts, instead of looping forever."""
    shards = _write_unusable_shards(tmp_path / "bad")
    rc = cli_main.main(["train", "--shards", shards, "--tokenizer", tiny_data["tokenizer"], "--out",
                        str(tmp_path / "run"), "--steps", "2", "--batch-size", "4", "--workers", "1",
                        "--preset", "tiny"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "00000.tar" in err and "missing_caption" in err and "no usable sample" in err


def test_missing_shard_pattern_is_one_line(tiny_data, tmp_path, capsys):
    rc = cli_main.main(["train", "--shards", str(tmp_path / "nope/{00000..00003}.tar"), "--tokenizer",
                        tiny_data["tokenizer"], "--out", str(tmp_path / "run"), "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "nope/00000.tar" in err and "not found" in err


@pytest.mark.parametrize("change", [("--seed", "5"), ("--workers", "1"), ("--shuffle-buffer", "7"),
                                   ("--batch-size", "16")])
def test_resume_with_other_data_settings_is_refused(tiny_data, tmp_path, capsys, change):
    """Resuming with another seed/workers/shuffle buffer/batch would misalign the saved data positions."""
    base = ["train", "--shards", tiny_data["shards"], "--tokenizer", tiny_data["tokenizer"], "--out",
            str(tmp_path / "run"), "--batch-size", "8", "--workers", "2", "--ckpt-every", "1", "--preset", "tiny"]
    assert cli_main.main(base + ["--steps", "1"]) == 0
    capsys.readouterr()
    args = base + ["--steps", "2", "--resume"]
    i = args.index(change[0]) if change[0] in args else None
    if i is not None:
        args[i + 1] = change[1]
    else:
        args += list(change)
    rc = cli_main.main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert change[0].lstrip("-").replace("-", "_") in err and "config.json" in err


def test_torn_metrics_line_does_not_stop_a_resume(tiny_data, tmp_path):
    out = tmp_path / "run"
    train(_cfg(tiny_data, out, steps=2, ckpt_every=1))
    metrics = out / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 3, "loss": 1.2')  # a crash mid-write
    res = train(_cfg(tiny_data, out, steps=3, ckpt_every=1), resume=True)
    assert res.step == 3
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows][-1] == 3


@pytest.mark.parametrize("damage", ["truncated", "pickle_only"])
def test_bad_model_folder_is_one_line_naming_the_file(tiny_data, tmp_path, capsys, damage):
    """A corrupt model.safetensors, or a folder holding only a pickle (never unpickled), ends in one line
    that names the file and the fix, exit 2: no traceback."""
    from openalign.models.dual_encoder import DualEncoder
    from openalign.models.tokenizer import load_tokenizer

    model_dir = tmp_path / "model"
    DualEncoder.from_preset("tiny", vocab_size=len(load_tokenizer(tiny_data["tokenizer"])), seed=0).save_pretrained(
        model_dir)
    weights = model_dir / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:5000])
        named = "model.safetensors"
    else:
        weights.rename(model_dir / "pytorch_model.bin")
        named = "pytorch_model.bin"
    capsys.readouterr()  # drop the set-up's own output
    rc = cli_main.main(["train", "--shards", tiny_data["shards"], "--tokenizer", tiny_data["tokenizer"],
                        "--out", str(tmp_path / "run"), "--steps", "1", "--init", str(model_dir)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert named in err and ("corrupt" in err or "pickle" in err)


def test_unknown_preset_is_one_line(tiny_data, tmp_path, capsys):
    rc = cli_main.main(["train", "--shards", tiny_data["shards"], "--tokenizer", tiny_data["tokenizer"],
                        "--out", str(tmp_path / "run"), "--steps", "1", "--preset", "b9-huge"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "b9-huge" in err and "tiny" in err, err
