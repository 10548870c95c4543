"""Options for big models change speed and memory, not the mathematics."""

import pytest
import torch

from openalign.models import DualEncoder, get_preset
from openalign.train.config import TrainConfig
from openalign.train.loop import build_model
from openalign.train.step import StepSpec, accumulate_grads

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from dist_step_worker import global_batch  # noqa: E402


def _grads(model, micro=None, bf16=False):
    model.train()
    out = accumulate_grads(model, global_batch(), step=0, spec=StepSpec(seed=1, micro_batch_size=micro, bf16=bf16))
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    stats = {n: b.clone() for n, b in model.named_buffers() if "running" in n}
    return out["loss"], grads, stats


def _model(**kw):
    cfg = TrainConfig(preset="tiny", **kw)
    return build_model(cfg, vocab_size=200)


def _close(a, b, rel=1e-4):
    la, ga, sa = a
    lb, gb, sb = b
    assert torch.allclose(la, lb, rtol=1e-5)
    floor = 1e-2 * max(g.abs().max().item() for g in gb.values())  # some gradients are ~0 by construction
    for k in gb:
        assert (ga[k] - gb[k]).abs().max() <= rel * max(gb[k].abs().max().item(), floor) + 1e-9, k
    for k in sb:
        assert torch.allclose(sa[k], sb[k], atol=1e-6), k


@pytest.mark.parametrize("micro", [None, 8])
def test_gradient_checkpointing_same_gradients_and_bn_stats(micro):
    _close(_grads(_model(grad_checkpointing=True), micro), _grads(_model(), micro))


def test_channels_last_same_gradients():
    _close(_grads(_model(channels_last=True)), _grads(_model()), rel=1e-3)


def test_bf16_close_to_fp32():
    loss_bf, _, _ = _grads(_model(), bf16=True)
    loss_fp, _, _ = _grads(_model())
    assert abs(loss_bf.item() - loss_fp.item()) < 0.05 * loss_fp.item()


def test_embed_dim_option_builds_projection():
    m = _model(embed_dim=64)
    assert m.image_projection is not None and m.embed_dim == 64
    assert m.align.text_projection.out_features == 64


def test_fine_tune_from_init_dir(tmp_path, tiny_data):
    from openalign.models.tokenizer import load_tokenizer
    from openalign.train.loop import train

    tok = load_tokenizer(tiny_data["tokenizer"])
    src = DualEncoder.from_preset(get_preset("tiny"), vocab_size=len(tok), seed=3)
    src.save_pretrained(tmp_path / "init", tokenizer=tok)
    cfg = TrainConfig(shards=tiny_data["shards"], tokenizer=tiny_data["tokenizer"], out=str(tmp_path / "ft"),
                      init=str(tmp_path / "init"), steps=1, batch_size=8, lr=1e-5, warmup_steps=0, workers=0,
                      ckpt_every=0, log_every=1)
    res = train(cfg)
    tuned = DualEncoder.from_pretrained(res.model_dir)
    a = dict(src.named_parameters())["align.text_projection.weight"]
    b = dict(tuned.named_parameters())["align.text_projection.weight"]
    assert torch.allclose(a, b, atol=1e-3) and not torch.equal(a, b)  # started from init, moved a little


def test_default_threads_leave_a_core_for_workers_and_neighbours(monkeypatch):
    """torch's one thread per core stalls when anything else holds a core: the default is this process's
    share of the usable cores minus one, and at least one."""
    import os

    from openalign.train.loop import default_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert default_threads() == 15
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_threads() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert default_threads() == 1


def test_text_init_std_option_reaches_the_text_tower():
    from openalign.train.config import TrainConfig
    from openalign.train.loop import build_model

    for std, want in ((None, 0.02), (0.1, 0.1)):
        m = build_model(TrainConfig(preset="tiny", text_init_std=std, seed=0), vocab_size=300)
        w = m.align.text_model.encoder.layer[0].output.dense.weight
        assert abs(float(w.std()) - want) < 0.1 * want
        assert m.align.config.text_config.initializer_range == want
