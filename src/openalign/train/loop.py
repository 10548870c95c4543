"""The training driver: data -> steps -> logs -> checkpoints -> final model.

Works for one process and under torchrun (each process reads its own part of the shards and
computes its rows of the global-batch loss). ``--resume`` continues exactly from the newest
valid checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from openalign.config import to_dict, write_json_atomic
from openalign.media.shards import expand_urls
from openalign.train.data import ShardStream, make_loader
from openalign.models.preprocess import transform_for
from openalign.errors import UserError
from openalign.models.dual_encoder import DualEncoder
from openalign.models.presets import get_preset
from openalign.models.tokenizer import load_tokenizer
from openalign.train import checkpoint as ckpt
from openalign.train.config import TrainConfig
from openalign.train.distributed import DistInfo, all_reduce_mean, all_reduce_mean_grads, barrier, init_distributed
from openalign.train.optim import build_optimizer, build_schedule
from openalign.train.step import StepSpec, train_step

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path
    step: int
    losses: list[float] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    samples_per_s: float = 0.0

    @property
    def bad_samples(self) -> dict[str, int]:
        """Skip counts by reason (corrupt image, empty caption, broken shard...), without the read count."""
        return _bad_samples(self.skipped)


def _bad_samples(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if k != "samples_read" and v}


def build_model(cfg: TrainConfig, vocab_size: int) -> DualEncoder:
    if cfg.init:
        model = DualEncoder.from_pretrained(cfg.init)
    else:
        preset = get_preset(cfg.preset).with_(embed_dim=cfg.embed_dim, temperature_init=cfg.temperature_init)
        model = DualEncoder.from_preset(preset, vocab_size=vocab_size, seed=cfg.seed)
    if cfg.fixed_temperature is not None:
        model.temperature.data.fill_(cfg.fixed_temperature)
        model.temperature.requires_grad_(False)
    if cfg.grad_checkpointing:
        model.align.text_model.gradient_checkpointing_enable()
        _checkpoint_vision_blocks(model)
    if cfg.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.channels_last:
        model.align.vision_model.to(memory_format=torch.channels_last)
    return model


def _checkpoint_vision_blocks(model: DualEncoder) -> None:
    """Recompute each EfficientNet block in backward (transformers supports it only for BERT)."""
    from torch.utils.checkpoint import checkpoint

    for block in model.align.vision_model.encoder.blocks:
        fwd = block.forward
        block.forward = lambda h, _f=fwd: checkpoint(_f, h, use_reentrant=False) if torch.is_grad_enabled() else _f(h)


def _check_inputs(cfg: TrainConfig, info: DistInfo) -> tuple[int, int]:
    if not cfg.shards:
        raise UserError("train: no shards given; pass --shards 'DIR/{00000..00009}.tar' (img2dataset layout)")
    if not cfg.tokenizer:
        raise UserError("train: no tokenizer given; pass --tokenizer DIR (from `openalign tokenizer train`)")
    if cfg.batch_size % info.world_size:
        raise UserError(f"batch_size={cfg.batch_size} is not divisible by {info.world_size} processes")
    local = cfg.batch_size // info.world_size
    micro = cfg.micro_batch_size or local
    if local % micro:
        raise UserError(f"per-process batch {local} is not a multiple of micro_batch_size={micro}")
    return local, micro


class Trainer:
    def __init__(self, cfg: TrainConfig, info: DistInfo | None = None):
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.info = info or init_distributed()
        self.local_batch, self.micro = _check_inputs(cfg, self.info)
        self.run_dir = Path(cfg.out)
        self.tokenizer = load_tokenizer(cfg.tokenizer, max_length=get_preset(cfg.preset).max_text_len)
        self.model = build_model(cfg, vocab_size=len(self.tokenizer)).to(self.info.device)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.temperature_lr)
        self.scheduler = build_schedule(self.optimizer, cfg.warmup_steps, cfg.steps)
        self.step = 0
        self.elapsed = 0.0
        self.positions: dict[int, int] = {}  # data reader -> raw position consumed
        self.batches_seen = 0
        self.skipped: Counter = Counter()
        self.spec = StepSpec(seed=cfg.seed, micro_batch_size=self.micro, label_smoothing=cfg.label_smoothing,
                             negatives_fraction=cfg.negatives_fraction, bf16=cfg.bf16, rank=self.info.rank,
                             device=self.info.device)
        self._fwd = torch.compile(self.model) if cfg.compile else self.model
        self._writer = None

    # -- state ---------------------------------------------------------------------------------
    def resume(self) -> bool:
        path = ckpt.find_latest_valid(self.run_dir / "checkpoints")
        if path is None:
            log.info("no valid checkpoint in %s: starting from scratch", self.run_dir / "checkpoints")
            return False
        state = ckpt.load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        tr = state["trainer"]
        self.elapsed, self.batches_seen = tr["elapsed"], tr["batches_seen"]
        self.skipped = Counter(tr["skipped"])
        if len(state["ranks"]) != self.info.world_size:
            raise UserError(f"{path}: saved by {len(state['ranks'])} processes, resumed with "
                            f"{self.info.world_size}; resume with the same number of processes")
        mine = state["ranks"][self.info.rank]
        self.positions = {int(k): v for k, v in mine["data"]["positions"].items()}
        ckpt.set_rng_state(mine["rng_tensors"], mine["rng"])
        if self.info.is_main:
            _truncate_metrics(self.run_dir / "metrics.jsonl", self.step)
        log.info("resumed from %s (step %d)", path, self.step)
        return True

    def save(self) -> None:
        rng_t, rng_m = ckpt.rng_state()
        mine = {"rng_tensors": rng_t, "rng_meta": rng_m,
                "data": {"positions": {str(k): v for k, v in self.positions.items()}}}
        ranks = _gather_objects(mine, self.info)
        if self.info.is_main:
            trainer_state = {"elapsed": self.elapsed, "batches_seen": self.batches_seen, "skipped": dict(self.skipped)}
            ckpt.save_checkpoint(self.run_dir / "checkpoints", self.step, self.model, self.optimizer, self.scheduler,
                                 trainer_state, ranks, keep=self.cfg.keep_checkpoints)
        barrier(self.info)

    # -- data ----------------------------------------------------------------------------------
    def loader(self):
        preset = self.model.preset or get_preset(self.cfg.preset)
        stream = ShardStream(
            urls=expand_urls(self.cfg.shards), batch_size=self.local_batch,
            transform=transform_for(preset, train=True, uint8=True), tokenizer=self.tokenizer,
            max_text_len=preset.max_text_len, seed=self.cfg.seed, rank=self.info.rank,
            world_size=self.info.world_size, num_workers=self.cfg.workers, shuffle_buffer=self.cfg.shuffle_buffer,
            start_positions=dict(self.positions),
            worker_offset=self.batches_seen % max(1, self.cfg.workers),
        )
        return make_loader(stream)

    # -- loop ----------------------------------------------------------------------------------
    def one_step(self, batch: dict) -> dict[str, float]:
        out = train_step(self._fwd, batch, self.step, self.spec)
        all_reduce_mean_grads(self.params, self.info.world_size)
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip or math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.model.temperature.requires_grad:
            with torch.no_grad():
                self.model.temperature.clamp_(min=self.cfg.min_temperature)
        loss = all_reduce_mean(out["loss"], self.info.world_size)
        return {"loss": float(loss), "loss_i2t": float(out["loss_i2t"]), "loss_t2i": float(out["loss_t2i"]),
                "temperature": self.model.temperature.item(), "lr": self.scheduler.get_last_lr()[0],
                "grad_norm": float(gnorm)}

    def run(self) -> TrainResult:
        from tqdm.auto import tqdm

        cfg, info = self.cfg, self.info
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.run_dir / "config.json", {"train": to_dict(cfg), "world_size": info.world_size,
                                                            "model_preset": asdict(self.model.preset) if self.model.preset else None})
        losses: list[float] = []
        deadline = time.monotonic() + cfg.max_minutes * 60 if cfg.max_minutes else math.inf
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not info.is_main, desc="train", dynamic_ncols=True)
        t_window, n_window = time.monotonic(), 0
        last_ckpt = self.step
        it = iter(self.loader()) if self.step < cfg.steps else iter(())
        while self.step < cfg.steps and time.monotonic() < deadline:
            t0 = time.monotonic()
            batch = next(it)
            self._account(batch.pop("state"))
            metrics = self.one_step(batch)
            self.step += 1
            self.elapsed += time.monotonic() - t0
            losses.append(metrics["loss"])
            n_window += cfg.batch_size
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                metrics["samples_per_s"] = n_window / max(1e-9, time.monotonic() - t_window)
                t_window, n_window = time.monotonic(), 0
                self._log(metrics)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", T=f"{metrics['temperature']:.4f}",
                                sps=f"{metrics['samples_per_s']:.0f}")
            bar.update(1)
            if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                self.save()
                last_ckpt = self.step
        bar.close()
        if last_ckpt != self.step:
            self.save()
        return self.finish(losses)

    def _account(self, state: dict) -> None:
        self.positions[state["reader"]] = state["position"]
        self.skipped.update(state["counts"])
        self.batches_seen += 1

    def _log(self, metrics: dict[str, float]) -> None:
        if not self.info.is_main:
            return
        row = {"step": self.step, **metrics}
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        for k, v in metrics.items():
            self._writer.add_scalar(f"train/{k}", v, self.step)

    def finish(self, losses: list[float]) -> TrainResult:
        skipped = _sum_counters(self.skipped, self.info)
        sps = self.cfg.batch_size * self.step / max(1e-9, self.elapsed)
        model_dir = self.run_dir / "model"
        if self.info.is_main:
            if self._writer is not None:
                self._writer.close()
            bad = _bad_samples(skipped)
            summary = {"steps": self.step, "batch_size": self.cfg.batch_size, "samples_seen": self.step * self.cfg.batch_size,
                       "final_loss": losses[-1] if losses else None, "temperature": self.model.temperature.item(),
                       "skipped": bad, "samples_read": skipped.get("samples_read", 0), "train_seconds": self.elapsed}
            self.model.save_pretrained(model_dir, tokenizer=self.tokenizer, summary=summary)
            write_json_atomic(self.run_dir / "summary.json", summary)
            log.info("skipped samples: %s (of %d read)", bad or "none", skipped.get("samples_read", 0))
        barrier(self.info)
        return TrainResult(self.run_dir, model_dir, self.step, losses, dict(skipped), sps)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log rows written after the checkpoint we resume from (they will be written again)."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    from openalign.io import atomic_write_text

    atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def _gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    if not info.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def _sum_counters(c: Counter, info: DistInfo) -> Counter:
    total = Counter()
    for part in _gather_objects(dict(c), info):
        total.update(part)
    return total


def train(cfg: TrainConfig, resume: bool = False, info: DistInfo | None = None) -> TrainResult:
    trainer = Trainer(cfg, info)
    if resume:
        trainer.resume()
    return trainer.run()


__all__ = ["Trainer", "TrainResult", "train", "build_model"]
